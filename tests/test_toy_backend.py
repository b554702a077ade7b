"""A fourth backend from one folder and one registry line (docs/design.md, "Adding a
backend"): ``tests/toy_backend/`` registered by ``TRANSFER_BENCH_BACKENDS``, run through
``bench list``, ``bench run`` and ``bench report`` as a user runs them (child processes),
and refused in one line by the commands whose optional capability it does not declare."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from backends import base
from benchmarks import cli
from common.results import read_results, validate_result

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
REGISTRY_LINE = "toy=toy_backend:INFO"


def bench(*argv, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.cli", *map(str, argv)], env=env,
                          cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.fixture
def toy_env(tmp_path) -> dict:
    """The environment of a user who added the toy backend: its registry line, and the
    folder that holds the package on the import path; nothing else."""
    env = {k: v for k, v in os.environ.items() if k != base.EXTRA_BACKENDS_ENV}
    env[base.EXTRA_BACKENDS_ENV] = REGISTRY_LINE
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(REPO)])
    env["TRANSFER_BENCH_PROGRESS"] = "off"
    return env


def test_the_toy_backend_is_one_folder_that_no_shared_module_names():
    files = sorted(p.name for p in (TESTS / "toy_backend").iterdir() if p.suffix == ".py")
    assert files == ["__init__.py", "backend.py"]
    for package in ("backends", "benchmarks", "common"):
        for source in (REPO / package).rglob("*.py"):
            text = source.read_text()
            assert "toy_backend" not in text and '"toy"' not in text, source


def test_bench_list_run_and_report_with_the_toy_backend(toy_env, tiny_quads, tmp_path):
    listed = bench("list", env=toy_env)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert any(line.split() == ["toy", "available"] for line in lines), listed.stdout
    # no catalog: the toy takes every model of common.models
    models = [line for line in lines if "default" in line and "backends:" in line]
    assert models and all(line.rstrip().endswith("toy") or ", toy" in line for line in models)
    # in_all=False: --backend all stays one entry per framework
    assert "toy" not in lines[0]

    out = tmp_path / "out"
    ran = bench("run", "--backend", "toy", "--recipe", "two_phase", "--epochs", "1",
                "--data", tiny_quads, "--out", out, "--no-report", env=toy_env)
    assert ran.returncode == 0, ran.stderr
    [result] = read_results(out)
    assert validate_result(result) == [] and result["status"] == "ok"
    assert result["backend"] == "toy" and len(result["curves"]) == 2
    assert sorted(p.suffix for p in (Path(result["_path"]).parent / "checkpoints").rglob("*.pkl"))
    assert not (out / "report.md").exists()

    reported = bench("report", out, env=toy_env)
    assert reported.returncode == 0, reported.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert "toy" in json.dumps(summary)
    assert "toy" in (out / "report.md").read_text()
    assert (out / "report.html").is_file()


@pytest.fixture
def toy_registered(monkeypatch):
    monkeypatch.setitem(base.REGISTRY, "toy", "toy_backend:INFO")
    monkeypatch.setattr(base, "_INFOS", dict(base._INFOS))


@pytest.mark.parametrize("argv, fragment", [
    (["weights", "convert", "--model", "inception_v3", "--from", "toy", "--to", "pytorch",
      "--input", "{tmp}/w.pkl", "--output", "{tmp}/out"], "the toy backend does not convert weights"),
    (["parity", "--model", "inception_v3", "--backend", "toy,pytorch", "--out", "{tmp}/parity"],
     "toy: no parity module"),
    (["run", "--backend", "toy", "--recipe", "head", "--data", "synthetic", "--devices", "2",
      "--out", "{tmp}/run"], "the toy backend has no data-parallel path"),
    (["data", "export-tfrecord", "--backend", "toy", "--out", "{tmp}/tfr"],
     "--backend 'toy' writes no TFRecords"),
], ids=["convert", "parity", "parallel", "tfrecord"])
def test_a_capability_the_toy_backend_leaves_out_is_refused_in_one_line(
        toy_registered, argv, fragment, tmp_path, capsys):
    code = cli.main([a.format(tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("bench: error: "), (code, err)
    assert fragment in lines[0], lines[0]
