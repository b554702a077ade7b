"""Reports from the fixture run directories (benchmarks.report), no framework needed.

``tests/fixtures/results/run_a``: pytorch, keras, slim x two_phase, scratch x
seeds 0, 1, plus slim full (failed) and keras full (skipped). ``run_b``:
pytorch, keras x two_phase, scratch, seed 0, plus pytorch linear_probe.
Regenerate them with ``python tests/fixtures/results/make_fixtures.py``.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from benchmarks import report, stats
from common.results import read_results

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "results"
RUN_A, RUN_B = FIXTURES / "run_a", FIXTURES / "run_b"
BACKENDS = ("pytorch", "keras", "slim")
PNG = '<img src="data:image/png;base64,'


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("report.*", "summary.*", "*.py"))
    return dst


def edit_result(run_dir: Path, name: str, change) -> None:
    f = run_dir / name / "result.json"
    r = json.loads(f.read_text())
    change(r)
    f.write_text(json.dumps(r))


def section(md: str, title: str) -> str:
    """The markdown between ``## title`` and the next ``## `` heading."""
    start = md.index(f"## {title}\n")
    end = md.find("\n## ", start + 3)
    return md[start: end if end != -1 else None]


def table_rows(text: str) -> list[list[str]]:
    """Body rows of the first markdown table in ``text``, as stripped cells."""
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split(" | ")] for ln in lines[2:]]


@pytest.fixture(scope="module")
def run_a(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    run_dir = copy_run(RUN_A, tmp_path_factory.mktemp("report") / "run_a")
    return run_dir, report.write_report(run_dir)


def test_fixtures_are_what_the_tests_assume():
    results = read_results(RUN_A)
    assert len(results) == 14
    assert sorted({r["status"] for r in results}) == ["failed", "ok", "skipped"]
    assert {(r["backend"], r["recipe"]) for r in results if r["status"] == "ok"} == {
        (b, rec) for b in BACKENDS for rec in ("two_phase", "scratch")}


def test_write_report_writes_the_four_files(run_a):
    run_dir, paths = run_a
    assert set(paths) == {"md", "html", "csv", "json"}
    assert paths == {"md": run_dir / "report.md", "html": run_dir / "report.html",
                     "csv": run_dir / "summary.csv", "json": run_dir / "summary.json"}
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths.values())


def test_html_is_self_contained_with_embedded_plots(run_a):
    _, paths = run_a
    page = paths["html"].read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert page.count(PNG) >= 5
    assert page.count(PNG) == 7  # top-1, curves x2, throughput, per-class, confusion, params
    assert not re.search(r'(src|href)="(https?:)?//', page), "no external assets"
    assert "<link" not in page and "<script" not in page
    for backend in BACKENDS:
        assert backend in page
    for title in ("Validation top-1 per epoch", "Validation top-1 per training images seen",
                  "Throughput of the model step", "Per-class test accuracy", "confusion matrices",
                  "Trainable parameters per phase", "Environment and versions"):
        assert title in page


def test_markdown_results_table_has_one_row_per_backend_and_recipe(run_a):
    _, paths = run_a
    md = paths["md"].read_text()
    rows = table_rows(section(md, "Results"))
    expected = {(r["backend"], r["recipe"]) for r in read_results(RUN_A)}
    assert len(expected) == 8
    assert len(rows) == 8
    assert {(row[1], row[0].strip("`")) for row in rows} == expected


def test_markdown_numbers_match_the_result_files(run_a):
    _, paths = run_a
    md = paths["md"].read_text()
    top1 = [r["test"]["top1"] for r in read_results(RUN_A)
            if (r["backend"], r["recipe"], r["status"]) == ("pytorch", "two_phase", "ok")]
    expected = f"{100 * np.mean(top1):.1f} ± {100 * np.std(top1, ddof=1):.1f}"
    row = next(r for r in table_rows(section(md, "Results")) if r[:2] == ["`two_phase`", "pytorch"])
    assert row[3] == expected


