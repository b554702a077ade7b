"""Nothing lost, nothing silently wrong (issue 11): concurrent sweeps, killed parents,
portable caches, resumes that honour what they were given, and one line for every
bad input. The concurrency and kill cases run real ``bench run`` processes on the
numpy fake backend (``tests/fake_backend.py``); everything else runs in-process."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import tiny_config

from backends import base
from benchmarks import cli, driver, runner
from common.config import ConfigError, parse_recipe
from common.data import DataError, drops_last_batch, load_dataset, load_image, load_meta_file
from common.locks import LOCK_FILE, claim_directory, holder_pid
from common.paths import CACHE_ENV, mount_point

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


@pytest.fixture
def fake(monkeypatch):
    """The numpy backend, registered here and in every process started from here."""
    monkeypatch.setenv(base.EXTRA_BACKENDS_ENV, "fake=fake_backend:FakeBackend")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setitem(base.REGISTRY, "fake", "fake_backend:FakeBackend")


def bench(*argv) -> int:
    return cli.main([str(a) for a in argv])


def one_line_error(capsys, code: int, *fragments: str) -> str:
    out, err = capsys.readouterr()
    lines = [l for l in err.splitlines() if l.strip()]
    assert code == 2, (out, err)
    assert len(lines) == 1 and lines[0].startswith("bench: error: "), err
    assert "Traceback" not in out + err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def fake_run(data, out, *extra) -> list:
    return ["run", "--backend", "fake", "--recipe", "head", "--data", data, "--weights", "none",
            "--epochs", "1", "--out", out, "--no-report", *extra]


def spawn_bench(*argv, **env) -> subprocess.Popen:
    """``python -m benchmarks.cli ARGV`` as a user starts it (its own process group)."""
    return subprocess.Popen([sys.executable, "-m", "benchmarks.cli", *map(str, argv)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, **env), cwd=str(REPO))


def wait_for(condition, what: str, seconds: float = 60.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def png(path: Path, colour=(10, 200, 30), size=(12, 12), mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)
    return path


def folder_dataset(root: Path, classes=("a", "b"), per_class: int = 4) -> Path:
    for ci, cls in enumerate(classes):
        for i in range(per_class):
            png(root / cls / f"{i}.png", colour=(40 * i, 60 * ci, 7))
    return root


# ------------------------------------------------------------ 1, 2: claims and kills

def test_a_claimed_out_refuses_a_second_bench_run_naming_the_holder_pid(fake, tiny_quads, tmp_path,
                                                                         capsys):
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from common.locks import claim_directory; "
                               "c = claim_directory(sys.argv[1]); print('claimed', flush=True); "
                               "time.sleep(120)", str(out)],
        stdout=subprocess.PIPE, text=True, cwd=str(REPO))
    try:
        assert holder.stdout.readline().strip() == "claimed"
        # the window of issue 11: the first run has claimed --out but not yet written sweep.json
        code = bench(*fake_run(tiny_quads, out, "--epochs", "2"))
        one_line_error(capsys, code, f"--out '{out}' is in use by another bench run "
                                     f"(PID {holder.pid})")
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing else written
    finally:
        holder.kill()
        holder.wait()
    # a killed holder leaves no stale claim: the kernel released it
    assert bench(*fake_run(tiny_quads, out)) == 0
    assert json.loads((out / "sweep.json").read_text())["runs"][0]["config"]["recipe"]["phases"][0][
        "epochs"] == 1


def test_killing_the_bench_run_parent_kills_its_worker_and_resume_adds_its_time(fake, tiny_quads,
                                                                                  tmp_path, capsys):
    out = tmp_path / "out"
    run_dir = out / "fake-two_phase-s0"
    # two phases of 2 epochs: phase 1's end writes the checkpoints and state.json
    parent = spawn_bench(*fake_run(tiny_quads, out, "--recipe", "two_phase", "--epochs", "2"),
                         FAKE_BACKEND_CRASH="sleep")
    try:
        # the worker holds its run directory's claim and records its PID there
        worker = wait_for(lambda: (holder_pid(run_dir) or 0) not in (0, parent.pid)
                          and holder_pid(run_dir), "the worker to claim its run directory")
        assert alive(worker)
        # a second bench run on the same sweep stops at once, naming the holder
        code = bench("run", "--resume", out)
        one_line_error(capsys, code, f"is in use by another bench run (PID {parent.pid})")
        code = bench(*fake_run(tiny_quads, out))
        one_line_error(capsys, code, f"--out '{out}' is in use by another bench run (PID {parent.pid})")
        wait_for(lambda: (run_dir / "state.json").is_file(), "the first phase's checkpoints")
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        wait_for(lambda: not alive(worker), "the worker to die with its parent", 10)
    finally:
        parent.kill()
        parent.wait()
    # nobody holds it any more (within the grace a resumed sweep gives a dying worker)
    claim_directory(run_dir, wait=runner.RUN_CLAIM_WAIT_SECONDS).release()
    assert bench("run", "--resume", out, "--no-report") == 0
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "ok" and len(result["curves"]) == 4
    first, second = result["times"]["attempt_seconds"]
    assert first >= 4.0  # the killed attempt slept 2 s in each of its two saved epochs
    assert result["times"]["total_seconds"] == pytest.approx(first + second)
    assert "earlier attempt(s)" in capsys.readouterr().out


def test_a_run_directory_held_by_a_live_worker_is_not_run_twice(fake, tiny_quads, tmp_path, capsys,
                                                                monkeypatch):
    out = tmp_path / "out"
    args = cli.get_args_parser().parse_args(list(map(str, fake_run(tiny_quads, out))))
    runs = runner.plan(cli.build_configs(args, out))
    runner.write_plan(out, runs, [])
    run_dir = Path(runs[0].config.run_dir)
    monkeypatch.setattr(runner, "RUN_CLAIM_WAIT_SECONDS", 0.2)
    with claim_directory(run_dir):  # as a worker left over from a killed sweep would
        assert bench("run", "--resume", out, "--no-report") == 1
        assert f"held by worker PID {os.getpid()}" in capsys.readouterr().out
        assert not (run_dir / "result.json").exists() and not (run_dir / "log.txt").exists()
        # a worker started by hand on that directory refuses too
        (run_dir / "config.json").write_text(runs[0].config.to_json())
        proc = subprocess.run([sys.executable, "-m", "benchmarks.run_worker",
                               str(run_dir / "config.json")], capture_output=True, text=True,
                              cwd=str(REPO))
        assert proc.returncode == 3 and f"held by worker PID {os.getpid()}" in proc.stdout
        assert not (run_dir / "result.json").exists()


# ------------------------------------------------------------ 3-6: data, out, seeds, names

def test_duplicate_meta_lines_and_identical_files_are_kept_once_and_never_leak(tmp_path, capsys):
    root = tmp_path / "ds"
    lines = []
    for ci, cls in enumerate(("a", "b", "c")):
        for i in range(6):
            png(root / cls / f"{i}.png", colour=(30 * i, 80 * ci, 5))
            lines += [f"{cls}|{cls}/{i}.png"] * 2  # every line twice
        (root / cls / "copy.png").write_bytes((root / cls / "0.png").read_bytes())  # same bytes
        lines.append(f"{cls}|{cls}/copy.png")
    (root / "meta.txt").write_text("\n".join(lines) + "\n")
    (root / "classes.json").write_text(json.dumps({"id2cls": {"0": "a", "1": "b", "2": "c"}}))
    config = tiny_config("fake", "head", root / "meta.txt", tmp_path / "run")
    config = dataclasses.replace(config, data=dataclasses.replace(
        config.data, class_map=str(root / "classes.json")))
    split = driver.prepare_split(config)
    contents = [hashlib.sha256(Path(s.path).read_bytes()).hexdigest()
                for name in ("train", "val", "test") for s in split.subset(name)]
    assert len(contents) == len(set(contents)) == 18  # every image once: nothing leaks
    reasons = [why for _, why in split.duplicates]
    assert sum("listed twice" in w for w in reasons) == 18
    assert sum("same bytes as" in w and w.endswith("0.png") for w in reasons) == 3
    assert bench("data", "inspect", root / "meta.txt", "--class-map", root / "classes.json") == 0
    assert "kept once, so that no image is in two subsets" in capsys.readouterr().out


def test_a_class_made_only_of_other_classes_copies_is_refused_naming_them(tmp_path, capsys):
    data = folder_dataset(tmp_path / "ds", per_class=3)
    for i in range(3):
        (data / "c" / f"{i}.png").parent.mkdir(exist_ok=True)
        (data / "c" / f"{i}.png").write_bytes((data / "a" / f"{i}.png").read_bytes())
    one_line_error(capsys, bench("data", "inspect", data), "class 'c' has no images of its own",
                   "an image can only have one label")


@pytest.mark.parametrize("where", ["", "runs", "a/runs"])
def test_out_equal_to_or_inside_data_is_refused(tmp_path, capsys, where):
    data = folder_dataset(tmp_path / "ds")
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    code = bench("run", "--backend", "pytorch", "--data", data, "--out", data / where)
    one_line_error(capsys, code, "is inside --data", "choose an --out outside the data")
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before


def test_duplicate_seeds_are_refused(capsys):
    with pytest.raises(SystemExit) as exit_:
        bench("run", "--seeds", "0,1,0")
    one_line_error(capsys, exit_.value.code, "--seeds '0,1,0' repeats 0")


def test_recipe_names_must_be_path_safe(tmp_path, capsys):
    for name in ("../../../x", "a/b", ".hidden", "", "x" * 65, "tab\tname"):
        with pytest.raises(ConfigError, match="a recipe name names run folders"):
            parse_recipe({"name": name, "phase": [{"train": "head"}]})
    assert parse_recipe({"name": "my-recipe_2.1", "phase": [{"train": "head"}]}).name == "my-recipe_2.1"
    recipe = tmp_path / "evil.toml"
    recipe.write_text('name = "../../../x"\n[[phase]]\ntrain = "head"\n')
    code = bench("run", "--backend", "pytorch", "--recipe", recipe, "--out", tmp_path / "out")
    one_line_error(capsys, code, "name = '../../../x' is invalid")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.toml"]


@pytest.mark.parametrize("name", ["/abs/elsewhere", "../../../../elsewhere", "a/b", ".hidden", "",
                                  "x" * 65, "tab\tname", "head (1)"])
def test_phase_names_must_be_path_safe_and_are_refused_in_the_parent(tmp_path, capsys, name):
    # issue 25: Keras wrote tensorboard/<phase name>/ wherever the phase name pointed
    with pytest.raises(ConfigError, match="a phase name names folders of the run"):
        parse_recipe({"name": "r", "phase": [{"name": name, "train": "head"}]})
    recipe = tmp_path / "evil.toml"
    recipe.write_text(f'name = "r"\n[[phase]]\nname = {json.dumps(name)}\ntrain = "head"\n')
    code = bench("run", "--backend", "keras", "--recipe", recipe, "--out", tmp_path / "out")
    one_line_error(capsys, code, "phase 1: name = ", "is invalid")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.toml"]


def test_every_shipped_recipe_has_path_safe_phase_names():
    from common.config import PHASE_NAME, available_recipes, load_recipe

    for name in available_recipes():
        assert all(PHASE_NAME.fullmatch(p.name) for p in load_recipe(name).phases), name


# ------------------------------------------------------------ 8: portable caches and paths

def test_source_weights_cache_stores_paths_relative_to_itself_and_survives_a_move(
        fake, tiny_quads, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache-a"))
    config = tiny_config("fake", "head", tiny_quads, tmp_path / "run", weights="source")
    ckpt, meta = driver.ensure_source_checkpoint(config, 75)
    record = json.loads((driver.source_cache_dir(config, 75) / "source.json").read_text())
    assert not meta["cached"] and not Path(record["checkpoint"]).is_absolute()
    (tmp_path / "cache-a").rename(tmp_path / "cache-b")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache-b"))
    moved, meta = driver.ensure_source_checkpoint(config, 75)
    assert meta["cached"] and moved.is_file() and (tmp_path / "cache-b") in moved.parents


def test_the_shared_source_pretraining_is_in_no_runs_wall_time_and_reported_once(
        fake, tiny_quads, tmp_path, monkeypatch):
    """The first run that needs the source model pretrains it for the whole sweep: its
    ``times.source_pretrain_seconds`` says how long, its wall time leaves it out, and the
    report shows it once, on its own line."""
    from benchmarks import report
    from benchmarks.report import write_report

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv("FAKE_BACKEND_SETUP_SLEEP", "0")
    first = driver.run(tiny_config("fake", "head", tiny_quads, tmp_path / "sweep" / "fake-head-s0",
                                   weights="source"))
    second = driver.run(tiny_config("fake", "head", tiny_quads, tmp_path / "sweep" / "fake-head-s1",
                                    weights="source", seed=1))
    assert first["status"] == second["status"] == "ok"
    shared = first["times"]["source_pretrain_seconds"]
    assert shared > 0 and second["times"]["source_pretrain_seconds"] == 0
    # the pretraining is inside the run's source-weights span, but not in its wall time
    assert first["times"]["pretrain_seconds"] >= shared
    assert first["times"]["total_seconds"] == pytest.approx(
        sum(first["times"]["attempt_seconds"]) - shared)
    assert second["times"]["total_seconds"] == pytest.approx(sum(second["times"]["attempt_seconds"]))
    write_report(tmp_path / "sweep")
    text = (tmp_path / "sweep" / "report.md").read_text()
    assert text.count("Source pretraining, once for the sweep: ") == 1
    assert f"{report.fmt_seconds(shared)} in run `" in text and "in no run's wall time" in text


def test_concurrent_runs_wait_for_the_one_that_pretrains_the_source(fake, tiny_quads, tmp_path,
                                                                     monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    config = tiny_config("fake", "head", tiny_quads, tmp_path / "run", weights="source")
    cache = driver.source_cache_dir(config, 75)
    got = {}
    with claim_directory(cache):  # another run is pretraining this entry
        waiter = threading.Thread(target=lambda: got.update(
            zip(("ckpt", "meta"), driver.ensure_source_checkpoint(config, 75))))
        waiter.start()
        time.sleep(0.5)
        assert waiter.is_alive() and not (cache / "source.json").exists()
    waiter.join(60)
    assert (cache / "source.json").is_file() and got["ckpt"].is_file()


def test_class_map_and_weights_path_are_resolved_so_resume_works_from_elsewhere(
        fake, tmp_path, monkeypatch):
    data = tmp_path / "ds"
    lines = []
    for ci, cls in enumerate(("a", "b")):
        for i in range(4):
            png(data / cls / f"{i}.png", colour=(50 * i, 90 * ci, 1))
            lines.append(f"{cls}|{cls}/{i}.png")
    (data / "meta.txt").write_text("\n".join(lines))
    (data / "classes.json").write_text(json.dumps({"id2cls": {"0": "a", "1": "b"},
                                                   "cls2id": {"a": 0, "b": 1}}))
    with open(data / "stem.pkl", "wb") as f:  # a fake-backend checkpoint given as --weights PATH
        pickle.dump({"params": {"stem.W": np.zeros((192, 16))}}, f)
    monkeypatch.chdir(data)
    out = tmp_path / "out"
    assert bench("run", "--backend", "fake", "--recipe", "head", "--data", "meta.txt",
                 "--class-map", "classes.json", "--weights", "stem.pkl", "--epochs", "1",
                 "--out", out, "--no-report") == 0
    config = json.loads((out / "sweep.json").read_text())["runs"][0]["config"]
    assert config["data"]["class_map"] == str(data / "classes.json")
    assert config["model"]["weights"] == str(data / "stem.pkl")
    (out / "fake-head-s0" / "result.json").write_bytes(b"\xff\xfe[")  # unreadable: run again
    monkeypatch.chdir(tmp_path)
    assert bench("run", "--resume", out, "--no-report") == 0
    result = json.loads((out / "fake-head-s0" / "result.json").read_text())
    assert result["status"] == "ok" and result["weights"]["path"] == str(data / "stem.pkl")


# ------------------------------------------------------------ 9, 10: resume

@pytest.mark.parametrize("flags", [["--epochs", "3"], ["--backend", "fake"], ["--seeds", "1"],
                                   ["--out", "elsewhere"], ["--recipe", "head"], ["--epo", "2"],
                                   ["--data", "synthetic", "--batch-size", "8"]])
def test_resume_refuses_options_it_would_otherwise_ignore(tmp_path, capsys, flags):
    code = bench("run", "--resume", tmp_path, *flags)
    named = [f for f in flags if f.startswith("--")]
    named = ["--epochs" if f == "--epo" else f for f in named]
    one_line_error(capsys, code, f"{', '.join(named)} cannot change it")


def test_a_resumed_run_reports_the_wall_time_of_every_attempt(fake, tiny_quads, tmp_path, monkeypatch,
                                                              caplog):
    config = tiny_config("fake", "head", tiny_quads, tmp_path / "run", epochs=3)
    monkeypatch.setenv("FAKE_BACKEND_CRASH", "raise")
    monkeypatch.setenv("FAKE_BACKEND_CRASH_EPOCH", "2")
    failed = driver.run(config)
    assert failed["status"] == "failed"
    (earlier,) = json.loads((tmp_path / "run" / "state.json").read_text())["attempt_seconds"]
    assert earlier == failed["times"]["total_seconds"]
    monkeypatch.delenv("FAKE_BACKEND_CRASH")
    with caplog.at_level("INFO", logger="benchmarks.driver"):
        result = driver.run(config)
    assert result["status"] == "ok" and len(result["curves"]) == 3
    first, this = result["times"]["attempt_seconds"]
    assert first == earlier and result["times"]["total_seconds"] == pytest.approx(earlier + this)
    assert "in 1 earlier attempt(s)" in caplog.text


# ------------------------------------------------------------ tracebacks where one line belongs

def test_disk_full_in_the_parent_is_a_failed_run_naming_the_disk_and_the_sweep_goes_on(
        fake, tiny_quads, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    write = runner.write_json_atomic

    def full_for_seed_0(path, payload):
        if Path(path).name == "config.json" and Path(path).parent.name.endswith("-s0"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return write(path, payload)

    monkeypatch.setattr(runner, "write_json_atomic", full_for_seed_0)
    assert bench(*fake_run(tiny_quads, out, "--seeds", "0,1")) == 1
    text = "".join(capsys.readouterr())
    assert "Traceback" not in text
    r0, r1 = (json.loads((out / f"fake-head-s{s}" / "result.json").read_text()) for s in (0, 1))
    assert r0["status"] == "failed" and r1["status"] == "ok"
    assert r0["error"].startswith(f"disk full: no space left on the file system mounted at "
                                  f"{mount_point(out)} (writing {out / 'fake-head-s0'}")
    assert f"bench run --resume {out}" in r0["error"]


def test_disk_full_in_a_worker_is_a_failed_result_naming_the_disk(fake, tiny_quads, tmp_path,
                                                                   monkeypatch):
    monkeypatch.setenv("FAKE_BACKEND_CRASH", "enospc")
    result = driver.run(tiny_config("fake", "head", tiny_quads, tmp_path / "run"))
    assert result["status"] == "failed"
    assert result["error"].startswith(f"disk full: no space left on the file system mounted at "
                                      f"{mount_point(tmp_path)}")


def test_a_file_name_that_is_not_utf8_is_trained_on(fake, tmp_path, capsys):
    data = folder_dataset(tmp_path / "ds", per_class=3)
    name = os.fsdecode(b"\xff\xfe caf\xe9.png")  # latin-1 bytes: not UTF-8
    png(data / "a" / name, colour=(1, 2, 3))
    assert bench("data", "inspect", data) == 0
    assert bench(*fake_run(data, tmp_path / "out")) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    split = json.loads((tmp_path / "out" / "fake-head-s0" / "split.json").read_text())
    assert any(name in path for subset in ("train", "val", "test") for path, _ in split[subset])


@pytest.mark.parametrize("content, fragment", [
    (b'["a", "b"]', "must be a JSON object with an 'id2cls' object"),
    (b'{"id2cls": ["a", "b"]}', "got id2cls = list"),
    (b'{"id2cls": {"0": "a", "x": "b"}}', "must map an integer id to a non-empty class name"),
    (b'{"id2cls": {"0": "a", "1": "b"}, "cls2id": {"a": 1, "b": 0}}', "cls2id contradicts id2cls"),
    (b'{"id2cls": {"0": "a", "1": "a"}}', "names a class twice"),
    (b'\xff\xfe{"id2cls"', "is not JSON"),
])
def test_bad_class_maps_are_one_line(tmp_path, capsys, content, fragment):
    (tmp_path / "meta.txt").write_text("a|x.png\n")
    (tmp_path / "cm.json").write_bytes(content)
    code = bench("data", "inspect", tmp_path / "meta.txt", "--class-map", tmp_path / "cm.json")
    one_line_error(capsys, code, fragment)


@pytest.mark.parametrize("content, fragment", [
    (b'name = "x"\nphase = [1, 2]\n', "phase 1 is 1, not a table"),
    (b'name = "x"\n[[phase]]\ntrain = "head"\ndescription = "\xe9t\xe9"\n', "not UTF-8 text"),
    (b'name = "x"\ndescription = 3\n[[phase]]\n', "description = 3 is invalid"),
    (b'name = "x"\n[[phase]]\nlearning_rate = nan\n', "expected a finite number"),
    (b'name = "x"\n[[phase]]\nepochs = 1000000000\n', "must be in [1, 10000]"),
])
def test_bad_recipe_files_are_one_line(tmp_path, capsys, content, fragment):
    (tmp_path / "r.toml").write_bytes(content)
    code = bench("run", "--backend", "pytorch", "--recipe", tmp_path / "r.toml", "--out", tmp_path / "o")
    one_line_error(capsys, code, fragment)


@pytest.mark.parametrize("content", [b"{", b"[]", b'{"runs": [{}]}', b'{"runs": []}', b"\xff\xfe",
                                     b'{"runs": [{"name": "x", "config": {"backend": "fake"}}]}'])
def test_a_malformed_sweep_json_on_resume_is_one_line(tmp_path, capsys, content):
    (tmp_path / "sweep.json").write_bytes(content)
    one_line_error(capsys, bench("run", "--resume", tmp_path), "sweep.json",
                   "start a new sweep with --out")


def test_a_tampered_plan_cannot_escape_its_run_directory(fake, tiny_quads, tmp_path, capsys):
    out = tmp_path / "out"
    args = cli.get_args_parser().parse_args(list(map(str, fake_run(tiny_quads, out))))
    runner.write_plan(out, runner.plan(cli.build_configs(args, out)), [])
    plan = json.loads((out / "sweep.json").read_text())
    plan["runs"][0]["name"] = "../../escaped"
    (out / "sweep.json").write_text(json.dumps(plan))
    one_line_error(capsys, bench("run", "--resume", out), "should be named 'fake-head-s0'")
    plan["runs"][0]["name"] = "fake-head-s0"
    plan["runs"][0]["config"]["recipe"]["name"] = "../../escaped"
    (out / "sweep.json").write_text(json.dumps(plan))
    one_line_error(capsys, bench("run", "--resume", out), "a recipe name names run folders")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("argv, fragment", [
    (["--model", "nosuch"], "unknown model 'nosuch'"),
    (["--image-size", "10"], "--image-size 10: inception_v3 needs at least 75 px"),
    (["--backend", "keras", "--model", "resnet18"], "resnet18 has no keras model in this suite"),
])
def test_throughput_input_errors_are_one_line_before_any_child(capsys, monkeypatch, argv, fragment):
    from benchmarks import throughput

    if "keras" in argv and base.availability("keras"):
        pytest.skip(base.availability("keras"))
    monkeypatch.setattr(throughput, "measure_in_child", lambda *a: pytest.fail("a child started"))
    one_line_error(capsys, bench("throughput", *argv), fragment)


@pytest.mark.parametrize("argv, fragment", [
    ([], "the following arguments are required: COMMAND"),
    (["nosuch"], "invalid choice: 'nosuch'"),
    (["run", "--epochs", "x"], "run: argument --epochs: 'x' is not an integer"),
    (["run", "--precision", "fp8"], "invalid choice: 'fp8'"),
    (["data", "inspect"], "the following arguments are required: path"),
    (["report"], "the following arguments are required: run_dir"),
])
def test_argparse_errors_are_one_line(capsys, argv, fragment):
    with pytest.raises(SystemExit) as exit_:
        bench(*argv)
    one_line_error(capsys, exit_.value.code, fragment, "--help")


def test_export_tfrecord_checks_everything_before_importing_tensorflow(tmp_path, capsys, monkeypatch):
    from backends.base import availability

    if availability("slim"):
        pytest.skip(availability("slim"))
    monkeypatch.setitem(sys.modules, "backends.slim.tfrecord", None)  # importing it would fail
    code = bench("data", "export-tfrecord", "--data", tmp_path / "missing", "--out", tmp_path / "o")
    one_line_error(capsys, code, "does not exist")
    data = folder_dataset(tmp_path / "ds", per_class=1)
    code = bench("data", "export-tfrecord", "--data", data, "--out", tmp_path / "o")
    one_line_error(capsys, code, "needs at least 3 per class")


# ------------------------------------------------------------ smaller

def test_a_class_of_unreadable_files_names_them(tmp_path, capsys):
    data = folder_dataset(tmp_path / "ds", per_class=4)
    (data / "c").mkdir()
    for i in range(3):
        (data / "c" / f"broken{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))
    code = bench("data", "inspect", data)
    line = one_line_error(capsys, code, "class 'c' has no readable images: 3 file(s) are unusable",
                          "broken0.png")
    assert "has no images" not in line


def test_inspect_refuses_what_run_refuses(tmp_path, capsys):
    data = folder_dataset(tmp_path / "ds", per_class=4)
    png(data / "thin" / "0.png")
    png(data / "thin" / "1.png", colour=(1, 1, 1))
    code = bench("data", "inspect", data)
    out, err = capsys.readouterr()
    assert code == 2 and "classes: 3" in out  # the report, then the reason
    assert err.strip() == "bench: error: class 'thin' has 2 image(s); a train/val/test split " \
                          "needs at least 3 per class"
    code = bench("run", "--backend", "pytorch", "--data", data, "--out", tmp_path / "out")
    assert one_line_error(capsys, code) == err.strip()


def test_contradictory_cls2id_is_refused(tmp_path):
    (tmp_path / "meta.txt").write_text("a|x.png\n")
    (tmp_path / "cm.json").write_text(json.dumps({"id2cls": {"0": "a", "1": "b"},
                                                  "cls2id": {"a": 0, "b": 0}}))
    with pytest.raises(DataError, match="cls2id contradicts id2cls"):
        load_meta_file(tmp_path / "meta.txt", tmp_path / "cm.json")


def test_float_tiffs_in_0_1_decode_to_their_brightness(tmp_path):
    ramp = np.tile(np.linspace(0, 1, 16, dtype=np.float32), (16, 1))
    Image.fromarray(ramp, "F").save(tmp_path / "ramp.tif")
    Image.fromarray(ramp * 255, "F").save(tmp_path / "ramp255.tif")
    for name in ("ramp.tif", "ramp255.tif"):
        rgb = load_image(tmp_path / name, 16)
        assert rgb[0, 0, 0] == 0 and rgb[0, -1, 0] == 255
        assert rgb.mean() == pytest.approx(127.5, abs=2)


def test_a_read_only_cache_does_not_fail_a_linear_probe(fake, tiny_quads, tmp_path, monkeypatch,
                                                        caplog):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))  # no features cached by other tests
    monkeypatch.setattr(driver.np, "savez", read_only)
    with caplog.at_level("WARNING", logger="benchmarks.driver"):
        result = driver.run(tiny_config("fake", "linear_probe", tiny_quads, tmp_path / "run"))
    assert result["status"] == "ok" and not result["linear_probe"]["cached"]
    assert "features not cached (Read-only file system" in caplog.text


def test_a_last_training_batch_of_one_is_dropped_in_every_backend():
    assert drops_last_batch(15, 7) and drops_last_batch(9, 4)
    assert not drops_last_batch(16, 8) and not drops_last_batch(14, 7) and not drops_last_batch(1, 4)


def test_pytorch_drops_a_last_batch_of_one_with_batchnorm_training(tiny_quads, tmp_path, caplog):
    from conftest import require_backend

    require_backend("pytorch")
    # 15 training images, batch 7: 7 + 7 + 1; resnet18 at 32 px has 1x1 features in layer4,
    # where BatchNorm in training cannot normalise one image
    config = tiny_config("pytorch", "scratch", tiny_quads, tmp_path / "run", model="resnet18",
                         image_size=32, batch_size=7)
    with caplog.at_level("INFO", logger="benchmarks.driver"):
        result = driver.run(config)
    assert result["status"] == "ok", result.get("error")
    assert result["curves"][0]["images_seen"] == 14 and result["data"]["drops_last_batch"]
    assert "drops its last batch, of 1 image (15 training images, batch 7)" in caplog.text


def test_keras_and_slim_pipelines_drop_the_same_last_batch_and_predict_in_split_order(
        tiny_quads, tmp_path):
    from conftest import require_backend

    require_backend("slim")
    require_backend("keras")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import tensorflow as tf

    from backends.keras.data import KerasData
    from backends.slim.data import build_pipelines
    from common.data import split_dataset
    from common.preprocess import get_normalisation

    norm = get_normalisation("inception")
    split = split_dataset(load_dataset(tiny_quads), 0, 0.2, 0.3)  # 15 training images
    # and a file name that is not UTF-8, which tf.string tensors cannot hold as text
    odd = folder_dataset(tmp_path / "odd", per_class=3)
    png(odd / "a" / os.fsdecode(b"caf\xe9.png"), colour=(9, 9, 9))
    odd_split = split_dataset(load_dataset(odd), 0)
    graph = tf.Graph()
    with graph.as_default():
        pipes = build_pipelines(split, 32, norm, 7)
        odd_pipes = build_pipelines(odd_split, 32, norm, 7)
        with tf.compat.v1.Session(graph=graph) as session:
            def batches(pipelines, name):
                session.run(pipelines.initializers[name])
                out = []
                while True:
                    try:
                        out.append(list(session.run(pipelines.labels)))
                    except tf.errors.OutOfRangeError:
                        return out

            assert [len(b) for b in batches(pipes, "fit")] == [7, 7]
            assert [len(b) for b in batches(pipes, "fit_augmented")] == [7, 7]
            assert sum(batches(pipes, "train"), []) == [s.label for s in split.train]  # split order
            for name in ("train", "val", "test"):  # every file decoded, the odd one included
                assert sum(batches(odd_pipes, name), []) == [s.label for s in odd_split.subset(name)]
    keras_data = KerasData(split, 32, norm, 7, seed=0)
    assert [int(y.shape[0]) for _, y in keras_data.train([1], augment=False)] == [7, 7]
    keras_odd = KerasData(odd_split, 32, norm, 7, seed=0)
    for name in ("train", "val", "test"):
        batches = list(keras_odd.eval(name))
        assert sum(int(y.shape[0]) for _, y in batches) == len(odd_split.subset(name))


def test_result_files_are_readable_by_everyone(fake, tiny_quads, tmp_path):
    assert bench(*fake_run(tiny_quads, tmp_path / "out")) == 0
    assert bench("report", tmp_path / "out") == 0
    for name in ("sweep.json", "fake-head-s0/result.json", "fake-head-s0/state.json",
                 "fake-head-s0/config.json", "report.md", "report.html", "summary.csv", "summary.json"):
        assert (tmp_path / "out" / name).stat().st_mode & 0o777 == 0o644 & ~_umask(), name
    left = [p.name for p in (tmp_path / "out").glob(".*") if p.name != LOCK_FILE]
    assert not left, f"temporary files left behind: {left}"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# ------------------------------------------------------------ issue 25: silently wrong

@pytest.mark.parametrize("key, value", [("top1", 1.7), ("top5", -0.1), ("top1", float("nan"))])
def test_an_accuracy_outside_0_1_is_refused_by_the_result_schema(fake, tiny_quads, tmp_path, capsys,
                                                                 monkeypatch, key, value):
    from benchmarks import report
    from common.results import load_results

    out = tmp_path / "out"
    assert bench(*fake_run(tiny_quads, out)) == 0
    result_file = out / "fake-head-s0" / "result.json"
    raw = json.loads(result_file.read_text())
    raw["test"][key] = value  # a hand edit
    result_file.write_text(json.dumps(raw))
    run = load_results(out)
    assert not run.results
    assert run.unreadable[0].reason.startswith(f"result.test.{key} is {value!r}, outside [0, 1]")
    monkeypatch.setattr(report, "make_figures", lambda df: {})
    capsys.readouterr()
    assert bench("report", out) == 2
    err = capsys.readouterr().err
    assert "170" not in err and "outside [0, 1]" in err


@pytest.mark.parametrize("content", [b"{", b"[]", b'{"done": [], "curves": 3}', b"\xff\xfe"])
def test_a_corrupt_state_json_fails_the_resumed_run_naming_it_instead_of_restarting(
        fake, tiny_quads, tmp_path, capsys, content):
    out = tmp_path / "out"
    run_dir = out / "fake-head-s0"
    assert bench(*fake_run(tiny_quads, out, "--epochs", "2")) == 0
    (run_dir / "result.json").unlink()  # as if killed after its last checkpoint
    (run_dir / "state.json").write_bytes(content)
    checkpoints = {p.name: p.read_bytes() for p in (run_dir / "checkpoints").iterdir()}
    capsys.readouterr()
    assert bench("run", "--resume", out, "--no-report") == 1
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "failed" and not result.get("curves")
    assert result["error"].startswith(f"{run_dir / 'state.json'} is corrupt (")
    assert f"delete {run_dir / 'state.json'} and {run_dir / 'checkpoints'}" in result["error"]
    assert (run_dir / "state.json").read_bytes() == content  # left for the user
    assert {p.name: p.read_bytes() for p in (run_dir / "checkpoints").iterdir()} == checkpoints
    assert result["error"] in capsys.readouterr().out


def test_a_diverged_run_stops_at_that_epoch_and_fails_saying_so_in_the_report(fake, tiny_quads,
                                                                              tmp_path, caplog,
                                                                              monkeypatch):
    from benchmarks import report

    monkeypatch.setenv("FAKE_BACKEND_CRASH", "nan")
    monkeypatch.setenv("FAKE_BACKEND_CRASH_EPOCH", "2")
    out = tmp_path / "out"
    monkeypatch.setattr(report, "make_figures", lambda df: {})
    code = bench(*[a for a in fake_run(tiny_quads, out, "--epochs", "4") if a != "--no-report"])
    assert code == 1  # as every failed run makes the sweep's exit code
    result = json.loads((out / "fake-head-s0" / "result.json").read_text())
    assert result["status"] == "failed"
    assert result["error"].startswith("diverged at epoch 2: training loss nan at learning rate ")
    state = json.loads((out / "fake-head-s0" / "state.json").read_text())
    assert len(state["curves"]) == 1 and state["best"]["global_epoch"] == 1  # stopped, nothing NaN kept
    assert "fake-head-s0: failed in " in caplog.text and "(diverged at epoch 2: " in caplog.text
    assert "diverged at epoch 2" in (out / "report.md").read_text()



def test_predict_refuses_special_files_in_one_line_without_reading_them(fake, tiny_quads, tmp_path,
                                                                        capsys):
    out = tmp_path / "out"
    assert bench(*fake_run(tiny_quads, out)) == 0
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    capsys.readouterr()
    # /dev/zero grew to 22.7 GB and a FIFO blocked forever (issue 25)
    for path, kind in (("/dev/zero", "a character device"), (fifo, "a named pipe (FIFO)")):
        code = bench("predict", out / "fake-head-s0", path)
        one_line_error(capsys, code, f"image {str(path)!r} cannot be read: not a regular file "
                                     f"({kind}); only regular files are read")


# ------------------------------------------------------------ issue 25: orphans

def _children(pid: int) -> list[tuple[int, str]]:
    """``(pid, command line)`` of the live children of ``pid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                cmd = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                found.append((int(stat.parent.name), cmd))
        except (OSError, IndexError, ValueError):
            continue
    return found


