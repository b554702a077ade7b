"""The sweep harness on the numpy fake backend: child processes, crashes,
resume, Ctrl-C, result files and the report at the end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backends import base
from benchmarks import cli
from common.results import read_results, validate_result

TESTS = Path(__file__).resolve().parent
FAKES = "fake=fake_backend:FakeBackend,fakecrash=fake_backend:CrashingBackend"


@pytest.fixture
def fake_backends(monkeypatch):
    monkeypatch.setenv(base.EXTRA_BACKENDS_ENV, FAKES)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setitem(base.REGISTRY, "fake", "fake_backend:FakeBackend")
    monkeypatch.setitem(base.REGISTRY, "fakecrash", "fake_backend:CrashingBackend")


def _bench(*argv):
    return cli.main([str(a) for a in argv])


def test_sweep_writes_one_valid_result_per_run_and_a_report(fake_backends, tiny_quads, tmp_path, capsys):
    out = tmp_path / "out"
    code = _bench("run", "--backend", "fake", "--recipe", "two_phase,scratch", "--seeds", "0,1",
                  "--data", tiny_quads, "--epochs", "2", "--out", out)
    assert code == 0
    results = read_results(out)
    assert [(r["recipe"], r["seed"]) for r in results] == \
        [("scratch", 0), ("scratch", 1), ("two_phase", 0), ("two_phase", 1)]
    for r in results:
        assert validate_result(r) == [] and r["status"] == "ok"
        assert len(r["curves"]) == (4 if r["recipe"] == "two_phase" else 2)
        assert (Path(r["_path"]).parent / "log.txt").is_file()
    assert len({r["data"]["split_digest"] for r in results}) == 1
    for name in ("report.md", "report.html", "summary.csv"):
        assert (out / name).is_file()
    terminal = capsys.readouterr().out
    # the worker's driver messages reach the terminal (its log messages, benchmarks.child)
    assert "  [fake-two_phase-s0] phase 2/2 'top2'" in terminal
    assert "[4/4] fake-scratch-s1: ok in" in terminal


def test_a_crashing_backend_is_recorded_and_the_others_finish(fake_backends, tiny_quads, tmp_path):
    out = tmp_path / "out"
    code = _bench("run", "--backend", "fakecrash,fake", "--recipe", "head", "--data", tiny_quads,
                  "--epochs", "1", "--out", out)
    assert code == 1
    by_backend = {r["backend"]: r for r in read_results(out)}
    assert by_backend["fake"]["status"] == "ok"
    crashed = by_backend["fakecrash"]
    assert crashed["status"] == "failed" and "signal 11" in crashed["error"]
    assert validate_result(crashed) == []


def test_python_error_in_a_run_is_a_failed_result_with_its_message(fake_backends, tiny_quads, tmp_path,
                                                                   monkeypatch):
    monkeypatch.setenv("FAKE_BACKEND_CRASH", "raise")
    out = tmp_path / "out"
    assert _bench("run", "--backend", "fake", "--recipe", "head", "--data", tiny_quads,
                  "--epochs", "1", "--out", out) == 1
    (r,) = read_results(out)
    assert r["error"] == "RuntimeError: fake backend exploded" and "Traceback" in r["traceback"]


def test_resume_runs_only_what_is_missing(fake_backends, tiny_quads, tmp_path):
    out = tmp_path / "out"
    assert _bench("run", "--backend", "fake", "--recipe", "head", "--seeds", "0,1,2",
                  "--data", tiny_quads, "--epochs", "1", "--out", out) == 0
    kept = {p: p.stat().st_mtime_ns for p in out.glob("*/result.json")}
    missing = out / "fake-head-s1" / "result.json"
    missing.unlink()
    assert _bench("run", "--resume", out) == 0
    assert missing.is_file()
    for p, mtime in kept.items():
        if p != missing:
            assert p.stat().st_mtime_ns == mtime, f"{p} was re-run"


def test_a_multi_seed_sweep_measures_throughput_once_per_backend_and_recipe(fake_backends, tiny_quads,
                                                                            tmp_path):
    out = tmp_path / "out"
    assert _bench("run", "--backend", "fake", "--recipe", "head", "--seeds", "0,1,2",
                  "--data", tiny_quads, "--epochs", "1", "--out", out) == 0
    by_seed = {r["seed"]: r for r in read_results(out)}
    measured = by_seed[0]["throughput"]
    assert measured.get("measured_in") is None and measured["lock"]["held"]
    for seed in (1, 2):
        cited = by_seed[seed]["throughput"]
        assert cited["measured_in"] == "fake-head-s0" and validate_result(by_seed[seed]) == []
        assert cited["train"] == measured["train"] and cited["infer"] == measured["infer"]
        assert not any(s["name"] == "throughput" for s in by_seed[seed]["times"]["spans"])
    from benchmarks import stats

    (row,) = stats.records(stats.aggregate(stats.runs_frame(read_results(out))))
    assert row["train_images_per_second_n"] == 1 and row["end_to_end_images_per_second_n"] == 3
    report = (out / "report.md").read_text()
    assert "Measured once per backend and recipe" in report and "`fake-head-s0` (cited by" in report
    # another device (or framework version) measures again
    first = out / "fake-head-s0" / "result.json"
    moved = json.loads(first.read_text())
    moved["device"]["name"] = "another machine"
    first.write_text(json.dumps(moved))
    (out / "fake-head-s1" / "result.json").unlink()
    assert _bench("run", "--resume", out) == 0
    again = json.loads((out / "fake-head-s1" / "result.json").read_text())["throughput"]
    assert again.get("measured_in") is None and again["lock"]["held"]


def _sigint_as_from_a_terminal():
    """A shell without job control starts `cmd &` with SIGINT ignored, and Python keeps an
    inherited SIG_IGN; give the child the disposition a terminal's Ctrl-C meets."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_keeps_finished_results_and_resume_completes(fake_backends, tiny_quads, tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, FAKE_BACKEND_CRASH="sleep")
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.cli", "run", "--backend", "fake",
                             "--recipe", "head", "--seeds", "0,1", "--data", str(tiny_quads),
                             "--epochs", "1", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=str(TESTS.parent), preexec_fn=_sigint_as_from_a_terminal)
    first = out / "fake-head-s0" / "result.json"
    deadline = time.time() + 60
    while not first.is_file() and time.time() < deadline:
        time.sleep(0.1)
    assert first.is_file(), proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert f"bench run --resume {out}" in err
    assert json.loads(first.read_text())["status"] == "ok"
    assert not (out / "fake-head-s1" / "result.json").exists()
    assert _bench("run", "--resume", out) == 0
    assert json.loads((out / "fake-head-s1" / "result.json").read_text())["status"] == "ok"