def test_markdown_sections(run_a):
    _, paths = run_a
    md = paths["md"].read_text()
    for title in ("Conditions", "Results", "Seed spread", "What transfer buys", "Throughput",
                  "Framework differences", "Failures and skipped runs", "What the numbers mean"):
        assert f"## {title}\n" in md
    conditions = section(md, "Conditions")
    for text in ("inception_v3", "75 px", "fp32", "3f9c2a7d1e04b8c6", "torch", "2.14.1", "keras",
                 "3.15.0", "tf_slim", "1.1.0", "0, 1", "synthetic"):
        assert text in conditions
    assert "WARNING" not in md  # every run used the same split
    assert "within their seed spread on two_phase" in section(md, "Seed spread")
    gains = table_rows(section(md, "What transfer buys"))
    assert [g[0] for g in gains] == list(BACKENDS)
    assert all(g[4].endswith(" pp") and g[4].startswith("+") for g in gains)
    frameworks = section(md, "Framework differences")
    for native in ("requires_grad_modules", "param_groups[0]", "model.layers[249:]",
                   "trainable_scopes", "InceptionV3/Mixed_7b", "checkpoint_exclude_scopes"):
        assert native in frameworks
    assert "8,178,693" in frameworks and "8,176,645" in frameworks
    notes = section(md, "What the numbers mean")
    assert "warm-up steps are excluded" in notes and "batch / median step" in notes


def test_failed_and_skipped_errors_appear(run_a):
    _, paths = run_a
    md, page = paths["md"].read_text(), paths["html"].read_text()
    oom = ("ResourceExhaustedError: OOM when allocating tensor with shape[16,768,17,17] and type "
           "float on /job:localhost/replica:0/task:0/device:CPU:0")
    assert oom in section(md, "Failures and skipped runs")
    assert oom in page
    assert "keras, tensorflow not installed" in md and "keras, tensorflow not installed" in page


def test_summary_csv_and_json(run_a):
    _, paths = run_a
    with paths["csv"].open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8
    assert list(rows[0]) == report.CSV_FIELDS
    by_key = {(r["backend"], r["recipe"]): r for r in rows}
    assert by_key[("slim", "full")]["status"] == "failed"
    assert "ResourceExhaustedError" in by_key[("slim", "full")]["errors"]
    assert by_key[("slim", "full")]["test_top1_mean"] == ""
    top1 = [r["test"]["top1"] for r in read_results(RUN_A)
            if (r["backend"], r["recipe"], r["status"]) == ("keras", "scratch", "ok")]
    assert float(by_key[("keras", "scratch")]["test_top1_mean"]) == pytest.approx(np.mean(top1), rel=1e-5)
    assert by_key[("keras", "scratch")]["seeds"] == "0;1"
    summary = json.loads(paths["json"].read_text())
    assert len(summary["rows"]) == 8
    assert len(summary["transfer_gain"]) == 3
    with_data = [r for r in read_results(RUN_A) if "data" in r]  # the skipped run never got data
    assert len(with_data) == 13
    assert summary["conditions"]["split_digests"] == {
        "3f9c2a7d1e04b8c6": [f"{r['backend']}-{r['recipe']}-s{r['seed']}" for r in with_data]}


def test_summary_table_for_the_terminal():
    results = read_results(RUN_A)
    text = report.summary_table(results)
    lines = text.splitlines()
    assert len(lines) == 2 + 8
    assert lines[0].split()[:4] == ["backend", "recipe", "seeds", "test"]
    assert set(lines[1]) <= {"-", " "}
    assert "failed: ResourceExhaustedError: OOM" in text
    assert "skipped: keras, tensorflow not installed" in text
    assert max(len(ln) for ln in lines) <= len(lines[1]) + 1
    row = next(ln for ln in lines if ln.split()[:2] == ["pytorch", "two_phase"])
    assert " ± " in row and " pp" in row and row.rstrip().endswith("ok")
    long = [ln for ln in lines if "failed:" in ln][0]
    assert long.endswith("…")