@pytest.mark.parametrize("command", ["throughput", "eval", "export"])
def test_kill_9_of_bench_kills_its_child_and_removes_its_temp_folder(fake, tiny_quads, tmp_path,
                                                                     command):
    out = tmp_path / "out"
    if command in ("eval", "export"):
        assert bench(*fake_run(tiny_quads, out)) == 0
        argv = [command, out / "fake-head-s0"] + (["--format", "npz"] if command == "export" else [])
        child_module = "benchmarks.saved_run_worker"
    else:
        argv = ["throughput", "--backend", "fake", "--batch-size", "2", "--steps", "1",
                "--out", tmp_path / "t.json"]
        child_module = "benchmarks.throughput"
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    parent = spawn_bench(*argv, FAKE_BACKEND_SETUP_SLEEP="60", TMPDIR=str(tmp))
    try:
        child = wait_for(lambda: next((p for p, cmd in _children(parent.pid) if child_module in cmd),
                                      None), f"bench {command} to start {child_module}")
        wait_for(lambda: any(tmp.iterdir()), "the temporary folder")
        time.sleep(1.0)  # the child is in the backend's setup
        assert alive(child)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        wait_for(lambda: not alive(child), f"{child_module} to die with bench {command}", 10)
        wait_for(lambda: not any(tmp.iterdir()), "the temporary folder to be removed", 10)
        if command == "export":  # the export check never ran: nothing written beside the run
            assert not (out / "fake-head-s0" / "export").exists()
    finally:
        parent.kill()
        parent.wait()