def test_throughput_command_writes_the_protocol_fields(fake_backends, tmp_path, capsys):
    out = tmp_path / "tp.json"
    assert _bench("throughput", "--backend", "fake", "--batch-size", "4", "--image-size", "75",
                  "--steps", "3", "--out", out) == 0
    (r,) = json.loads(out.read_text())["results"]
    for kind in ("train", "infer"):
        t = r[kind]
        assert t["steps"] == 3 and t["batch_size"] == 4 and t["warmup_steps"] == 2
        assert t["images_per_second_p10"] <= t["images_per_second"] <= t["images_per_second_p90"]
        assert "first_step_seconds" in t
    assert r["precision"] == "fp32" and r["device"]["kind"] == "cpu"
    assert "fake     inception_v3 train fp32 batch 4" in capsys.readouterr().out


def test_compare_and_report_commands(fake_backends, tiny_quads, tmp_path, capsys):
    for name in ("a", "b"):
        assert _bench("run", "--backend", "fake", "--recipe", "head", "--data", tiny_quads,
                      "--epochs", "1", "--out", tmp_path / name, "--no-report") == 0
    assert not (tmp_path / "a" / "report.html").exists()
    assert _bench("report", tmp_path / "a") == 0
    assert (tmp_path / "a" / "report.html").is_file()
    capsys.readouterr()
    assert _bench("compare", tmp_path / "a", tmp_path / "b") == 0
    assert "fake" in capsys.readouterr().out


def test_benchmark_script_runs_each_backend_in_a_child_and_prints_its_ratio(fake_backends, capsys):
    from benchmarks import bench_linear_probe

    code = bench_linear_probe.main(["--backend", "fake", "--epochs", "1"])
    out = capsys.readouterr().out
    (line,) = [l for l in out.splitlines() if l.startswith("fake")]
    ratio = float(line.split("-> ")[1].split("x (target")[0])
    assert "whole linear-probe fit" in line and ratio > 0
    assert code == (0 if ratio >= bench_linear_probe.TARGET else 1)


def test_linear_probe_run_records_the_chosen_l2_and_what_train_throughput_timed(
        fake_backends, tiny_quads, tmp_path):
    from benchmarks import driver
    from conftest import tiny_config

    config = tiny_config("fake", "linear_probe", tiny_quads, tmp_path / "run")
    result = driver.run(config)
    assert result["status"] == "ok", result.get("traceback")
    probe = result["linear_probe"]["probe"]
    assert probe["solver"] == "lbfgs" and probe["C"] in probe["c_grid"]
    assert [r["C"] for r in probe["search"]] == probe["c_grid"]
    assert result["phases"][0]["native"]["head"].startswith("sklearn LogisticRegression(C=")
    # a linear probe's train img/s is the framework's head-only step, named in the result
    assert result["throughput"]["phase"] == {"name": "head (throughput)", "train": "head",
                                             "trainable_blocks": ["head"], "optimizer": "sgd",
                                             "bn": "frozen"}
