"""Fuzz the command line with generated bad input (issue 11): recipes, meta files,
class maps, file names and image bytes, from one seed, so every run is the same.

Each case is fed to ``benchmarks.cli.main`` in this process and must end with
exit code 0 (the input was usable) or 2 (one ``bench: error:`` line), never a
traceback, and must write nothing outside its ``--out`` and the cache. ``bench
run`` cases use the numpy fake backend with the run worker's process replaced
by a direct ``driver.run`` call: the worker process itself is covered by
``test_runner.py`` and ``test_reliability.py``; here the speed buys cases.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import random
import string
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backends import base
from benchmarks import cli, driver, runner
from common.paths import CACHE_ENV

SEED = 20261125
TESTS = Path(__file__).resolve().parent


# ------------------------------------------------------------------ generators

def _junk(rng: random.Random, n: int) -> bytes:
    return bytes(rng.randrange(256) for _ in range(n))


def _text(rng: random.Random, n: int) -> str:
    alphabet = string.printable + "éü中\u202e\x00\udcff" + "|/.."
    return "".join(rng.choice(alphabet) for _ in range(n))


WEIRD_VALUES = [None, True, -1, 0, 1, 10 ** 30, -1e308, 1e-320, 0.5, "", "head", "../x", [],
                [1, 2], ["stem"], ["nosuch"], {"a": 1}, "nan", "🙂" * 3]


def _toml_value(v) -> str:
    if v is None:
        return "nan"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v) if not isinstance(v, float) or np.isfinite(v) else "inf"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"


PHASE_KEYS = ["name", "train", "top_blocks", "blocks", "optimizer", "learning_rate",
              "head_lr_multiplier", "momentum", "rmsprop_rho", "epsilon", "weight_decay",
              "schedule", "warmup_epochs", "decay_rate", "epochs", "bn", "augment",
              "label_smoothing", "nosuch_key"]


def recipe_case(rng: random.Random) -> bytes:
    """A recipe TOML: a valid one mutated, or broken bytes."""
    kind = rng.randrange(10)
    if kind == 0:
        return _junk(rng, rng.randrange(1, 200))
    top = {"name": json.dumps(rng.choice(["fuzz", "f-1.2", "../../x", "a/b", "", "é", "x" * 70])),
           "description": json.dumps("fuzzed")}
    if rng.random() < 0.2:
        top[rng.choice(["init", "head_hidden_units", "nosuch", "description"])] = _toml_value(
            rng.choice(WEIRD_VALUES + ["random", "pretrained", 4]))
    lines = [f"{k} = {v}" for k, v in top.items()]
    if kind == 1:
        lines.append(f"phase = {_toml_value(rng.choice([[1, 2], 'x', [], [[]], {'a': 1}]))}")
    else:
        for _ in range(rng.choice([0, 1, 1, 2])):
            lines.append("[[phase]]")
            phase = {"train": rng.choice(["head", "top", "blocks", "all", "linear", "x"]),
                     "epochs": 1}
            for _ in range(rng.randrange(0, 4)):
                phase[rng.choice(PHASE_KEYS)] = rng.choice(WEIRD_VALUES)
            lines += [f"{k} = {_toml_value(v)}" for k, v in phase.items()]
    text = "\n".join(lines) + "\n"
    if kind == 2:  # truncated
        text = text[: rng.randrange(len(text))]
    data = text.encode("utf-8", "surrogateescape")
    if kind == 3:  # one byte flipped
        i = rng.randrange(len(data))
        data = data[:i] + bytes([rng.randrange(256)]) + data[i + 1:]
    return data


def class_map_case(rng: random.Random) -> bytes:
    kind = rng.randrange(8)
    if kind == 0:
        return _junk(rng, rng.randrange(0, 100))
    candidates = [[], ["a", "b"], {"id2cls": ["a", "b"]}, {"id2cls": {"0": "a", "1": "b"}},
                  {"id2cls": {"0": "a", "2": "b"}}, {"id2cls": {"0": "a", "1": "a"}},
                  {"id2cls": {"0": "a", "1": "b"}, "cls2id": {"a": 1, "b": 0}},
                  {"id2cls": {"0": "a", "1": "b"}, "cls2id": ["a"]},
                  {"id2cls": {"-1": "a", "0": "b"}}, {"id2cls": {"0": 5, "1": None}},
                  {"id2cls": {"0": "", "1": "b"}}, {"cls2id": {"a": 0}}, None, 3, "x",
                  {"id2cls": {"0": "a", "1": "b", "x": "c"}}, {"id2cls": {" 0": "a", "1": "b"}}]
    value = rng.choice(candidates)
    text = json.dumps(value)
    if kind == 1:
        text = text[: rng.randrange(len(text) + 1)]
    return text.encode()


def meta_case(rng: random.Random) -> bytes:
    lines = []
    for _ in range(rng.randrange(0, 12)):
        kind = rng.randrange(9)
        label = rng.choice(["a", "b", "0", "1", "2", "c", "", " a ", "-1", "١"])
        path = rng.choice(["a/0.png", "a/1.png", "b/0.png", "b/1.png", "missing.png", "/etc/passwd",
                           "../outside.png", "", ".", "a", "a/0.png\x00", "b/0.png"])
        if kind == 0:
            lines.append(_text(rng, rng.randrange(0, 40)))
        elif kind == 1:
            lines.append(f"{label}{path}")  # no separator
        elif kind == 2:
            lines.append(f"{label}|{path}|{path}")
        else:
            lines.append(f"{label}|{path}")
    data = "\n".join(lines).encode("utf-8", "surrogateescape")
    if rng.random() < 0.15:
        data += _junk(rng, 8)
    return data


def image_case(rng: random.Random) -> bytes:
    """Bytes of a file named like an image: valid, mutated, truncated or a bomb."""
    fmt = rng.choice(["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"])
    mode = rng.choice(["RGB", "L", "RGBA", "P", "I;16", "F", "1", "CMYK"])
    size = (rng.randrange(1, 40), rng.randrange(1, 40))
    arr = np.random.default_rng(rng.randrange(2 ** 32)).integers(0, 255, (size[1], size[0], 3),
                                                                   dtype=np.uint8)
    buf = io.BytesIO()
    try:
        Image.fromarray(arr).convert(mode).save(buf, fmt)
    except (OSError, ValueError, KeyError):
        Image.fromarray(arr).save(buf, "PNG")
    data = buf.getvalue()
    kind = rng.randrange(6)
    if kind == 0:
        return data[: rng.randrange(len(data))]
    if kind == 1:
        flips = bytearray(data)
        for _ in range(rng.randrange(1, 20)):
            flips[rng.randrange(len(flips))] = rng.randrange(256)
        return bytes(flips)
    if kind == 2:
        return data[:8] + _junk(rng, rng.randrange(0, 300))
    if kind == 3:  # a PNG header that claims a huge image
        return (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + (60000).to_bytes(4, "big") * 2
                + b"\x08\x02\x00\x00\x00" + _junk(rng, 40))
    return data


def file_name_case(rng: random.Random) -> bytes:
    names = [b"\xff\xfe.png", b"caf\xe9.jpg", b" lead.png", b"trail .png", b"-rf.png",
             b"new\nline.png", b"tab\t.png", b".hidden.png", b"..png", b"x" * 200 + b".png",
             "中文.png".encode(), "\u202eevil.png".encode(), b"no_extension", b"UPPER.PNG",
             b"a.png.txt", b"%s%n.png", b"$(touch pwned).png", b"back\\slash.png"]
    return rng.choice(names)


# ------------------------------------------------------------------ harness

@pytest.fixture
def fuzz_env(monkeypatch, tmp_path):
    monkeypatch.setenv(base.EXTRA_BACKENDS_ENV, "fake=fake_backend:FakeBackend")
    monkeypatch.setitem(base.REGISTRY, "fake", "fake_backend:FakeBackend")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    # the run worker's process replaced by a direct call: the same driver, no interpreter start
    monkeypatch.setattr(runner, "run_child", lambda run: driver.run(run.config))
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    return tmp_path


def _good_images(root: Path, classes=("a", "b"), per_class=3) -> None:
    for ci, cls in enumerate(classes):
        for i in range(per_class):
            p = root / cls / f"{i}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (10, 10), (60 * i, 100 * ci, 9)).save(p)


def _snapshot(root: Path, exclude: list[Path]) -> dict[str, tuple[int, int]]:
    """Every file (and link) under root but not under an excluded folder: its size and mtime.

    Walked with ``os.scandir`` on strings: the fuzz test takes two snapshots per case of a tree
    that holds every case's folder (Path arithmetic per entry was most of its time)."""
    skip = {os.fspath(e) for e in exclude}
    out = {}

    def walk(folder: str) -> None:
        if folder in skip:
            return
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    walk(entry.path)
                else:
                    st = entry.stat(follow_symlinks=False)
                    out[entry.path] = (st.st_size, st.st_mtime_ns)

    walk(os.fspath(root))
    return out


