"""Bad input: each case gives exit 2 and one readable line, or a skipped/warned
result where the case is recoverable, and never harms earlier results."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from benchmarks import cli, commands
from common.data import DataError, load_dataset, load_image
from common.verify import inspect_image, verified


def _run_cli(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _assert_one_line_error(code, err, fragment):
    assert code == 2
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("bench: error: ") and fragment in lines[0], lines[0]
    assert "Traceback" not in err


def _png(path, size=(12, 12), mode="RGB", colour=(10, 200, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour if mode in ("RGB", "RGBA") else 128).save(path)


@pytest.fixture
def messy(tmp_path):
    """Two good classes plus every kind of troublesome file."""
    root = tmp_path / "my photos ü"  # spaces and non-ASCII in the path
    for ci, cls in enumerate(("cats", "dögs")):
        for i in range(4):  # distinct images: copies of one image are kept once
            _png(root / cls / f"img {i}.png", colour=(i * 40, 10 + 100 * ci, 10))
    d = root / "cats"
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(buf, "JPEG")
    (d / "corrupt.jpg").write_bytes(buf.getvalue()[:200] + b"\x00" * 50)      # corrupt JPEG
    png = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(png, "PNG")
    (d / "truncated.png").write_bytes(png.getvalue()[: len(png.getvalue()) // 2])  # truncated PNG
    (d / "notes.jpg").write_text("this is text")                                # text named .jpg
    _png(d / "tiny.png", size=(1, 1))                                           # 1x1
    Image.new("CMYK", (20, 20), (0, 50, 100, 0)).save(d / "cmyk.jpg")            # CMYK JPEG
    Image.fromarray(np.full((20, 20), 40000, np.uint16)).save(d / "deep.png")    # 16-bit PNG
    _png(d / ".hidden.png")                                                     # ignored
    return root


def test_unreadable_files_are_listed_and_skipped(messy):
    ds = load_dataset(messy)
    assert not any(".hidden" in s.path for s in ds.samples)
    good, skipped = verified(ds)
    reasons = {p.rsplit("/", 1)[1]: why for p, why in skipped}
    assert set(reasons) == {"corrupt.jpg", "truncated.png", "notes.jpg"}
    assert reasons["notes.jpg"] == "not an image file"
    assert len(good.samples) == len(ds.samples) - 3


def test_recoverable_images_are_converted(messy):
    for name, mode in (("cmyk.jpg", "CMYK"), ("deep.png", "I;16"), ("tiny.png", "RGB")):
        info = inspect_image(str(messy / "cats" / name))
        assert info.problem is None and info.mode == mode
        arr = load_image(messy / "cats" / name, 75)
        assert arr.shape == (75, 75, 3) and arr.dtype == np.uint8
    assert load_image(messy / "cats" / "deep.png", 4).mean() == pytest.approx(40000 / 65535 * 255, abs=1)


def test_strict_fails_before_training(messy, tmp_path, capsys):
    code, _, err = _run_cli(capsys, "run", "--backend", "pytorch", "--data", str(messy), "--strict",
                            "--out", str(tmp_path / "out"))
    _assert_one_line_error(code, err, "3 unusable image(s) with --strict")
    assert not (tmp_path / "out").exists()


def test_inspect_reports_problems(messy, capsys):
    code, out, _ = _run_cli(capsys, "data", "inspect", str(messy))
    assert code == 0
    assert "classes: 2" in out and "unreadable, skipped at training time" in out
    assert "below inception_v3's minimum 75 px" in out and "I;16 1" in out and "CMYK 1" in out


@pytest.mark.parametrize("setup, argv, fragment", [
    (None, ["--data", "{tmp}/missing"], "does not exist"),
    ("file", ["--data", "{tmp}/file.jpg"], "is a file, not a folder"),
    ("empty", ["--data", "{tmp}/empty"], "has no class subfolders"),
    ("empty_class", ["--data", "{tmp}/ds"], "class 'b' in"),
    ("one_image", ["--data", "{tmp}/ds"], "needs at least 3 per class"),
    (None, ["--backend", "tensorflow"], "unknown backend 'tensorflow'"),
    (None, ["--model", "vgg99"], "unknown model 'vgg99'"),
    (None, ["--recipe", "nope"], "unknown recipe 'nope'"),
    ("bad_recipe", ["--recipe", "{tmp}/bad.toml"], "unknown key 'learning_rat'"),
    (None, ["--image-size", "60"], "inception_v3 needs at least 75 px"),
    ("file", ["--out", "{tmp}/file.jpg/out"], "is not writable"),
    (None, ["--weights", "{tmp}/nothing.pt"], "neither source, none, imagenet nor an existing path"),
    (None, ["--reuse-head-rows"], "two_phase, scratch has head_hidden_units > 0"),
])
def test_bad_run_input_exits_2_with_one_line(tmp_path, capsys, setup, argv, fragment):
    if setup == "file":
        (tmp_path / "file.jpg").write_bytes(b"\xff\xd8")
    elif setup == "empty":
        (tmp_path / "empty").mkdir()
    elif setup in ("empty_class", "one_image"):
        for i in range(4):
            _png(tmp_path / "ds" / "a" / f"{i}.png", colour=(50 * i, 0, 0))
        (tmp_path / "ds" / "b").mkdir()
        if setup == "one_image":
            _png(tmp_path / "ds" / "b" / "0.png")
    elif setup == "bad_recipe":
        (tmp_path / "bad.toml").write_text('name = "bad"\n[[phase]]\nlearning_rat = 0.1\n')
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    code, _, err = _run_cli(capsys, "run", "--backend", "pytorch", *argv) if "--backend" not in argv \
        else _run_cli(capsys, "run", *argv)
    _assert_one_line_error(code, err, fragment)


def test_bad_input_never_touches_earlier_results(tmp_path, capsys):
    out = tmp_path / "out"
    (out / "pytorch-head-s0").mkdir(parents=True)
    (out / "sweep.json").write_text(json.dumps({"runs": []}))
    result = out / "pytorch-head-s0" / "result.json"
    result.write_text('{"status": "ok"}')
    before = result.read_bytes()
    for argv in (["--out", str(out)], ["--out", str(out), "--recipe", "nope"],
                 ["--out", str(out), "--data", str(tmp_path / "missing")]):
        code, _, err = _run_cli(capsys, "run", "--backend", "pytorch", *argv)
        assert code == 2 and err.count("\n") == 1
    assert result.read_bytes() == before and sorted(p.name for p in out.iterdir()) == \
        ["pytorch-head-s0", "sweep.json"]


def test_resume_of_a_non_sweep_dir_and_report_of_empty_dir(tmp_path, capsys):
    code, _, err = _run_cli(capsys, "run", "--resume", str(tmp_path))
    _assert_one_line_error(code, err, "has no sweep.json")
    code, _, err = _run_cli(capsys, "report", str(tmp_path))
    _assert_one_line_error(code, err, "has no */result.json")


def test_missing_backend_is_a_skipped_result(tmp_path, capsys, monkeypatch, tiny_quads):
    from benchmarks import runner

    monkeypatch.setattr(runner, "availability", lambda name: "keras not installed; pip install "
                                                            "'transfer-bench[keras]'")
    code, out, _ = _run_cli(capsys, "run", "--backend", "keras", "--data", str(tiny_quads),
                            "--recipe", "head", "--weights", "none", "--out", str(tmp_path / "out"),
                            "--no-report")
    assert code == 0
    result = json.loads((tmp_path / "out" / "keras-head-s0" / "result.json").read_text())
    assert result["status"] == "skipped" and "pip install 'transfer-bench[keras]'" in result["error"]
    assert "skipped (keras not installed" in out


def test_list_shows_every_backend_with_availability(capsys):
    code, out, _ = _run_cli(capsys, "list")
    assert code == 0
    for name in ("pytorch", "keras", "slim"):
        assert any(line.strip().startswith(name) and ("available" in line) for line in out.splitlines())
    assert "two_phase" in out and "inception_v3" in out


@pytest.mark.parametrize("subsets", [("val", "test"), ("val",), ("test",)])
def test_a_presplit_class_missing_from_train_is_one_line_before_any_run(tmp_path, capsys, subsets):
    # issue 25: the class was tested without ever being trained, and the run ended ok
    root = tmp_path / "split"
    for subset in ("train", *subsets):
        for ci, cls in enumerate(("a", "b", "c")):
            if subset == "train" and cls == "c":
                continue
            for i in range(3):
                _png(root / subset / cls / f"{i}.png", colour=(40 * i, 60 * ci, 50 * len(subset)))
    where = " and ".join(f"{n}/" for n in ("val", "test") if n in subsets)
    for argv in (["run", "--backend", "pytorch", "--data", str(root), "--out", str(tmp_path / "o")],
                 ["data", "inspect", str(root)]):
        code, out, err = _run_cli(capsys, *argv)
        _assert_one_line_error(code, err, f"class 'c' has images in {where} but none in train/")
    assert not (tmp_path / "o").exists()


# ------------------------------------------------- issue 25: special and huge files

def _inspect_in_thread(path, seconds=20.0):
    """``inspect_image(path)``, failing (not hanging) if it blocks; a blocked FIFO open is
    released by opening the FIFO's other end."""
    import os
    import threading

    box = {}
    t = threading.Thread(target=lambda: box.update(info=inspect_image(str(path))), daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        t.join(5)
        raise AssertionError(f"inspect_image({path}) blocked")
    return box["info"]


def test_special_files_are_refused_without_reading_them(tmp_path):
    import os

    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    assert _inspect_in_thread(fifo).problem == \
        "not a regular file (a named pipe (FIFO)); only regular files are read"
    assert _inspect_in_thread("/dev/zero").problem == \
        "not a regular file (a character device); only regular files are read"
    with pytest.raises(DataError, match="named pipe"):
        load_image(fifo, 8)


def test_a_huge_sparse_png_is_refused_by_its_size_before_it_is_read(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from common.data import MAX_IMAGE_BYTES

    root = tmp_path / "data"
    for ci, cls in enumerate(("a", "b")):
        for i in range(4):
            _png(root / cls / f"{i}.png", colour=(40 * i, 100 * ci, 9))
    with open(root / "a" / "huge.png", "wb") as f:  # 2 GB of holes: no disk, and no memory
        f.truncate(2 * 2 ** 30)
    info = inspect_image(str(root / "a" / "huge.png"))
    assert info.problem == f"the file is 2,048.0 MiB, over the {MAX_IMAGE_BYTES / 2 ** 20:,.1f} " \
                           f"MiB limit for one image; not read"
    repo = Path(__file__).resolve().parent.parent
    limit = 1536 * 2 ** 20  # address space: reading the 2 GB file (2.1 GB before) cannot fit

    def cap():
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    proc = subprocess.run([sys.executable, "-m", "benchmarks.cli", "data", "inspect", str(root)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=repo,
                          preexec_fn=cap, env=dict(os.environ, OPENBLAS_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stdout
    assert "huge.png" in proc.stdout and "over the 256.0 MiB limit" in proc.stdout


def test_every_image_reader_goes_through_the_one_bounded_reader():
    """``common.data.read_image_file`` is the only way an image file is opened: no
    ``Image.open(path)`` and no ``open(...).read()`` of an image elsewhere."""
    import re
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    offenders = []
    for py in [*repo.glob("common/*.py"), *repo.glob("backends/**/*.py"), *repo.glob("benchmarks/*.py")]:
        for n, line in enumerate(py.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"Image\.open\((?!io\.BytesIO)", line) and "read_image_file" not in line:
                offenders.append(f"{py.relative_to(repo)}:{n}: {line.strip()}")
    assert not offenders, offenders


# ------------------------------------------------- issue 25: data loss, late checks, tracebacks

import dataclasses  # noqa: E402
import errno  # noqa: E402
import os  # noqa: E402
from pathlib import Path  # noqa: E402

from conftest import tiny_config  # noqa: E402
from read_only import immutable, read_only_view, small_disk  # noqa: E402

TESTS = Path(__file__).resolve().parent


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """The numpy backend in this process and its children (runs in real worker processes,
    which write the config.json that bench eval and export read)."""
    from backends import base
    from common.paths import CACHE_ENV

    monkeypatch.setenv(base.EXTRA_BACKENDS_ENV, "fake=fake_backend:FakeBackend")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setitem(base.REGISTRY, "fake", "fake_backend:FakeBackend")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))


def _fake_sweep(capsys, data, out, *extra) -> Path:
    code, out_text, err = _run_cli(capsys, "run", "--backend", "fake", "--recipe", "head", "--data",
                                   str(data), "--weights", "none", "--epochs", "1", "--batch-size",
                                   "2", "--out", str(out), *extra)
    assert code == 0, out_text + err
    return Path(out)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_non_empty_out_that_holds_no_sweep_is_refused_and_its_files_kept(fake, tiny_quads, tmp_path,
                                                                           capsys):
    out = tmp_path / "my folder"
    out.mkdir()
    (out / "report.md").write_text("my notes")
    (out / "summary.csv").write_text("my,table\n")
    code, _, err = _run_cli(capsys, "run", "--backend", "fake", "--recipe", "head", "--data",
                            str(tiny_quads), "--weights", "none", "--out", str(out))
    _assert_one_line_error(code, err, f"--out '{out}' already holds files (report.md, summary.csv)")
    assert _files(out) == {"report.md": b"my notes", "summary.csv": b"my,table\n"}
    empty = tmp_path / "empty"
    empty.mkdir()  # an empty folder is a new sweep's
    _fake_sweep(capsys, tiny_quads, empty)
    assert (empty / "report.md").is_file() and (empty / "fake-head-s0" / "result.json").is_file()
    code, out_text, _ = _run_cli(capsys, "report", str(empty))  # bench report rebuilds its own
    assert code == 0 and f"report: {empty / 'report.md'}" in out_text


@pytest.mark.parametrize("argv", [
    ["run", "--out", ""], ["throughput", "--out", ""], ["recipe", "from-slim-flags",
                                                        "--learning_rate=0.1", "--out", ""],
    ["export", "RUN", "--format", "npz", "--out", ""], ["parity", "--out", ""],
    ["weights", "convert", "--from", "pytorch", "--to", "keras", "--input", "x.pt", "--output", ""],
    ["data", "export-tfrecord", "--out", ""],
])
def test_an_empty_out_is_refused_instead_of_writing_into_the_current_folder(argv, capsys, tmp_path,
                                                                            monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    _, err = capsys.readouterr()
    _assert_one_line_error(exit_.value.code, err, "'' is empty; it would write into the current folder")
    assert list(tmp_path.iterdir()) == []


def _eval_folder(root: Path, source: Path) -> Path:
    for cls in ("square", "kite"):
        (root / cls).mkdir(parents=True)
        for p in sorted((source / cls).glob("*.png"))[:2]:
            (root / cls / p.name).write_bytes(p.read_bytes())
    return root


def test_eval_of_two_data_folders_of_one_name_writes_two_folders(fake, tiny_quads, tmp_path, capsys):
    from benchmarks.saved_run import eval_folder_name

    run = _fake_sweep(capsys, tiny_quads, tmp_path / "sweep", "--no-report") / "fake-head-s0"
    a = _eval_folder(tmp_path / "a" / "good", tiny_quads)
    b = _eval_folder(tmp_path / "b" / "good", tiny_quads)
    (b / "kite" / next((b / "kite").iterdir()).name).unlink()  # b differs from a
    for data in (a, b):
        code, out, err = _run_cli(capsys, "eval", str(run), "--data", str(data))
        assert code == 0, out + err
    folders = sorted(p.name for p in (run / "eval").iterdir())
    assert folders == sorted(f"best-{eval_folder_name(str(d))}" for d in (a, b)) and folders[0] != folders[1]
    assert all(f.startswith("best-good-") for f in folders)
    rows = {f: (run / "eval" / f / "predictions.csv").read_text().count("\n") - 1 for f in folders}
    assert sorted(rows.values()) == [3, 4]  # each folder holds its own data's predictions
    assert eval_folder_name(str(a)) == eval_folder_name(str(tmp_path / "a" / "." / "good"))


def test_throughput_out_that_cannot_be_written_is_one_line_before_measuring(tmp_path, capsys,
                                                                            monkeypatch):
    from benchmarks import throughput

    monkeypatch.setattr(throughput, "measure_in_child", lambda *a, **k: pytest.fail("measured"))
    with read_only_view(None, tmp_path / "ro") as ro:
        code, _, err = _run_cli(capsys, "throughput", "--out", str(ro / "t.json"))
        _assert_one_line_error(code, err, f"--out '{ro / 't.json'}' cannot be written (Read-only "
                                          f"file system)")
    (tmp_path / "dir.json").mkdir()
    code, _, err = _run_cli(capsys, "throughput", "--out", str(tmp_path / "dir.json"))
    _assert_one_line_error(code, err, "is a folder, not a file")


def test_a_throughput_result_that_cannot_be_written_after_measuring_is_printed(tmp_path, capsys,
                                                                               monkeypatch):
    from benchmarks import throughput
    from common import results

    row = {"status": "failed", "backend": "pytorch", "error": "measured, then the disk went away"}
    monkeypatch.setattr(throughput, "measure_in_child", lambda *a, **k: dict(row))
    monkeypatch.setattr(commands.throughput, "availability", lambda name: None)

    def read_only(path, payload):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(results, "write_json_atomic", read_only)
    code, out, err = _run_cli(capsys, "throughput", "--out", str(tmp_path / "t.json"))
    _assert_one_line_error(code, err, "could not be written after measuring (Read-only file "
                                      "system); the result is printed above as JSON")
    printed = json.loads(out[out.index("{"):])
    assert printed["results"] == [row]


def test_recipe_from_slim_flags_out_that_is_a_folder_is_one_line(tmp_path, capsys):
    code, _, err = _run_cli(capsys, "recipe", "from-slim-flags", "--learning_rate=0.01", "--out",
                            str(tmp_path))
    _assert_one_line_error(code, err, f"--out '{tmp_path}' is a folder, not a file")
    assert list(tmp_path.iterdir()) == []


def test_recipe_from_slim_flags_takes_one_flag_as_its_argument(tmp_path, capsys):
    from common.config import load_recipe

    code, out, _ = _run_cli(capsys, "recipe", "from-slim-flags", "--learning_rate=0.01")
    assert code == 0 and "learning_rate = 0.01" in out
    code, _, _ = _run_cli(capsys, "recipe", "from-slim-flags", "--learning_rate=0.02",
                          "--optimizer=sgd", "--out", str(tmp_path / "r.toml"), "--name", "mine")
    recipe = load_recipe(str(tmp_path / "r.toml"))
    assert code == 0 and recipe.name == "mine"
    assert (recipe.phases[0].learning_rate, recipe.phases[0].optimizer) == (0.02, "sgd")


def test_weights_convert_output_on_a_read_only_mount_is_one_line_before_converting(
        tmp_path, capsys, monkeypatch):
    from benchmarks import conversion

    monkeypatch.setattr(conversion, "convert_checkpoint", lambda *a: pytest.fail("converted"))
    (tmp_path / "in.pt").write_bytes(b"PK\x03\x04")
    with read_only_view(None, tmp_path / "ro") as ro:
        code, _, err = _run_cli(capsys, "weights", "convert", "--from", "pytorch", "--to", "keras",
                                "--input", str(tmp_path / "in.pt"), "--output", str(ro / "out"))
    _assert_one_line_error(code, err, f"--output '{ro / 'out'}' cannot be written (Read-only file "
                                      f"system)")


@pytest.fixture
def sweep(fake, tiny_quads, tmp_path, capsys):
    """A finished sweep of one fake run, with its report."""
    return _fake_sweep(capsys, tiny_quads, tmp_path / "sweep")


def test_report_into_a_folder_it_cannot_write_is_one_line_and_keeps_every_file(sweep, tmp_path,
                                                                               capsys):
    before = _files(sweep)
    with read_only_view(sweep, tmp_path / "ro") as ro:
        code, _, err = _run_cli(capsys, "report", str(ro))
        _assert_one_line_error(code, err, f"report not written: {ro} is not writable (Read-only "
                                          f"file system)")
    with immutable(sweep):
        code, _, err = _run_cli(capsys, "report", str(sweep))
        _assert_one_line_error(code, err, f"report not written: {sweep} is not writable "
                                          f"(Operation not permitted)")
    assert _files(sweep) == before
    (sweep / "report.md").unlink()
    (sweep / "report.md").mkdir()
    code, _, err = _run_cli(capsys, "report", str(sweep))
    _assert_one_line_error(code, err, f"{sweep / 'report.md'} is a folder, not a file; move it away")


def test_eval_and_export_on_a_read_only_mount_are_one_line_before_the_framework(sweep, tmp_path,
                                                                                capsys, monkeypatch):
    from benchmarks import saved_run

    monkeypatch.setattr(saved_run, "run_in_backend", lambda *a: pytest.fail("a framework started"))
    with read_only_view(sweep, tmp_path / "ro") as ro:
        code, _, err = _run_cli(capsys, "eval", str(ro / "fake-head-s0"))
        _assert_one_line_error(code, err, f"{ro / 'fake-head-s0' / 'eval' / 'best-test'} cannot be "
                                          f"written (Read-only file system)")
        code, _, err = _run_cli(capsys, "export", str(ro / "fake-head-s0"), "--format", "npz")
        _assert_one_line_error(code, err, f"{ro / 'fake-head-s0' / 'export' / 'npz'} cannot be "
                                          f"written (Read-only file system); give another folder "
                                          f"with --out")
    assert not (sweep / "fake-head-s0" / "eval").exists()


@pytest.mark.parametrize("argv, fragment", [
    (["--seeds", "-1"], "a seed must be an integer in [0, 4294967295]"),
    (["--seeds", "0,99999999999999999999"], "a seed must be an integer in [0, 4294967295]"),
    (["--image-size", "10000"], "image_size = 10000 is invalid; at most 1024 px"),
])
def test_out_of_range_run_values_are_one_line_in_the_parent(fake, tiny_quads, tmp_path, capsys,
                                                           argv, fragment, monkeypatch):
    from benchmarks import runner

    monkeypatch.setattr(runner, "run_child", lambda run: pytest.fail("a run started"))
    try:
        code, _, err = _run_cli(capsys, "run", "--backend", "fake", "--data", str(tiny_quads),
                                "--out", str(tmp_path / "out"), *argv)
    except SystemExit as exit_:  # argparse
        code, err = exit_.code, capsys.readouterr()[1]
    _assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "out").exists()


def test_the_run_process_checks_seeds_with_the_parents_function():
    from common.config import ConfigError, TrainConfig, validate_run

    config = dataclasses.replace(tiny_config("fake", "head", Path("x"), Path("y")),
                                 train=TrainConfig(seed=2 ** 32))
    with pytest.raises(ConfigError, match=r"seed = 4294967296 is invalid; a seed must be an integer"):
        validate_run(config)
    validate_run(dataclasses.replace(config, train=TrainConfig(seed=2 ** 32 - 1)))


def test_throughput_image_size_has_an_upper_bound(capsys, monkeypatch):
    from benchmarks import throughput

    monkeypatch.setattr(throughput, "measure_in_child", lambda *a, **k: pytest.fail("measured"))
    code, _, err = _run_cli(capsys, "throughput", "--image-size", "10000")
    _assert_one_line_error(code, err, "--image-size 10000: at most 1024 px")


@pytest.mark.parametrize("key, value", [("learning_rate", "1e300"), ("epsilon", "1e39"),
                                        ("weight_decay", "1e300")])
def test_recipe_values_beyond_float32_are_one_line(tmp_path, capsys, key, value):
    (tmp_path / "r.toml").write_text(f'name = "big"\n[[phase]]\ntrain = "head"\n{key} = {value}\n')
    code, _, err = _run_cli(capsys, "run", "--backend", "pytorch", "--recipe", str(tmp_path / "r.toml"),
                            "--out", str(tmp_path / "out"))
    _assert_one_line_error(code, err, f"{key} = {float(value)!r} is invalid; must be at most "
                                      f"3.403e+38, the largest float32")


def test_more_cpu_devices_than_cores_and_sync_bn_without_cuda_are_refused_in_the_parent(
        tiny_quads, tmp_path, capsys, monkeypatch):
    from benchmarks import runner

    monkeypatch.setattr(runner, "run_child", lambda run: pytest.fail("a run started"))
    monkeypatch.setattr(commands.run, "cuda_visible", lambda: False)
    monkeypatch.setattr(commands.run, "usable_cores", lambda: 2)
    base = ["run", "--backend", "pytorch", "--recipe", "head", "--data", str(tiny_quads),
            "--weights", "none", "--out", str(tmp_path / "out")]
    code, _, err = _run_cli(capsys, *base, "--devices", "64", "--batch-size", "64")
    _assert_one_line_error(code, err, "--devices 64: no CUDA device here, and each device on the "
                                      "CPU needs a core of its own (2 core(s)); use at most --devices 2")
    code, _, err = _run_cli(capsys, *base, "--devices", "2", "--sync-bn")
    _assert_one_line_error(code, err, "--sync-bn: torch.nn.SyncBatchNorm runs on CUDA devices only "
                                      "and no CUDA device is visible here")
    assert not (tmp_path / "out").exists()


def test_cuda_visibility_is_read_from_the_environment(monkeypatch):
    from common import parallel

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert parallel.cuda_visible() is False
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setattr(parallel.shutil, "which", lambda name: None)
    monkeypatch.setattr(parallel, "Path", lambda p: Path("/nonexistent/driver"))
    assert parallel.cuda_visible() is False
    monkeypatch.setattr(parallel.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    assert parallel.cuda_visible() is True
    assert parallel.device_problem(64, True, cuda=True, cores=2) is None


@pytest.mark.parametrize("setup, fragment", [
    ("text", "is not a checkpoint: its first bytes are none of a zip"),
    ("folder", "is a folder, not a checkpoint file"),
])
def test_a_weights_path_that_is_no_checkpoint_is_one_line_in_the_parent(tmp_path, capsys, setup,
                                                                        fragment, tiny_quads):
    path = tmp_path / "w.pt"
    if setup == "text":
        path.write_text("not weights")
    else:
        path.mkdir()
    code, _, err = _run_cli(capsys, "run", "--backend", "pytorch", "--recipe", "head", "--data",
                            str(tiny_quads), "--weights", str(path), "--out", str(tmp_path / "out"))
    _assert_one_line_error(code, err, f"--weights '{path}' {fragment}")


def test_the_run_process_checks_weights_with_the_parents_function(tmp_path):
    import torch

    from benchmarks.conversion import checkpoint_problem

    torch.save({"w": torch.zeros(2)}, tmp_path / "good.pt")
    (tmp_path / "bad.pt").write_text("not weights")
    assert checkpoint_problem(tmp_path / "good.pt") is None
    assert checkpoint_problem(tmp_path / "bad.pt").startswith("is not a checkpoint")
    from benchmarks import driver

    config = tiny_config("fake", "two_phase", tmp_path, tmp_path / "run", weights=str(tmp_path / "bad.pt"))
    from backends.base import BackendError

    with pytest.raises(BackendError, match="is not a checkpoint"):
        driver._resolve_weights(config, None, 75)


def test_torchs_unexpected_pos_on_a_full_disk_is_the_disk_full_line(fake, tiny_quads, tmp_path,
                                                                    monkeypatch):
    import torch

    from benchmarks import driver
    from common.paths import is_disk_full, mount_point

    with small_disk(tmp_path / "small") as disk:
        with pytest.raises(RuntimeError, match="unexpected pos") as raised:
            torch.save({"w": torch.zeros(200_000)}, disk / "x.pt")  # what a full disk gives
        assert is_disk_full(raised.value)
        message = str(raised.value)
        del raised  # its traceback holds the file open
        (disk / "x.pt").unlink()
        h5py = pytest.importorskip("h5py")  # Keras' .weights.h5 writer on the same full disk
        with pytest.raises(OSError) as raised:
            with h5py.File(disk / "x.weights.h5", "w") as f:
                f.create_dataset("w", data=np.zeros(200_000))
        assert is_disk_full(raised.value)
        del raised
    import fake_backend

    def full(self, path):
        raise RuntimeError(message)

    monkeypatch.setattr(fake_backend.FakeBackend, "_save", full)
    result = driver.run(tiny_config("fake", "head", tiny_quads, tmp_path / "run"))
    assert result["status"] == "failed"
    assert result["error"].startswith(f"disk full: no space left on the file system mounted at "
                                      f"{mount_point(tmp_path)}")


@pytest.mark.parametrize("command", ["run", "inspect", "eval"])
def test_a_class_map_with_an_image_folder_is_refused(tmp_path, capsys, tiny_quads, command):
    (tmp_path / "cm.json").write_text('{"id2cls": {"0": "a", "1": "b"}}')
    argv = {"run": ["run", "--backend", "pytorch", "--data", str(tiny_quads), "--out",
                    str(tmp_path / "out")],
            "inspect": ["data", "inspect", str(tiny_quads)],
            "eval": ["eval", str(tmp_path / "RUN"), "--data", str(tiny_quads)]}[command]
    code, _, err = _run_cli(capsys, *argv, "--class-map", str(tmp_path / "cm.json"))
    _assert_one_line_error(code, err, f"--data '{tiny_quads}' is an image folder whose subfolders "
                                      f"name its classes; drop --class-map")


def test_a_path_of_the_wrong_kind_says_what_it_is(tmp_path, capsys):
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "folder.json").mkdir()
    code, _, err = _run_cli(capsys, "run", "--backend", "pytorch", "--data", str(tmp_path / "pipe"),
                            "--out", str(tmp_path / "out"))
    _assert_one_line_error(code, err, f"--data '{tmp_path / 'pipe'}' is a named pipe")
    code, _, err = _run_cli(capsys, "data", "inspect", str(tmp_path), "--class-map",
                            str(tmp_path / "folder.json"))
    _assert_one_line_error(code, err, f"--class-map '{tmp_path / 'folder.json'}' is a folder, not a file")


def test_parity_with_missing_weights_writes_nothing(tmp_path, capsys):
    out = tmp_path / "parity"
    code, _, err = _run_cli(capsys, "parity", "--weights", str(tmp_path / "missing.pt"), "--out",
                            str(out))
    if code == 2 and "parity needs two backends" in err:
        pytest.skip(err.strip())
    _assert_one_line_error(code, err, f"--weights '{tmp_path / 'missing.pt'}' does not exist")
    assert not out.exists()


@pytest.mark.parametrize("backend, fragment", [
    ("pytorch", "--backend 'pytorch' writes no TFRecords (its BackendInfo declares no "
                "tfrecord_export); choose one of: slim"),
    ("keras-tensorflow", "--backend 'keras' writes no TFRecords"),
    ("slim,keras", "export-tfrecord writes with one backend; choose one of: slim"),
    ("nope", "unknown backend 'nope'"),
])
def test_export_tfrecord_is_refused_for_a_backend_without_a_tfrecord_writer(backend, fragment,
                                                                            capsys, tmp_path):
    """``bench data export-tfrecord`` reaches the writer through the registry
    (``BackendInfo.tfrecord_export``): a backend that declares none is one line, exit 2,
    before anything is written."""
    code, _, err = _run_cli(capsys, "data", "export-tfrecord", "--backend", backend,
                            "--out", str(tmp_path / "o"))
    _assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "o").exists()