def test_compare_two_runs():
    text = report.compare(RUN_A, RUN_B)
    rows = table_rows(text)
    keys = {(r[0], r[1].strip("`")) for r in rows}
    assert len(rows) == len(keys) == 9  # 8 in A plus pytorch linear_probe only in B
    probe = next(r for r in rows if r[1] == "`linear_probe`")
    assert probe[2] == "—" and probe[-2] == "absent" and probe[-1] == "ok"
    both = next(r for r in rows if r[:2] == ["keras", "`two_phase`"])
    a = stats.aggregate(read_results(RUN_A))
    b = stats.aggregate(read_results(RUN_B))
    ka = next(r for r in a if (r["backend"], r["recipe"]) == ("keras", "two_phase"))["test_top1_mean"]
    kb = next(r for r in b if (r["backend"], r["recipe"]) == ("keras", "two_phase"))["test_top1_mean"]
    assert both[4] == f"{100 * (kb - ka):+.1f} pp"
    assert "WARNING" not in text


def test_different_split_digests_are_a_loud_warning(tmp_path):
    run_dir = copy_run(RUN_A, tmp_path / "mixed")
    edit_result(run_dir, "keras-two_phase-s1", lambda r: r["data"].update(split_digest="0000deadbeef0000"))
    paths = report.write_report(run_dir)
    md, page = paths["md"].read_text(), paths["html"].read_text()
    assert "> **WARNING: DIFFERENT DATA SPLITS" in md
    assert "0000deadbeef0000: keras-two_phase-s1" in md
    assert '<div class="warn">WARNING: DIFFERENT DATA SPLITS' in page
    assert "WARNING: the runs differ in split digests" in report.compare(RUN_A, run_dir)


def test_html_escapes_text_from_results(tmp_path):
    run_dir = copy_run(RUN_A, tmp_path / "escape")
    edit_result(run_dir, "slim-full-s0",
                lambda r: r.update(error='ValueError: bad <script>alert("x")</script> & more'))
    paths = report.write_report(run_dir)
    page = paths["html"].read_text()
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; more" in page


def test_single_backend_linear_probe_and_missing_values(tmp_path):
    run_dir = tmp_path / "probe"
    shutil.copytree(RUN_B / "pytorch-linear_probe-s0", run_dir / "pytorch-linear_probe-s0")
    paths = report.write_report(run_dir)
    md, page = paths["md"].read_text(), paths["html"].read_text()
    rows = table_rows(section(md, "Results"))
    assert len(rows) == 1 and rows[0][:3] == ["`linear_probe`", "pytorch", "0"]
    assert "±" not in rows[0][3]  # one seed: no spread
    assert "No recipe has finished results from two backends." in md
    assert "none (linear head on cached features)" in md
    assert page.count(PNG) >= 5

    # no throughput, NaN accuracy (as a hand-edited file may hold), no curves, no phases
    edit_result(run_dir, "pytorch-linear_probe-s0",
                lambda r: [r.pop(k) for k in ("throughput", "curves", "phases")])
    f = run_dir / "pytorch-linear_probe-s0" / "result.json"
    f.write_text(re.sub(r'"top1": [0-9.]+', '"top1": NaN', f.read_text(), count=1))
    paths = report.write_report(run_dir)
    assert "—" in table_rows(section(paths["md"].read_text(), "Results"))[0][3]
    assert report.summary_table(read_results(run_dir)).count("\n") == 2


def test_only_failures_and_empty_directories(tmp_path):
    run_dir = tmp_path / "bad"
    for name in ("slim-full-s0", "keras-full-s0"):
        shutil.copytree(RUN_A / name, run_dir / name)
    paths = report.write_report(run_dir)
    md, page = paths["md"].read_text(), paths["html"].read_text()
    assert len(table_rows(section(md, "Results"))) == 2
    assert PNG not in page
    assert "ResourceExhaustedError" in report.summary_table(read_results(run_dir))

    empty = tmp_path / "empty"
    empty.mkdir()
    paths = report.write_report(empty)
    assert "0 result files" in paths["md"].read_text()
    assert report.summary_table([]) == "no results"