def _cases(rng: random.Random, root: Path):
    """(name, argv, runs) for every generated input, each in its own folder under root."""
    data = root / "base"
    _good_images(data)
    (data / "classes.json").write_text(json.dumps({"id2cls": {"0": "a", "1": "b"}}))
    (data / "meta.txt").write_text("a|a/0.png\na|a/1.png\na|a/2.png\nb|b/0.png\nb|b/1.png\nb|b/2.png\n")
    run = ["run", "--backend", "fake", "--weights", "none", "--epochs", "1", "--no-report",
           "--batch-size", "2"]
    n = 0
    for _ in range(70):  # recipes, through bench run
        case = root / f"c{n}"
        case.mkdir()
        (case / "r.toml").write_bytes(recipe_case(rng))
        yield f"recipe {n}", [*run, "--recipe", case / "r.toml", "--data", data, "--out", case / "out"], case
        n += 1
    for _ in range(45):  # class maps
        case = root / f"c{n}"
        case.mkdir()
        (case / "cm.json").write_bytes(class_map_case(rng))
        argv = ["data", "inspect", data / "meta.txt", "--class-map", case / "cm.json"] \
            if rng.random() < 0.7 else \
            [*run, "--recipe", "head", "--data", data / "meta.txt", "--class-map", case / "cm.json",
             "--out", case / "out"]
        yield f"class map {n}", argv, case
        n += 1
    for _ in range(45):  # meta files
        case = root / f"c{n}"
        _good_images(case / "ds")
        (case / "ds" / "meta.txt").write_bytes(meta_case(rng))
        argv = ["data", "inspect", case / "ds" / "meta.txt", "--class-map", data / "classes.json"] \
            if rng.random() < 0.6 else \
            [*run, "--recipe", "head", "--data", case / "ds" / "meta.txt", "--class-map",
             data / "classes.json", "--out", case / "out"]
        yield f"meta file {n}", argv, case
        n += 1
    for _ in range(25):  # file names
        case = root / f"c{n}"
        _good_images(case / "ds")
        name = file_name_case(rng)
        target = os.path.join(os.fsencode(case / "ds" / rng.choice("ab")), name)
        with open(target, "wb") as f:
            f.write(image_case(rng) if rng.random() < 0.5 else (case / "ds" / "a" / "0.png").read_bytes()[:-1])
        argv = ["data", "inspect", case / "ds"] if rng.random() < 0.5 else \
            [*run, "--recipe", "head", "--data", case / "ds", "--out", case / "out"]
        yield f"file name {n} {name!r}", argv, case
        n += 1
    for _ in range(45):  # image bytes
        case = root / f"c{n}"
        _good_images(case / "ds")
        for k in range(rng.randrange(1, 4)):
            cls = rng.choice("ab")
            ext = rng.choice([".png", ".jpg", ".gif", ".tif", ".bmp", ".webp"])
            (case / "ds" / cls / f"fuzz{k}{ext}").write_bytes(image_case(rng))
        argv = ["data", "inspect", case / "ds"] if rng.random() < 0.5 else \
            [*run, "--recipe", rng.choice(["head", "linear_probe"]), "--data", case / "ds",
             "--out", case / "out"]
        yield f"image bytes {n}", argv, case
        n += 1