# a command that holds a temporary folder of its own (as bench parity's parent holds the weights
# and batch its workers read) until it is stopped
HOLDING_COMMAND = """
import sys, tempfile, time
from benchmarks import cli
def hold(args):
    with tempfile.TemporaryDirectory(prefix="bench-held-"):
        print("ready", flush=True)
        time.sleep(60)
    return 0
cli.COMMANDS["list"] = hold
sys.exit(cli.main(["list"]))
"""


def test_sigterm_to_bench_unwinds_its_command_and_removes_its_temporary_folders(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", HOLDING_COMMAND], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, TMPDIR=str(tmp)),
                            cwd=str(REPO))
    try:
        assert proc.stdout.readline().strip() == "ready"
        assert [p.name.startswith("bench-held-") for p in tmp.iterdir()] == [True]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM and err.strip() == "bench: stopped by SIGTERM"
    assert not any(tmp.iterdir())


@pytest.mark.parametrize("damage", ["replace", "truncate", "remove", "same bytes"])
def test_a_changed_source_weights_cache_file_is_noticed_and_the_entry_rebuilt(
        fake, tiny_quads, tmp_path, monkeypatch, caplog, damage):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    config = tiny_config("fake", "head", tiny_quads, tmp_path / "run", weights="source")
    ckpt, meta = driver.ensure_source_checkpoint(config, 75)
    made = ckpt.read_bytes()
    record = json.loads((driver.source_cache_dir(config, 75) / "source.json").read_text())
    assert record["files"] == {"fake/source.pkl": {
        "size": len(made), "mtime_ns": ckpt.stat().st_mtime_ns,
        "sha256": hashlib.sha256(made).hexdigest()}}
    if damage == "replace":  # other weights, as a user's copy over the file would be
        with open(ckpt, "wb") as f:
            pickle.dump({"params": {"stem.W": np.zeros(3)}}, f)
    elif damage == "truncate":
        ckpt.write_bytes(made[:len(made) // 2])
    elif damage == "remove":
        ckpt.unlink()
    else:
        time.sleep(0.01)
        ckpt.write_bytes(made)  # a new mtime, the same bytes: still the same weights
    caplog.clear()
    again, meta = driver.ensure_source_checkpoint(config, 75)
    if damage == "same bytes":
        assert meta["cached"] and "rebuilding" not in caplog.text
    else:
        assert not meta["cached"], "the changed entry was trusted"
        assert "changed since it was made" in caplog.text and "rebuilding it" in caplog.text
        assert {"replace": "fake/source.pkl: changed (", "truncate": "fake/source.pkl: changed (",
                "remove": "fake/source.pkl: missing"}[damage] in caplog.text
        assert again.read_bytes() == made  # the same pretraining (seed 0) made again
    record = json.loads((driver.source_cache_dir(config, 75) / "source.json").read_text())
    assert record["files"]["fake/source.pkl"]["mtime_ns"] == again.stat().st_mtime_ns
    assert driver.ensure_source_checkpoint(config, 75)[1]["cached"]


# ------------------------------------------------------------ issue 25: writes outside --out

# every system call that creates, changes or removes a path (x86-64 and aarch64 names)
TRACED_CALLS = ("open,openat,creat,mkdir,mkdirat,rename,renameat,renameat2,unlink,unlinkat,rmdir,"
                "link,linkat,symlink,symlinkat,truncate,mknod,mknodat,chmod,fchmodat,chdir,fchdir")
WRITE_FLAGS = ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND", "O_TMPFILE")
# not files: the null device, multiprocessing's POSIX semaphores (kernel objects in /dev/shm),
# the kernel's process interface (TensorFlow names its threads in /proc/PID/task/TID/comm)
NOT_FILES = ("/dev/null", "/dev/shm/sem.", "/proc/")


def strace_usable() -> bool:
    import shutil

    return bool(shutil.which("strace")) and subprocess.run(
        ["strace", "-f", "-qq", "-o", "/dev/null", "true"], capture_output=True).returncode == 0


def paths_written(argv: list, cwd: Path, env: dict, log_dir: Path) -> list[str]:
    """Every path ``python -m benchmarks.cli ARGV`` and all its descendants created, wrote,
    renamed, removed or chmod-ed, resolved, as the kernel saw it (``strace -f`` of the
    system calls, so a framework's own C++ writers count too). Fails on a chdir, after
    which a relative path could not be resolved."""
    import re

    log_dir.mkdir()
    proc = subprocess.run(["strace", "-f", "-ff", "-qq", "-y", "-s", "8192", "-e",
                           f"trace={TRACED_CALLS}", "-o", str(log_dir / "trace"), sys.executable,
                           "-m", "benchmarks.cli", *map(str, argv)],
                          cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    call = re.compile(r"^(\w+)\((.*)\)\s+=\s+(\S+)")
    arg = re.compile(r'(?:(?:AT_FDCWD|\d+)<([^>]*)>,\s*)?"((?:[^"\\]|\\.)*)"')
    written = []
    for trace in log_dir.iterdir():
        for line in trace.read_text(errors="replace").splitlines():
            m = call.match(line)
            if not m or m.group(3).startswith("-"):  # only calls that succeeded
                continue
            name, args = m.group(1), m.group(2)
            assert name not in ("chdir", "fchdir"), f"a process changed directory: {line}"
            if name in ("open", "openat") and not any(f in args for f in WRITE_FLAGS):
                continue
            for base, path in arg.findall(args):
                written.append(os.path.realpath(os.path.join(base or str(cwd), path)))
    return written


def outside(paths: list[str], *roots: Path) -> list[str]:
    roots = [os.path.realpath(r) for r in roots]
    return sorted({p for p in paths if not p.startswith(NOT_FILES)
                   and not any(p == r or p.startswith(r + os.sep) for r in roots)})


@pytest.mark.skipif(not strace_usable(), reason="needs strace (ptrace allowed)")
def test_every_path_bench_run_writes_lies_under_its_out_folder(fake, tiny_quads, tmp_path):
    """bench run, its workers and the report: nothing outside --out, temporary files included
    (each worker's TMPDIR is RUN/tmp). Then bench eval and export write their files in the
    run folder and only their removed temporary folder in TMPDIR. The same audit on the
    real backends (TensorBoard, checkpoints, framework temp files):
    test_every_path_a_framework_run_writes_lies_under_its_out_folder."""
    cwd, tmp, out = tmp_path / "cwd", tmp_path / "tmp", tmp_path / "out"
    cwd.mkdir()
    tmp.mkdir()
    env = dict(os.environ, TMPDIR=str(tmp), HOME=str(tmp_path / "home"), PYTHONDONTWRITEBYTECODE="1")
    argv = [a for a in fake_run(tiny_quads, out, "--epochs", "2") if a != "--no-report"]
    cache = Path(os.environ[CACHE_ENV])  # the suite's caches (docs/design.md), matplotlib's too
    assert outside(paths_written(argv, cwd, env, tmp_path / "t1"), out, cache) == []
    assert sorted(p.name for p in out.iterdir()) == [".lock", "fake-head-s0", "report.html",
                                                     "report.md", "summary.csv", "summary.json",
                                                     "sweep.json"]
    run_dir = out / "fake-head-s0"
    assert not (run_dir / "tmp").exists()
    for i, argv in enumerate((["eval", run_dir], ["export", run_dir, "--format", "npz"])):
        assert outside(paths_written(argv, cwd, env, tmp_path / f"t{i + 2}"), run_dir, tmp,
                       cache) == []
    assert (run_dir / "eval").is_dir() and (run_dir / "export" / "npz").is_dir()
    assert list(tmp.iterdir()) == []


@pytest.mark.slow
@pytest.mark.skipif(not strace_usable(), reason="needs strace (ptrace allowed)")
@pytest.mark.parametrize("backend", ["pytorch", "keras", "slim"])
def test_every_path_a_framework_run_writes_lies_under_its_out_folder(tiny_quads, tmp_path, backend):
    from conftest import require_backend

    require_backend(backend)
    cwd, tmp, out = tmp_path / "cwd", tmp_path / "tmp", tmp_path / "out"
    cwd.mkdir()
    tmp.mkdir()
    env = dict(os.environ, TMPDIR=str(tmp), HOME=str(tmp_path / "home"), PYTHONDONTWRITEBYTECODE="1")
    # `import keras` writes ~/.keras/keras.json where Keras was never imported: Keras' own
    # configuration, which every machine that has run Keras once already holds
    (tmp_path / "home" / ".keras").mkdir(parents=True)
    (tmp_path / "home" / ".keras" / "keras.json").write_text(json.dumps(
        {"floatx": "float32", "epsilon": 1e-07, "backend": "tensorflow",
         "image_data_format": "channels_last"}))
    argv = ["run", "--backend", backend, "--recipe", "two_phase", "--data", tiny_quads,
            "--weights", "none", "--epochs", "1", "--image-size", "75", "--batch-size", "4",
            "--out", out, "--no-report"]
    cache = Path(os.environ[CACHE_ENV])  # the suite's caches (docs/design.md)
    elsewhere = outside(paths_written(argv, cwd, env, tmp_path / "trace"), out, cache)
    assert elsewhere == [], "\n".join(elsewhere)
    assert (out / f"{backend}-two_phase-s0" / "result.json").is_file()
