"""Bad input: each case gives exit 2 and one readable line, or a skipped/warned
result where the case is recoverable, and never harms earlier results."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from benchmarks import cli
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