PHASE_NAMES = ["/abs/elsewhere", "../../../../elsewhere", "a/b", "..", ".", "", "x" * 65,
               "tab\tname", "new\nline", "é", "head (1)", "ok-name_1.2", "top2"]


def _issue_25_cases(rng: random.Random, root: Path, run: list):
    """Issue 25's classes: special files, huge sparse files, phase names, NaN training,
    pre-split folders with missing classes. (name, argv, case, env, expect): ``expect`` is
    an exit code and the fragment its message must hold, or None for "0 or 2"."""
    data = root / "base"
    n = 1000
    for _ in range(8):  # special files: a FIFO or a device listed in a meta file, or in a folder
        case = root / f"c{n}"
        _good_images(case / "ds")
        fifo = case / "ds" / rng.choice("ab") / "fifo.png"
        os.mkfifo(fifo)
        special = rng.choice([str(fifo), "/dev/zero", "/dev/null", str(case / "ds" / "a")])
        (case / "ds" / "meta.txt").write_text(
            "a|a/0.png\na|a/1.png\na|a/2.png\nb|b/0.png\nb|b/1.png\nb|b/2.png\n"
            f"{rng.choice('ab')}|{special}\n")
        source = [case / "ds" / "meta.txt", "--class-map", data / "classes.json"] \
            if rng.random() < 0.6 else [case / "ds"]
        argv = ["data", "inspect", *source] if rng.random() < 0.5 else \
            [*run, "--recipe", "head", "--data", *source, "--out", case / "out"]
        yield f"special file {n} {special}", argv, case, {}, None
        n += 1
    for _ in range(5):  # huge sparse files: refused by their size, never read
        case = root / f"c{n}"
        _good_images(case / "ds")
        with open(case / "ds" / rng.choice("ab") / f"huge{rng.choice(['.png', '.jpg'])}", "wb") as f:
            f.truncate(rng.choice([257 * 2 ** 20, 2 * 2 ** 30, 50 * 2 ** 30]))
        argv = ["data", "inspect", case / "ds"] if rng.random() < 0.5 else \
            [*run, "--recipe", "head", "--data", case / "ds", "--out", case / "out"]
        yield f"huge sparse file {n}", argv, case, {}, (0, "over the 256.0 MiB limit for one image")
        n += 1
    for name in PHASE_NAMES:  # phase names become paths (Keras' TensorBoard folder)
        case = root / f"c{n}"
        case.mkdir()
        (case / "r.toml").write_text(f'name = "r"\n[[phase]]\nname = {json.dumps(name)}\n'
                                     f'train = "head"\nepochs = 1\n')
        ok = name in ("ok-name_1.2", "top2")
        yield f"phase name {n} {name!r}", [*run, "--recipe", case / "r.toml", "--data", data,
                                          "--out", case / "out"], case, {}, \
            (0, "") if ok else (2, "a phase name names folders of the run")
        n += 1
    for _ in range(4):  # NaN training: a failed run that says where it diverged, exit 1
        case = root / f"c{n}"
        case.mkdir()
        epoch = rng.randrange(1, 4)
        argv = [*run, "--recipe", rng.choice(["head", "two_phase", "full"]), "--data", data,
                "--epochs", "3", "--out", case / "out"]
        yield f"NaN training {n}", argv, case, {"FAKE_BACKEND_CRASH": "nan",
                                                "FAKE_BACKEND_CRASH_EPOCH": str(epoch)}, \
            (1, f"diverged at epoch {epoch}: training loss nan")
        n += 1
    for _ in range(8):  # pre-split folders, a class missing from some subsets
        case = root / f"c{n}"
        subsets = ["train", *rng.sample(["val", "test"], rng.randrange(1, 3))]
        missing = {sub: rng.sample(["a", "b", "c"], rng.randrange(0, 2)) for sub in subsets}
        for sub in subsets:
            for ci, cls in enumerate("abc"):
                if cls not in missing[sub]:
                    for i in range(3):
                        p = case / "ds" / sub / cls / f"{i}.png"
                        p.parent.mkdir(parents=True, exist_ok=True)
                        Image.new("RGB", (10, 10), (60 * i, 80 * ci, 30 * len(sub))).save(p)
        untrained = any(c not in missing["train"] for sub in subsets[1:] for c in "abc"
                        if c in missing["train"] and c not in missing[sub])
        argv = ["data", "inspect", case / "ds"] if rng.random() < 0.5 else \
            [*run, "--recipe", "head", "--data", case / "ds", "--out", case / "out"]
        yield f"pre-split {n} {missing}", argv, case, {}, \
            (2, "but none in train/") if untrained else None
        n += 1


def test_generated_bad_input_gives_exit_0_or_2_one_line_and_writes_only_out_and_cache(fuzz_env,
                                                                                       capsys,
                                                                                       monkeypatch):
    root = fuzz_env
    rng = random.Random(SEED)
    count, outcomes = 0, {0: 0, 1: 0, 2: 0}
    run = ["run", "--backend", "fake", "--weights", "none", "--epochs", "1", "--no-report",
           "--batch-size", "2"]
    # made one case at a time, as the loop reaches it: each snapshot walks only the cases so far
    cases = ((*c, {}, None) for c in _cases(rng, root / "cases"))
    for name, argv, case, env, expect in itertools.chain(cases, _issue_25_cases(rng, root / "cases",
                                                                                run)):
        before = _snapshot(root, [case / "out", root / "cache"])
        with monkeypatch.context() as m:
            for key, value in env.items():
                m.setenv(key, value)
            try:
                code = cli.main([os.fsdecode(a) if isinstance(a, bytes) else str(a) for a in argv])
            except SystemExit as exit_:  # argparse
                code = exit_.code
        out, err = capsys.readouterr()
        context = f"{name}: {argv}\nstdout: {out[-800:]}\nstderr: {err[-800:]}"
        if expect is not None:
            assert code == expect[0], context
            if code == 1:  # a failed run: its result says why
                result = next((case / "out").glob("*/result.json")).read_text()
                assert json.loads(result)["status"] == "failed" and expect[1] in result, context
            else:
                assert expect[1] in out + err, context
        assert code in (0, 2) or expect is not None, context
        assert "Traceback" not in out + err, context
        if code == 2:
            lines = [l for l in err.splitlines() if l.strip()]
            assert len(lines) == 1 and lines[0].startswith("bench: error: "), context
        after = _snapshot(root, [case / "out", root / "cache"])
        assert after == before, f"{context}\nwritten outside --out and the cache: " \
                                f"{sorted(set(after) ^ set(before))[:5]}"
        outcomes[code] += 1
        count += 1
    assert count >= 260
    assert outcomes[0] >= 20 and outcomes[2] >= 110 and outcomes[1] == 4, outcomes


# ------------------------------------------------------------ outputs that cannot be written

# Every command that writes, with its output under OUT (a folder to write into) or in the
# finished sweep SWEEP (bench report, eval, export write into the run's own folders).
WRITING_COMMANDS = [
    ("run", ["run", "--backend", "fake", "--recipe", "head", "--data", "{data}", "--weights",
             "none", "--epochs", "1", "--batch-size", "2", "--out", "{out}/sweep"]),
    ("throughput", ["throughput", "--out", "{out}/t.json"]),
    ("recipe", ["recipe", "from-slim-flags", "--learning_rate=0.1", "--out", "{out}/r.toml"]),
    ("weights convert", ["weights", "convert", "--from", "pytorch", "--to", "keras", "--input",
                         "{data}/w.pt", "--output", "{out}/w"]),
    ("parity", ["parity", "--out", "{out}/parity"]),
    ("export --out", ["export", "{run}", "--format", "npz", "--out", "{out}/export"]),
    ("report", ["report", "{sweep}"]),
    ("eval", ["eval", "{sweep}/fake-head-s0"]),
    ("export", ["export", "{sweep}/fake-head-s0", "--format", "npz"]),
]


@pytest.fixture
def finished_sweep(fuzz_env, monkeypatch):
    """A finished sweep of one fake run (with the config.json the run worker writes)."""
    from common.results import write_json_atomic

    def in_process(run):
        write_json_atomic(Path(run.config.run_dir) / "config.json", run.config.to_dict())
        return driver.run(run.config)

    monkeypatch.setattr(runner, "run_child", in_process)
    data = fuzz_env / "data"
    _good_images(data)
    (data / "w.pt").write_bytes(b"PK\x03\x04")
    sweep = fuzz_env / "sweep"
    assert cli.main(["run", "--backend", "fake", "--recipe", "head", "--data", str(data),
                     "--weights", "none", "--epochs", "1", "--batch-size", "2",
                     "--out", str(sweep)]) == 0
    return data, sweep


@pytest.mark.parametrize("output", ["read-only mount", "immutable folder", "a file in the way"])
def test_outputs_that_cannot_be_written_give_one_line_before_any_work_and_change_nothing(
        finished_sweep, fuzz_env, monkeypatch, capsys, output):
    import contextlib

    from read_only import immutable, read_only_view

    from benchmarks import conversion, parity, saved_run, throughput

    for module, name in ((throughput, "measure_in_child"), (saved_run, "run_in_backend"),
                         (conversion, "convert_checkpoint"), (parity, "run_parity")):
        monkeypatch.setattr(module, name, lambda *a, **k: pytest.fail("work started"))
    data, sweep = finished_sweep
    capsys.readouterr()
    stack = contextlib.ExitStack()
    if output == "read-only mount":
        out = stack.enter_context(read_only_view(None, fuzz_env / "ro-out"))
        view = stack.enter_context(read_only_view(sweep, fuzz_env / "ro-sweep"))
    elif output == "immutable folder":
        out, view = fuzz_env / "locked", sweep
        out.mkdir()
        stack.enter_context(immutable(out, sweep, sweep / "fake-head-s0"))
    else:
        out, view = fuzz_env / "file", sweep
        out.write_text("in the way")
        for name in ("report.md", "fake-head-s0/eval", "fake-head-s0/export"):
            (sweep / name).unlink(missing_ok=True)
        (sweep / "report.md").mkdir()
        (sweep / "fake-head-s0" / "eval").write_text("in the way")
        (sweep / "fake-head-s0" / "export").write_text("in the way")
    with stack:
        before = _snapshot(fuzz_env, [fuzz_env / "cache"])
        for name, template in WRITING_COMMANDS:
            argv = [a.format(data=data, out=out, sweep=view, run=view / "fake-head-s0")
                    for a in template]
            try:
                code = cli.main(argv)
            except SystemExit as exit_:
                code = exit_.code
            stdout, err = capsys.readouterr()
            context = f"{output}, {name}: {argv}\nstdout: {stdout[-600:]}\nstderr: {err[-600:]}"
            lines = [l for l in err.splitlines() if l.strip()]
            assert code == 2 and "Traceback" not in stdout + err, context
            assert len(lines) == 1 and lines[0].startswith("bench: error: "), context
            assert _snapshot(fuzz_env, [fuzz_env / "cache"]) == before, f"{context}: wrote"
