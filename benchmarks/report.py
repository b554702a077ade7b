"""Reports built only from the ``result.json`` files of a run directory.

``write_report(run_dir)`` writes ``report.md``, ``report.html`` (one
self-contained file: inline CSS, plots as base64 PNGs drawn with
matplotlib's Agg canvas, no external asset), ``summary.csv`` and
``summary.json``; ``summary_table(results)`` is the fixed-width table the
terminal shows at the end of a sweep; ``compare(run_a, run_b)`` puts two run
directories side by side. Nothing here imports a framework or reads anything
but the result files, so any report can be regenerated at any time.

Both documents are rendered from one list of blocks (headings, paragraphs,
tables, lists, warnings, figures), so report.md and report.html always carry
the same tables. Every number is aggregated by ``benchmarks.stats``.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
import re
import time
from pathlib import Path
from typing import Any, Iterable

from benchmarks import stats
from common.results import read_results, run_name, write_json_atomic

DASH = "—"

#: one colour per backend in every plot (others get the fallback cycle)
BACKEND_COLORS = {"pytorch": "#e4572e", "keras": "#2e86ab", "slim": "#3a9e5f"}
_FALLBACK_COLORS = ("#8e6bbf", "#c9a227", "#6b7a8f", "#d16ba5")


# ---------------------------------------------------------------- formatting

def fmt_pct(mean: float | None, std: float | None = None) -> str:
    """A fraction as a percentage, ``84.2 ± 1.2``; ``—`` when missing."""
    if mean is None:
        return DASH
    return f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if std is not None else "")


def fmt_pp(delta: float | None) -> str:
    """A difference of fractions in percentage points, ``+26.7 pp``."""
    return DASH if delta is None else f"{100 * delta:+.1f} pp"


def fmt_rate(mean: float | None, std: float | None = None) -> str:
    """Images per second, ``21.0 ± 0.3``."""
    if mean is None:
        return DASH
    return f"{mean:,.1f}" + (f" ± {std:.1f}" if std is not None else "")


def fmt_seconds(seconds: float | None, std: float | None = None) -> str:
    """A duration, ``2m 51s`` or ``41.7 s`` (with ``± 5 s`` when a spread is given)."""
    if seconds is None:
        return DASH
    if seconds < 100:
        text = f"{seconds:.1f} s"
    elif seconds < 3600:
        text = f"{int(seconds // 60)}m {int(round(seconds % 60)):02d}s"
    else:
        text = f"{int(seconds // 3600)}h {int(seconds % 3600 // 60):02d}m"
    return text + (f" ± {std:.0f} s" if std is not None else "")


def fmt_int(n: Any) -> str:
    value = stats.finite(n)
    return DASH if value is None else f"{int(value):,}"


def fmt_bytes(n: Any) -> str:
    value = stats.finite(n)
    if not value:
        return DASH
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return DASH


def fmt_value(value: Any) -> str:
    """A scalar from a result for display (floats compact, None as ``—``)."""
    if value is None:
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}" if math.isfinite(value) else DASH
    return str(value)


def truncate(text: Any, width: int) -> str:
    """``text`` on one line, cut to ``width`` characters with an ellipsis."""
    line = " ".join(str(text or "").split())
    return line if len(line) <= width else line[: max(width - 1, 0)] + "…"


def _seeds(seeds: Iterable[Any]) -> str:
    seeds = list(seeds)
    return ", ".join(str(s) for s in seeds) if seeds else DASH


def _join_limited(items: list[Any], limit: int = 6) -> str:
    items = [fmt_value(i) for i in items]
    if len(items) <= limit:
        return ", ".join(items)
    return ", ".join(items[:limit]) + f", … (+{len(items) - limit} more)"


# ---------------------------------------------------------------- conditions

def _unique(values: Iterable[Any]) -> list:
    out = []
    for v in values:
        if v is not None and v not in out:
            out.append(v)
    return out


def _device_text(device: Any) -> str:
    if not isinstance(device, dict):
        return DASH
    head = " ".join(str(device[k]) for k in ("kind", "name") if device.get(k))
    extra = ", ".join(f"{k} {fmt_value(v)}" for k, v in device.items() if k not in ("kind", "name"))
    return (head + (f" ({extra})" if extra else "")) or DASH


def conditions(results: list[dict]) -> dict:
    """What the runs were measured under, collected from every result.

    Keys: ``models``, ``image_sizes``, ``batch_sizes``, ``precisions``,
    ``throughput_steps``, ``data_sources``, ``weights``, ``classes``,
    ``counts`` (images per split), ``seeds`` (all seeds), ``split_digests``
    (digest -> run names), ``devices`` (backend -> text), ``versions``
    (backend -> {package: version}) and ``warnings`` (one line each: different
    split digests first, then any other condition that differs between runs).
    """
    ok = [r for r in results if r.get("status") == "ok"]
    pool = ok or results

    def cfg(r: dict, *path: str) -> Any:
        return stats.lookup(r.get("config") or {}, path)

    digests: dict[str, list[str]] = {}
    for r in results:
        d = stats.lookup(r, ("data", "split_digest"))
        if d:
            digests.setdefault(d, []).append(run_name(r.get("backend", "?"), r.get("recipe", "?"),
                                                      r.get("seed", 0)))
    counts = {}
    for r in pool:
        c = stats.lookup(r, ("data", "counts"))
        if isinstance(c, dict):
            counts = {k: sum(v.values()) if isinstance(v, dict) else v for k, v in c.items()}
            break
    backends = sorted(_unique(r.get("backend") for r in results), key=stats.backend_sort_key)
    versions, devices = {}, {}
    for b in backends:
        mine = [r for r in results if r.get("backend") == b]
        mine_ok = [r for r in mine if r.get("status") == "ok"] or mine
        versions[b] = dict(mine_ok[0].get("versions") or {})
        devices[b] = ", ".join(_unique(_device_text(r.get("device")) for r in mine_ok))
    out = {
        "models": _unique(r.get("model") for r in pool),
        "image_sizes": _unique(stats.lookup(r, ("data", "image_size")) or cfg(r, "data", "image_size")
                               for r in pool),
        "batch_sizes": _unique(cfg(r, "train", "batch_size") for r in pool),
        "precisions": _unique(stats.lookup(r, ("throughput", "precision"))
                              or cfg(r, "train", "precision") for r in pool),
        "throughput_steps": _unique(stats.lookup(r, ("throughput", "train", "steps"))
                                    or cfg(r, "train", "throughput_steps") for r in pool),
        "data_sources": _unique(stats.lookup(r, ("data", "source")) or cfg(r, "data", "source")
                                for r in pool),
        "weights": _unique(stats.lookup(r, ("weights", "kind")) or cfg(r, "model", "weights")
                           for r in pool),
        "classes": next((stats.lookup(r, ("data", "classes")) for r in pool
                         if stats.lookup(r, ("data", "classes"))), []),
        "counts": counts,
        "seeds": sorted(_unique(r.get("seed") for r in results), key=lambda s: stats.finite(s) or 0),
        "split_digests": digests,
        "devices": devices,
        "versions": versions,
        "warnings": [],
    }
    if len(digests) > 1:
        detail = "; ".join(f"{d}: {', '.join(names)}" for d, names in digests.items())
        out["warnings"].append(
            f"DIFFERENT DATA SPLITS: the runs used {len(digests)} different split digests, so their "
            f"accuracies are not comparable ({detail})")
    for key, label in (("models", "model"), ("image_sizes", "image size"),
                       ("batch_sizes", "batch size"), ("precisions", "precision"),
                       ("data_sources", "data source")):
        if len(out[key]) > 1:
            out["warnings"].append(f"the {label} differs between runs: "
                                   f"{', '.join(fmt_value(v) for v in out[key])}")
    return out


def condition_line(cond: dict) -> str:
    """One line for the foot of every figure: model, size, batch, precision, device, seeds."""
    devices = _unique(cond["devices"].values())
    parts = [", ".join(map(str, cond["models"])) or None,
             (", ".join(f"{s} px" for s in cond["image_sizes"]) or None),
             (", ".join(f"batch {b}" for b in cond["batch_sizes"]) or None),
             ", ".join(map(str, cond["precisions"])) or None,
             "; ".join(devices) or None,
             f"{len(cond['seeds'])} seed{'s' if len(cond['seeds']) != 1 else ''}",
             ("split " + ", ".join(d[:8] for d in cond["split_digests"])) if cond["split_digests"] else None]
    return " · ".join(p for p in parts if p)


# ------------------------------------------------------------ document blocks
# A block is a tuple: ("h1"|"h2"|"h3"|"p"|"warn", text), ("ul", [text]),
# ("table", headers, rows, align) with align a string of "l"/"r" per column and
# cells that are text or a list of lines, or ("figure", title, data_uri, caption).
# Text may use `code` and **bold**, rendered natively by each writer.

def _results_table(rows: list[dict]) -> tuple:
    headers = ["recipe", "backend", "seeds", "test top-1 (%)", "test top-5 (%)", "vs scratch",
               "wall time", "train img/s", "infer img/s", "status"]
    body = []
    for r in rows:
        status = r["status"]
        if r["errors"] and r["n_ok"] == 0:
            status = f"{status}: {truncate(r['errors'][0].split(': ', 1)[-1], 60)}"
        elif r["errors"]:
            status = f"{status} ({truncate(r['errors'][0], 50)})"
        body.append([
            f"`{r['recipe']}`", r["backend"], _seeds(r["seeds"]),
            fmt_pct(r["test_top1_mean"], r["test_top1_std"]),
            fmt_pct(r["test_top5_mean"], r["test_top5_std"]),
            fmt_pp(r["vs_scratch_top1"]),
            fmt_seconds(r["wall_seconds_mean"], r["wall_seconds_std"]),
            fmt_rate(r["train_images_per_second_mean"], r["train_images_per_second_std"]),
            fmt_rate(r["infer_images_per_second_mean"], r["infer_images_per_second_std"]),
            status,
        ])
    return ("table", headers, body, "llrrrrrrrl")


def _throughput_table(rows: list[dict], groups: dict) -> tuple:
    headers = ["backend", "recipe", "precision", "batch", "train img/s (p10–p90)",
               "infer img/s (p10–p90)", "first train step", "end-to-end img/s",
               "peak device memory", "peak RSS"]
    body = []
    for r in rows:
        if r["n_ok"] == 0:
            continue
        ok = [x for x in groups[(r["backend"], r["recipe"])] if x.get("status") == "ok"]
        precision = ", ".join(_unique(stats.lookup(x, ("throughput", "precision")) for x in ok)) or DASH
        batch = ", ".join(str(b) for b in _unique(stats.lookup(x, ("throughput", "train", "batch_size"))
                                                 for x in ok)) or DASH
        first, _, _ = stats.mean_std(stats.lookup(x, ("throughput", "train", "first_step_seconds"))
                                     for x in ok)

        def rate(kind: str) -> str:
            mean = r[f"{kind}_images_per_second_mean"]
            lo, hi = r[f"{kind}_images_per_second_p10_mean"], r[f"{kind}_images_per_second_p90_mean"]
            band = "" if lo is None or hi is None else f" ({lo:,.1f}–{hi:,.1f})"
            return DASH if mean is None else f"{mean:,.1f}{band}"

        body.append([r["backend"], f"`{r['recipe']}`", precision, batch, rate("train"), rate("infer"),
                     fmt_seconds(first),
                     fmt_rate(r["end_to_end_images_per_second_mean"]),
                     fmt_bytes(r["peak_memory_bytes_mean"]), fmt_bytes(r["peak_rss_bytes_mean"])])
    return ("table", headers, body, "lllrrrrrrr")


def _per_class(groups: dict) -> tuple[list[str], dict[tuple[str, str], dict[str, tuple]]]:
    """Classes and, per (backend, recipe) with ok results, class -> (mean, std) test accuracy."""
    classes: list[str] = []
    table = {}
    for key, group in groups.items():
        ok = [r for r in group if r.get("status") == "ok"
              and isinstance(stats.lookup(r, ("test", "per_class")), dict)]
        if not ok:
            continue
        for r in ok:
            for c in r["test"]["per_class"]:
                if c not in classes:
                    classes.append(c)
        table[key] = {c: stats.mean_std(r["test"]["per_class"].get(c) for r in ok)[:2]
                      for c in classes}
    for key in table:
        for c in classes:
            table[key].setdefault(c, (None, None))
    return classes, table


def _per_class_table(groups: dict) -> tuple | None:
    classes, table = _per_class(groups)
    if not table:
        return None
    keys = list(table)
    headers = ["class"] + [f"{b} `{r}`" for b, r in keys]
    body = [[c] + [fmt_pct(*table[k][c]) for k in keys] for c in classes]
    return ("table", headers, body, "l" + "r" * len(keys))


def _block_text(blocks: list[str]) -> str:
    if not blocks:
        return "head only"
    if len(blocks) > 4:
        return f"{blocks[0]} … {blocks[-1]} ({len(blocks)} blocks)"
    return ", ".join(blocks)


def describe_native(native: Any) -> list[str]:
    """How a framework expressed a phase, as short lines (``**key**: value``).

    Lists of names are joined (long ones shortened), a list of dicts (param
    groups) gives one line per entry, dicts become ``k=v`` pairs.
    """
    if not isinstance(native, dict) or not native:
        return [DASH] if not native else [fmt_value(native)]
    lines = []
    for key, value in native.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for i, item in enumerate(value):
                lines.append(f"**{key}[{i}]**: " + ", ".join(
                    f"{k}={_join_limited(v, 4) if isinstance(v, list) else fmt_value(v)}"
                    for k, v in item.items()))
        elif isinstance(value, list):
            lines.append(f"**{key}**: {_join_limited(value) if value else '(none)'}")
        elif isinstance(value, dict):
            lines.append(f"**{key}**: " + ", ".join(f"{k}={fmt_value(v)}" for k, v in value.items()))
        else:
            lines.append(f"**{key}**: {fmt_value(value)}")
    return lines


def _phase_heading(recipe: str, phase: dict) -> str:
    bits = [f"train={phase.get('train', '?')}"]
    if phase.get("train") != "linear":
        lr = phase.get("learning_rate")
        bits.append(f"{phase.get('optimizer', '?')} lr {fmt_value(lr)}")
        mult = stats.finite(phase.get("head_lr_multiplier"))
        if mult not in (None, 1.0):
            bits.append(f"head lr ×{mult:g}")
        if phase.get("epochs") is not None:
            bits.append(f"{phase['epochs']} epoch{'s' if phase['epochs'] != 1 else ''}")
        if phase.get("bn"):
            bits.append(f"BN {phase['bn']}")
        if phase.get("augment") is not None:
            bits.append("augment on" if phase["augment"] else "augment off")
    index = phase.get("index", 0)
    return f"`{recipe}` phase {int(index) + 1} `{phase.get('name', '?')}`: " + ", ".join(bits)


def _phase_reports(groups: dict) -> dict[str, dict[int, dict[str, dict]]]:
    """recipe -> phase index -> backend -> phase report (from the first ok seed)."""
    out: dict[str, dict[int, dict[str, dict]]] = {}
    for (backend, recipe), group in groups.items():
        ok = [r for r in group if r.get("status") == "ok" and isinstance(r.get("phases"), list)]
        if not ok:
            continue
        for i, phase in enumerate(ok[0]["phases"]):
            if isinstance(phase, dict):
                index = int(stats.finite(phase.get("index")) or i)
                out.setdefault(recipe, {}).setdefault(index, {})[backend] = phase
    return out


def _framework_blocks(groups: dict) -> list[tuple]:
    blocks: list[tuple] = [("p", "How each backend expressed the same phase in its own idiom: PyTorch "
                                 "sets `requires_grad` on modules and builds optimizer param groups; "
                                 "Keras sets `layer.trainable` on a layer index range and recompiles; "
                                 "TF-Slim selects variables by `trainable_scopes` (and restores "
                                 "excluding `checkpoint_exclude_scopes`). The parameter counts are "
                                 "each framework's own count of what trains.")]
    reports = _phase_reports(groups)
    if not reports:
        return blocks + [("p", "No finished run reported its phases.")]
    for recipe in sorted(reports, key=stats.recipe_sort_key):
        for index in sorted(reports[recipe]):
            per_backend = reports[recipe][index]
            first = next(iter(per_backend.values()))
            blocks.append(("h3", _phase_heading(recipe, {"index": index, **first})))
            body = []
            for backend in sorted(per_backend, key=stats.backend_sort_key):
                p = per_backend[backend]
                blocks_text = ("none (linear head on cached features)" if p.get("train") == "linear"
                               else _block_text(list(p.get("trainable_blocks") or [])))
                body.append([backend, blocks_text, fmt_int(p.get("trainable_params")),
                             fmt_int(p.get("total_params")), fmt_int(p.get("trainable_tensors")),
                             describe_native(p.get("native"))])
            blocks.append(("table", ["backend", "trainable blocks", "trainable params", "total params",
                                     "trainable tensors", "how the framework expressed it"],
                           body, "llrrrl"))
            counts = {b: stats.finite(p.get("trainable_params")) for b, p in per_backend.items()}
            counts = {b: c for b, c in counts.items() if c is not None}
            if len(counts) > 1 and max(counts.values()) != min(counts.values()):
                hi, lo = max(counts.values()), min(counts.values())
                same = len({tuple(p.get("trainable_blocks") or ()) for p in per_backend.values()}) == 1
                why = ("The canonical blocks are the same; the frameworks build them with different "
                       "layers." if same else
                       "**The backends trained different canonical blocks**: check the phase.")
                blocks.append(("p", f"Trainable parameter counts differ between backends by "
                                    f"{int(hi - lo):,} ({100 * (hi - lo) / hi:.2f}% of the largest): "
                                    + ", ".join(f"{b} {int(c):,}" for b, c in counts.items())
                                    + f". {why}"))
    return blocks


def _failure_table(results: list[dict]) -> tuple | None:
    bad = [r for r in results if r.get("status") != "ok"]
    if not bad:
        return None
    body = [[run_name(r.get("backend", "?"), r.get("recipe", "?"), r.get("seed", 0)),
             str(r.get("status")), " ".join(str(r.get("error") or DASH).split())] for r in bad]
    return ("table", ["run", "status", "error"], body, "lll")


NOTES = [
    "**test top-1 / top-5**: accuracy on the held-out test split (the same files and class indices "
    "for every backend, see the split digest), computed with numpy from each backend's logits "
    "(`common.metrics`), after restoring the best-on-validation checkpoint.",
    "**mean ± std**: over the seeds that finished; std is the sample standard deviation (ddof = 1). "
    "With one seed there is no spread estimate and no ± is shown.",
    "**within their seed spread**: |mean_a − mean_b| < std_a + std_b. A coarse screen, not a "
    "significance test: with two or three seeds, only large gaps are meaningful.",
    "**vs scratch / what transfer buys**: the recipe's mean test top-1 minus the same backend's "
    "`scratch` recipe (random init, everything trained), in percentage points.",
    "**wall time**: the whole run in its own process: data preparation, loading or pretraining the "
    "source weights, every phase with per-epoch validation and checkpoints, evaluation and the "
    "throughput measurement.",
    "**train / infer img/s**: the model step alone on in-memory batches. The first step (compilation, "
    "graph building, autotuning) is reported separately and the warm-up steps are excluded; every "
    "following step is timed with the device synchronised before the clock stops; images/s = "
    "batch / median step time; p10–p90 is the same ratio at the 90th and 10th percentile step "
    "times (faster steps give more images/s).",
    "**end-to-end img/s**: training images per second over the last epoch, input pipeline and "
    "augmentation included; it is lower than the model-step figure when the input pipeline or "
    "Python overhead limits the step.",
    "**trainable params**: counted by each framework for the phase as it expressed it natively.",
]


def build_blocks(results: list[dict], run_dir: Path, figures: dict[str, tuple[str, str]] | None = None
                 ) -> list[tuple]:
    """The report's blocks (see the comment above); ``figures`` maps a figure key to
    ``(title, data URI)`` and is placed only where given (the HTML report)."""
    figures = figures or {}
    rows = stats.aggregate(results)
    groups = stats.group_results(results)
    cond = conditions(results)
    n_status = {s: sum(r.get("status") == s for r in results) for s in ("ok", "failed", "skipped")}
    caption = condition_line(cond)

    def fig(key: str) -> list[tuple]:
        return [("figure", figures[key][0], figures[key][1], caption)] if key in figures else []

    blocks: list[tuple] = [
        ("h1", f"transfer-bench report: {Path(run_dir).name}"),
        ("p", f"{len(results)} result files in `{run_dir}`: {n_status['ok']} ok, {n_status['failed']} "
              f"failed, {n_status['skipped']} skipped. Built only from the `result.json` files on "
              f"{time.strftime('%Y-%m-%d %H:%M')}; regenerate it with "
              f"`bench report {run_dir}`."),
    ]
    blocks += [("warn", w) for w in cond["warnings"]]
    blocks.append(("h2", "Conditions"))
    counts = ", ".join(f"{k} {v}" for k, v in cond["counts"].items()) or DASH
    digests = ", ".join(f"`{d}`" for d in cond["split_digests"]) or DASH
    if len(cond["split_digests"]) > 1:
        digests += " (**differ!**)"
    blocks.append(("table", ["condition", "value"], [
        ["model", ", ".join(map(str, cond["models"])) or DASH],
        ["image size", ", ".join(f"{s} px" for s in cond["image_sizes"]) or DASH],
        ["batch size", ", ".join(map(str, cond["batch_sizes"])) or DASH],
        ["precision", ", ".join(map(str, cond["precisions"])) or DASH],
        ["timed steps (throughput)", ", ".join(map(str, cond["throughput_steps"])) or DASH],
        ["seeds", _seeds(cond["seeds"])],
        ["data source", ", ".join(map(str, cond["data_sources"])) or DASH],
        ["split digest", digests],
        ["classes", f"{len(cond['classes'])}: {', '.join(map(str, cond['classes']))}"
         if cond["classes"] else DASH],
        ["images per split", counts],
        ["initial weights", ", ".join(map(str, cond["weights"])) or DASH],
    ], "ll"))
    version_keys = _unique(k for v in cond["versions"].values() for k in v)
    blocks.append(("h3", "Environment and versions per backend"))
    blocks.append(("table", ["backend", "device"] + version_keys,
                   [[b, cond["devices"].get(b, DASH)] + [fmt_value(cond["versions"][b].get(k))
                                                         for k in version_keys]
                    for b in cond["versions"]], "ll" + "l" * len(version_keys)))

    blocks.append(("h2", "Results"))
    blocks.append(("p", "One row per backend × recipe. Accuracies in %, mean ± sample std over seeds; "
                        "`vs scratch` in percentage points against the same backend's `scratch` run."))
    blocks.append(_results_table(rows))
    blocks += fig("top1") + fig("curves_epoch") + fig("curves_images")

    blocks.append(("h2", "Seed spread"))
    spread = stats.within_spread(rows)
    blocks.append(("ul", [s["statement"] for s in spread]) if spread else
                  ("p", "No recipe has finished results from two backends."))

    blocks.append(("h2", "What transfer buys"))
    gains = stats.transfer_gain(rows)
    if gains:
        blocks.append(("table", ["backend", "best transferred recipe", "its test top-1 (%)",
                                 "`scratch` test top-1 (%)", "gain"],
                       [[g["backend"], f"`{g['best_recipe']}`", fmt_pct(g["best"]),
                         fmt_pct(g["control"]), fmt_pp(g["gain"])] for g in gains], "llrrr"))
    else:
        blocks.append(("p", "Needs a finished `scratch` run and a finished transferred recipe "
                            "for the same backend."))

    blocks.append(("h2", "Throughput"))
    blocks.append(_throughput_table(rows, groups))
    blocks += fig("throughput")

    blocks.append(("h2", "Per-class test accuracy"))
    per_class = _per_class_table(groups)
    blocks.append(per_class or ("p", "No finished run reported per-class accuracy."))
    blocks += fig("per_class") + fig("confusion")

    blocks.append(("h2", "Framework differences"))
    blocks += _framework_blocks(groups)
    blocks += fig("params")

    blocks.append(("h2", "Failures and skipped runs"))
    failures = _failure_table(results)
    blocks.append(failures or ("p", "None: every run finished."))

    blocks.append(("h2", "What the numbers mean"))
    blocks.append(("ul", NOTES))
    return blocks


# ------------------------------------------------------------------ markdown

def _md_cell(cell: Any) -> str:
    text = "; ".join(cell) if isinstance(cell, list) else str(cell)
    return " ".join(text.split()).replace("|", "\\|") or " "


def _md_table(headers: list[str], rows: list[list], align: str) -> str:
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(_md_cell(h) for h in headers) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(blocks: list[tuple]) -> str:
    """The blocks as GitHub-flavoured markdown (figures are left to the HTML report)."""
    out = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            out.append("#" * int(kind[1]) + " " + block[1])
        elif kind == "p":
            out.append(block[1])
        elif kind == "warn":
            out.append(f"> **WARNING: {block[1]}**")
        elif kind == "ul":
            out.append("\n".join(f"- {item}" for item in block[1]))
        elif kind == "table":
            out.append(_md_table(*block[1:]))
    return "\n\n".join(out) + "\n"


# ---------------------------------------------------------------------- HTML

def _inline_html(text: Any) -> str:
    """Escape ``text``, then render `code` and **bold**."""
    escaped = html.escape(str(text), quote=True)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", escaped)


def _html_cell(cell: Any) -> str:
    if isinstance(cell, list):
        return "<br>".join(_inline_html(line) for line in cell)
    return _inline_html(cell)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", re.sub(r"<[^>]+>", "", text).lower()).strip("-") or "section"


CSS = """
:root { --fg: #1d2330; --muted: #5b6475; --line: #e3e6ec; --bg-alt: #f6f7f9; --accent: #2e86ab; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff;
  font: 15px/1.55 -apple-system, BlinkMacSystemFont, "Segoe UI", "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 32px 28px 64px; }
h1 { font-size: 28px; margin: 0 0 6px; letter-spacing: -0.01em; }
h2 { font-size: 21px; margin: 40px 0 12px; padding-bottom: 6px; border-bottom: 2px solid var(--line); }
h3 { font-size: 16px; margin: 26px 0 8px; font-weight: 600; }
p, li { max-width: 80ch; }
p.lead { color: var(--muted); }
code { font: 0.88em/1.3 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  background: var(--bg-alt); border: 1px solid var(--line); border-radius: 4px; padding: 0 4px; }
nav { margin: 18px 0 8px; font-size: 14px; display: flex; flex-wrap: wrap; gap: 4px 16px; }
nav a { color: var(--accent); text-decoration: none; white-space: nowrap; }
nav a:hover { text-decoration: underline; }
.warn { border: 2px solid #c62828; background: #fdecea; color: #8e1b1b; border-radius: 6px;
  padding: 12px 16px; margin: 16px 0; font-weight: 600; }
.table-wrap { overflow-x: auto; margin: 10px 0 18px; }
table { border-collapse: collapse; font-size: 13.5px; font-variant-numeric: tabular-nums; }
th, td { padding: 6px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { text-align: left; font-weight: 600; background: var(--bg-alt); border-bottom: 2px solid #cfd4dc;
  white-space: nowrap; }
tbody tr:nth-child(even) td { background: #fbfbfc; }
tbody tr:hover td { background: #eef5f9; }
td.r, th.r { text-align: right; white-space: nowrap; }
td:first-child { white-space: nowrap; }
td.lines { font-size: 12.5px; color: #2b3240; }
figure { margin: 18px 0 26px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 6px; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 6px; }
figcaption strong { color: var(--fg); }
"""


def render_html(blocks: list[tuple], title: str) -> str:
    """The blocks as one self-contained HTML page (inline CSS, figures as data URIs)."""
    body = []
    headings = [b[1] for b in blocks if b[0] == "h2"]
    for block in blocks:
        kind = block[0]
        if kind == "h1":
            body.append(f"<h1>{_inline_html(block[1])}</h1>")
        elif kind == "h2":
            body.append(f'<h2 id="{_slug(block[1])}">{_inline_html(block[1])}</h2>')
        elif kind == "h3":
            body.append(f"<h3>{_inline_html(block[1])}</h3>")
        elif kind == "p":
            body.append(f"<p>{_inline_html(block[1])}</p>")
        elif kind == "warn":
            body.append(f'<div class="warn">WARNING: {_inline_html(block[1])}</div>')
        elif kind == "ul":
            body.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in block[1]) + "</ul>")
        elif kind == "table":
            headers, rows, align = block[1], block[2], block[3]
            head = "".join(f'<th class="{"r" if a == "r" else "l"}">{_inline_html(h)}</th>'
                           for h, a in zip(headers, align))
            trs = []
            for row in rows:
                tds = "".join(
                    f'<td class="{"r" if a == "r" else ("lines" if isinstance(c, list) else "l")}">'
                    f"{_html_cell(c)}</td>" for c, a in zip(row, align))
                trs.append(f"<tr>{tds}</tr>")
            body.append(f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead>'
                        f'<tbody>{"".join(trs)}</tbody></table></div>')
        elif kind == "figure":
            _, fig_title, uri, caption = block
            body.append(f'<figure><img src="{uri}" alt="{html.escape(fig_title, quote=True)}">'
                        f"<figcaption><strong>{_inline_html(fig_title)}</strong> · "
                        f"{_inline_html(caption)}</figcaption></figure>")
    nav = "<nav>" + "".join(f'<a href="#{_slug(h)}">{_inline_html(h)}</a>' for h in headings) + "</nav>"
    # the navigation goes after the title and its lead paragraph
    body.insert(2 if len(body) > 1 and body[1].startswith("<p>") else min(len(body), 1), nav)
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
            + "\n".join(body) + "\n</main>\n</body>\n</html>\n")


# --------------------------------------------------------------------- plots

def backend_color(backend: str, index: int = 0) -> str:
    return BACKEND_COLORS.get(backend, _FALLBACK_COLORS[index % len(_FALLBACK_COLORS)])


def _colors(backends: Iterable[str]) -> dict[str, str]:
    others = [b for b in backends if b not in BACKEND_COLORS]
    return {b: backend_color(b, others.index(b) if b in others else 0) for b in backends}


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _style(ax) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.spines[["left", "bottom"]].set_color("#9aa3b2")
    ax.tick_params(colors="#3b4252", labelsize=8.5)
    ax.grid(True, axis="y", color="#e6e9ef", linewidth=0.8)
    ax.set_axisbelow(True)


def _data_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor="white")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    cols = max(1, min(n, max_cols))
    return math.ceil(n / cols), cols


def _rc():
    import matplotlib

    return matplotlib.rc_context({"font.family": "DejaVu Sans", "font.size": 9,
                                  "axes.titlesize": 10, "axes.titleweight": "bold",
                                  "axes.labelsize": 9, "legend.fontsize": 8.5,
                                  "legend.frameon": False})


def _legend(fig, colors: dict[str, str]) -> None:
    from matplotlib.patches import Patch

    fig.legend(handles=[Patch(color=c, label=b) for b, c in colors.items()], loc="outside upper center",
               ncols=max(len(colors), 1))


def _ok_groups(groups: dict) -> dict:
    return {k: [r for r in g if r.get("status") == "ok"] for k, g in groups.items()
            if any(r.get("status") == "ok" for r in g)}


def plot_top1(rows: list[dict]) -> str | None:
    """Test top-1 per backend x recipe, mean with the seed std as error bars."""
    rows = [r for r in rows if r["test_top1_mean"] is not None]
    if not rows:
        return None
    import numpy as np

    recipes = _unique(r["recipe"] for r in rows)
    backends = sorted(_unique(r["backend"] for r in rows), key=stats.backend_sort_key)
    colors = _colors(backends)
    with _rc():
        fig = _new_figure(min(13.0, max(5.0, 3.3 + 0.6 * len(recipes) * len(backends))), 3.4)
        ax = fig.add_subplot()
        _style(ax)
        width = 0.8 / len(backends)
        for bi, b in enumerate(backends):
            xs, ys, es = [], [], []
            for ri, rec in enumerate(recipes):
                row = next((r for r in rows if r["backend"] == b and r["recipe"] == rec), None)
                if row:
                    xs.append(ri - 0.4 + width * (bi + 0.5))
                    ys.append(100 * row["test_top1_mean"])
                    std = row["test_top1_std"]
                    es.append(float("nan") if std is None else 100 * std)  # no bar for one seed
            bars = ax.bar(xs, ys, width * 0.92, yerr=es, color=colors[b], capsize=3,
                          error_kw={"elinewidth": 1, "ecolor": "#333"})
            ax.bar_label(bars, labels=[f"{y:.1f}" for y in ys], padding=2, fontsize=7.5)
        ax.set_xticks(np.arange(len(recipes)), recipes)
        ax.set_xlim(-0.6, len(recipes) - 0.4)
        ax.set_ylabel("test top-1 (%)")
        ax.set_ylim(0, 108)
        _legend(fig, colors)
        return _data_uri(fig)


def _phase_ends(results: list[dict], x_key: str) -> list[tuple[float, str]]:
    """(x of the last point of each phase but the last, name of the next phase) for one result."""
    curve = [p for p in (results[0].get("curves") or []) if isinstance(p, dict)]
    ends = []
    for prev, nxt in zip(curve, curve[1:]):
        if prev.get("phase") != nxt.get("phase"):
            x = stats.finite(prev.get(x_key))
            if x is not None:
                ends.append((x, str(nxt.get("phase_name", nxt.get("phase")))))
    return ends


def plot_curves(groups: dict, x_key: str) -> str | None:
    """Validation top-1 against ``x_key`` (``global_epoch`` or ``images_seen``): one panel per
    recipe, one line per backend (seed mean, band = seed min..max), phase boundaries dashed."""
    ok = _ok_groups(groups)
    curves = {k: stats.curve_mean(g, x_key) for k, g in ok.items()}
    curves = {k: c for k, c in curves.items() if c["x"]}
    if not curves:
        return None
    recipes = _unique(k[1] for k in curves)
    backends = sorted(_unique(k[0] for k in curves), key=stats.backend_sort_key)
    colors = _colors(backends)
    nrows, ncols = _grid(len(recipes))
    with _rc():
        fig = _new_figure(4.3 * ncols + 0.4, 3.1 * nrows + 0.5)
        axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
        for i, rec in enumerate(recipes):
            ax = axes[i // ncols][i % ncols]
            _style(ax)
            ax.set_title(rec)
            for b in backends:
                c = curves.get((b, rec))
                if not c:
                    continue
                y = [100 * v for v in c["mean"]]
                ax.plot(c["x"], y, color=colors[b], marker="o", markersize=3.5, linewidth=1.8)
                if len(c["x"]) > 1 and c["min"] != c["max"]:
                    ax.fill_between(c["x"], [100 * v for v in c["min"]], [100 * v for v in c["max"]],
                                    color=colors[b], alpha=0.14, linewidth=0)
            first = next(g for (b, r), g in ok.items() if r == rec and (b, r) in curves)
            for x, name in _phase_ends(first, x_key):
                ax.axvline(x, color="#7b8494", linestyle="--", linewidth=1)
                ax.annotate(f"→ {name}", (x, 1), xycoords=("data", "axes fraction"),
                            xytext=(3, -10), textcoords="offset points", fontsize=7.5, color="#5b6475")
            ax.set_xlabel("epoch" if x_key == "global_epoch" else "training images seen")
            if i % ncols == 0:
                ax.set_ylabel("validation top-1 (%)")
            ax.set_ylim(0, 105)
            xs = [x for (b, r), c in curves.items() if r == rec for x in c["x"]]
            ax.set_xlim(0, max(xs) * (1.05 if min(xs) != max(xs) else 2))
            if x_key == "global_epoch":
                ax.xaxis.get_major_locator().set_params(integer=True)
        for j in range(len(recipes), nrows * ncols):
            axes[j // ncols][j % ncols].set_visible(False)
        _legend(fig, colors)
        return _data_uri(fig)


def plot_throughput(rows: list[dict]) -> str | None:
    """Train and infer images/s per backend (bars per recipe), p10..p90 as error bars."""
    rows = [r for r in rows if r["train_images_per_second_mean"] is not None
            or r["infer_images_per_second_mean"] is not None]
    if not rows:
        return None
    import numpy as np

    backends = sorted(_unique(r["backend"] for r in rows), key=stats.backend_sort_key)
    recipes = _unique(r["recipe"] for r in rows)
    colors = _colors(backends)
    shades = [float(a) for a in np.linspace(1.0, 0.3, len(recipes))] if len(recipes) > 1 else [1.0]
    with _rc():
        fig = _new_figure(min(13.0, max(7.5, 1.0 + 0.9 * len(backends) * len(recipes))), 3.4)
        axes = fig.subplots(1, 2, squeeze=False)[0]
        width = 0.8 / max(len(recipes), 1)
        for ax, kind in zip(axes, ("train", "infer")):
            _style(ax)
            ax.set_title(f"{kind}: model step, images/s")
            for bi, b in enumerate(backends):
                for ri, rec in enumerate(recipes):
                    row = next((r for r in rows if r["backend"] == b and r["recipe"] == rec), None)
                    mean = row and row[f"{kind}_images_per_second_mean"]
                    if mean is None:
                        continue
                    lo = row[f"{kind}_images_per_second_p10_mean"]
                    hi = row[f"{kind}_images_per_second_p90_mean"]
                    err = [[max(mean - lo, 0) if lo is not None else 0],
                           [max(hi - mean, 0) if hi is not None else 0]]
                    x = bi - 0.4 + width * (ri + 0.5)
                    bar = ax.bar([x], [mean], width * 0.9, color=colors[b],
                                 alpha=shades[ri], yerr=err, capsize=3,
                                 error_kw={"elinewidth": 1, "ecolor": "#333"})
                    ax.bar_label(bar, labels=[f"{mean:,.0f}"], padding=2, fontsize=7)
                    if len(backends) * len(recipes) <= 12:
                        ax.annotate(rec, (x, 0), xytext=(0, 3), textcoords="offset points",
                                    rotation=90, ha="center", va="bottom", fontsize=7.5,
                                    color="white" if shades[ri] > 0.5 else "#1d2330")
            ax.set_xticks(np.arange(len(backends)), backends)
            ax.set_xlim(-0.6, len(backends) - 0.4)
            ax.set_ylabel("images / s (median; bars p10–p90)")
            ax.margins(y=0.15)
        if len(recipes) > 1:
            from matplotlib.patches import Patch

            fig.legend(handles=[Patch(color="#4a5060", alpha=a, label=rec)
                                for rec, a in zip(recipes, shades)],
                       loc="outside upper center", ncols=len(recipes), title="recipe (bar shade)",
                       title_fontsize=8)
        return _data_uri(fig)


def plot_per_class(groups: dict) -> str | None:
    """Test accuracy per class: one panel per recipe, grouped bars per backend."""
    classes, table = _per_class(groups)
    if not table:
        return None
    import numpy as np

    recipes = _unique(k[1] for k in table)
    backends = sorted(_unique(k[0] for k in table), key=stats.backend_sort_key)
    colors = _colors(backends)
    panel = min(13.0, max(4.5, 1.2 + 0.13 * len(classes) * len(backends)))
    nrows, ncols = _grid(len(recipes), 2 if panel <= 6.5 else 1)
    with _rc():
        fig = _new_figure(panel * ncols + 0.4, 3.0 * nrows + 0.6)
        axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
        width = 0.8 / len(backends)
        for i, rec in enumerate(recipes):
            ax = axes[i // ncols][i % ncols]
            _style(ax)
            ax.set_title(rec)
            for bi, b in enumerate(backends):
                acc = table.get((b, rec))
                if not acc:
                    continue
                ys = [100 * (acc[c][0] or 0) for c in classes]
                es = [float("nan") if acc[c][1] is None else 100 * acc[c][1] for c in classes]
                ax.bar(np.arange(len(classes)) - 0.4 + width * (bi + 0.5), ys, width * 0.92,
                       yerr=es, color=colors[b], capsize=2, error_kw={"elinewidth": 0.8})
            ax.set_xticks(np.arange(len(classes)), classes, rotation=30 if len(classes) > 4 else 0,
                          ha="right" if len(classes) > 4 else "center",
                          fontsize=8.5 if len(classes) <= 20 else 6.5)
            ax.set_ylim(0, 110)
            ax.set_xlim(-0.6, len(classes) - 0.4)
            if i % ncols == 0:
                ax.set_ylabel("test accuracy (%)")
        for j in range(len(recipes), nrows * ncols):
            axes[j // ncols][j % ncols].set_visible(False)
        _legend(fig, colors)
        return _data_uri(fig)


def plot_confusion(groups: dict) -> str | None:
    """One small heatmap per backend x recipe (test confusion summed over seeds, rows: true)."""
    import numpy as np

    mats = {}
    for key, group in _ok_groups(groups).items():
        ms = [np.asarray(r["test"]["confusion"], np.float64) for r in group
              if isinstance(stats.lookup(r, ("test", "confusion")), list) and r["test"]["confusion"]]
        ms = [m for m in ms if m.ndim == 2 and m.shape[0] == m.shape[1]]
        if ms and all(m.shape == ms[0].shape for m in ms):
            classes = stats.lookup(group[0], ("data", "classes")) or list(
                (stats.lookup(group[0], ("test", "per_class")) or {}).keys())
            if len(classes) != ms[0].shape[0]:
                classes = [str(i) for i in range(ms[0].shape[0])]
            mats[key] = (sum(ms), classes, len(ms))
    if not mats:
        return None
    recipes = _unique(k[1] for k in mats)
    backends = sorted(_unique(k[0] for k in mats), key=stats.backend_sort_key)
    k = max(m[0].shape[0] for m in mats.values())
    cell = 2.7 if k <= 8 else 3.4
    with _rc():
        fig = _new_figure(cell * len(backends) + 0.6, cell * len(recipes) + 0.3)
        axes = fig.subplots(len(recipes), len(backends), squeeze=False)
        for ri, rec in enumerate(recipes):
            for bi, b in enumerate(backends):
                ax = axes[ri][bi]
                if (b, rec) not in mats:
                    ax.set_visible(False)
                    continue
                m, classes, n = mats[(b, rec)]
                norm = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
                ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
                ax.set_title(f"{b} · {rec}" + (f" ({n} seeds)" if n > 1 else ""), fontsize=8.5)
                size = m.shape[0]
                if size <= 30:
                    ticks = range(size)
                    ax.set_xticks(ticks, classes, rotation=45, ha="right", fontsize=7)
                    ax.set_yticks(ticks, classes, fontsize=7)
                else:
                    ax.set_xticks([])
                    ax.set_yticks([])
                if size <= 12:
                    for (i, j), v in np.ndenumerate(m):
                        if v:
                            ax.text(j, i, f"{int(v)}", ha="center", va="center", fontsize=6.5,
                                    color="white" if norm[i, j] > 0.55 else "#1d2330")
                if bi == 0:
                    ax.set_ylabel("true", fontsize=8)
                if ri == len(recipes) - 1:
                    ax.set_xlabel("predicted", fontsize=8)
        return _data_uri(fig)


def plot_params(groups: dict) -> str | None:
    """Trainable parameters per phase per backend: one panel per recipe."""
    reports = _phase_reports(groups)
    if not reports:
        return None
    import numpy as np

    recipes = sorted(reports, key=stats.recipe_sort_key)
    backends = sorted(_unique(b for rec in reports.values() for ph in rec.values() for b in ph),
                      key=stats.backend_sort_key)
    colors = _colors(backends)
    nrows, ncols = _grid(len(recipes))
    with _rc():
        fig = _new_figure(3.6 * ncols + 0.4, 3.0 * nrows + 0.5)
        axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
        width = 0.8 / len(backends)
        for i, rec in enumerate(recipes):
            ax = axes[i // ncols][i % ncols]
            _style(ax)
            ax.set_title(rec)
            indices = sorted(reports[rec])
            for bi, b in enumerate(backends):
                xs, ys = [], []
                for pi, index in enumerate(indices):
                    p = reports[rec][index].get(b)
                    v = stats.finite(p.get("trainable_params")) if p else None
                    if v is not None:
                        xs.append(pi - 0.4 + width * (bi + 0.5))
                        ys.append(v / 1e6)
                bars = ax.bar(xs, ys, width * 0.92, color=colors[b])
                ax.bar_label(bars, labels=[f"{y:.2f}" if y >= 0.1 else f"{y * 1e3:.1f}k"
                                           for y in ys], padding=2, fontsize=6.5)
            names = [str(next(iter(reports[rec][ix].values())).get("name", ix)) for ix in indices]
            ax.set_xticks(np.arange(len(indices)), [f"{ix + 1}: {n}" for ix, n in zip(indices, names)])
            ax.set_xlim(-0.6, len(indices) - 0.4)
            if i % ncols == 0:
                ax.set_ylabel("trainable parameters (millions)")
            ax.margins(y=0.12)
        for j in range(len(recipes), nrows * ncols):
            axes[j // ncols][j % ncols].set_visible(False)
        _legend(fig, colors)
        return _data_uri(fig)


def make_figures(results: list[dict]) -> dict[str, tuple[str, str]]:
    """Every plot that has data: key -> (title, PNG data URI)."""
    rows = stats.aggregate(results)
    groups = stats.group_results(results)
    made = {
        "top1": ("Test top-1 per backend and recipe (error bars: seed std)", plot_top1(rows)),
        "curves_epoch": ("Validation top-1 per epoch (band: seed min–max; dashed: phase boundary)",
                         plot_curves(groups, "global_epoch")),
        "curves_images": ("Validation top-1 per training images seen", plot_curves(groups, "images_seen")),
        "throughput": ("Throughput of the model step (median images/s; error bars p10–p90)",
                       plot_throughput(rows)),
        "per_class": ("Per-class test accuracy (mean over seeds)", plot_per_class(groups)),
        "confusion": ("Test confusion matrices (rows: true class, columns: predicted; summed over seeds)",
                      plot_confusion(groups)),
        "params": ("Trainable parameters per phase", plot_params(groups)),
    }
    return {k: (title, uri) for k, (title, uri) in made.items() if uri}


# ------------------------------------------------------------------- outputs

CSV_FIELDS = (["backend", "recipe", "status", "n", "n_ok", "n_failed", "n_skipped", "seeds"]
              + [f"{m}_{s}" for m in stats.METRICS for s in ("mean", "std", "n")]
              + ["vs_scratch_top1", "errors"])


def write_summary_csv(rows: list[dict], path: Path) -> None:
    """One line per backend x recipe with every aggregated number (``CSV_FIELDS``)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        out = {k: row.get(k) for k in CSV_FIELDS}
        out["seeds"] = ";".join(str(s) for s in row["seeds"])
        out["errors"] = " | ".join(row["errors"])
        writer.writerow({k: "" if v is None else (f"{v:.6g}" if isinstance(v, float) else v)
                         for k, v in out.items()})
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(buf.getvalue(), encoding="utf-8")
    tmp.replace(path)


def write_report(run_dir: Path) -> dict[str, Path]:
    """Write report.md, report.html, summary.csv and summary.json into ``run_dir``.

    Built only from ``run_dir/*/result.json``; works with failed and skipped
    results, a single backend or seed, missing throughput and None/NaN values.
    Returns ``{"md", "html", "csv", "json"}`` -> path.
    """
    run_dir = Path(run_dir)
    results = read_results(run_dir)
    rows = stats.aggregate(results)
    paths = {"md": run_dir / "report.md", "html": run_dir / "report.html",
             "csv": run_dir / "summary.csv", "json": run_dir / "summary.json"}
    blocks = build_blocks(results, run_dir)
    _write_text(paths["md"], render_markdown(blocks))
    html_blocks = build_blocks(results, run_dir, make_figures(results))
    _write_text(paths["html"], render_html(html_blocks, f"transfer-bench report: {run_dir.name}"))
    write_summary_csv(rows, paths["csv"])
    cond = conditions(results)
    write_json_atomic(paths["json"], {
        "run_dir": str(run_dir), "results": len(results), "rows": rows,
        "within_spread": stats.within_spread(rows), "transfer_gain": stats.transfer_gain(rows),
        "conditions": cond})
    return paths


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


# ------------------------------------------------------------ terminal table

def summary_table(results: list[dict], reason_width: int = 48) -> str:
    """A fixed-width table for the terminal: one line per backend x recipe.

    Columns: backend, recipe, seeds, test top-1 % (mean ± std over seeds),
    vs scratch (pp), wall time, train img/s, infer img/s, status; a failed or
    skipped row shows its reason cut to ``reason_width`` characters.
    """
    rows = stats.aggregate(results)
    headers = ["backend", "recipe", "seeds", "test top1 %", "vs scratch", "wall", "train img/s",
               "infer img/s", "status"]
    right = {2, 3, 4, 5, 6, 7}
    lines = []
    for r in rows:
        status = r["status"]
        if r["errors"]:
            reason = r["errors"][0].split(": ", 1)[-1] if r["n_ok"] == 0 else r["errors"][0]
            status = f"{status}: {truncate(reason, reason_width)}"
        lines.append([r["backend"], r["recipe"], str(r["n_ok"]) if r["n_ok"] else "-",
                      fmt_pct(r["test_top1_mean"], r["test_top1_std"]), fmt_pp(r["vs_scratch_top1"]),
                      fmt_seconds(r["wall_seconds_mean"]), fmt_rate(r["train_images_per_second_mean"]),
                      fmt_rate(r["infer_images_per_second_mean"]), status])
    if not lines:
        return "no results"
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(headers)]

    def fmt(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(headers), rule] + [fmt(line) for line in lines])


# ------------------------------------------------------------------- compare

def _delta_pct(a: float | None, b: float | None) -> str:
    if a is None or b is None or a == 0:
        return DASH
    return f"{100 * (b - a) / a:+.1f}%"


def compare(run_a: Path, run_b: Path) -> str:
    """Markdown: two run directories side by side per backend x recipe.

    Columns A, B and the change from A to B of test top-1 (pp), wall time,
    train and infer images/s (relative, %), and both statuses; a row missing
    on one side shows ``—``. A warning line leads when the runs used different
    split digests, models, image sizes or precisions.
    """
    run_a, run_b = Path(run_a), Path(run_b)
    results_a, results_b = read_results(run_a), read_results(run_b)
    rows_a = {(r["backend"], r["recipe"]): r for r in stats.aggregate(results_a)}
    rows_b = {(r["backend"], r["recipe"]): r for r in stats.aggregate(results_b)}
    keys = sorted(set(rows_a) | set(rows_b),
                  key=lambda k: (stats.recipe_sort_key(k[1]), stats.backend_sort_key(k[0])))
    cond_a, cond_b = conditions(results_a), conditions(results_b)
    out = [f"## Comparison: A = `{run_a.name}`, B = `{run_b.name}`", ""]
    for key, label in (("split_digests", "split digests"), ("models", "models"),
                       ("image_sizes", "image sizes"), ("precisions", "precisions"),
                       ("batch_sizes", "batch sizes")):
        va, vb = sorted(map(str, cond_a[key])), sorted(map(str, cond_b[key]))
        if va and vb and va != vb:
            out.append(f"> **WARNING: the runs differ in {label}: A {', '.join(va)}; "
                       f"B {', '.join(vb)}**")
            out.append("")
    for w in cond_a["warnings"] + cond_b["warnings"]:
        out.append(f"> **WARNING (within a run): {w}**")
        out.append("")
    headers = ["backend", "recipe", "top-1 A (%)", "top-1 B (%)", "Δ top-1", "wall A", "wall B",
               "Δ wall", "train img/s A", "train img/s B", "Δ train", "infer img/s A",
               "infer img/s B", "Δ infer", "status A", "status B"]
    body = []
    empty: dict[str, Any] = {f"{m}_{s}": None for m in stats.METRICS for s in ("mean", "std")}
    for key in keys:
        a = rows_a.get(key, {**empty, "status": "absent", "errors": [], "n_ok": 0})
        b = rows_b.get(key, {**empty, "status": "absent", "errors": [], "n_ok": 0})
        ta, tb = a["test_top1_mean"], b["test_top1_mean"]

        def status(r: dict) -> str:
            return r["status"] + (f": {truncate(r['errors'][0].split(': ', 1)[-1], 40)}"
                                  if r["errors"] and r["n_ok"] == 0 else "")

        body.append([key[0], f"`{key[1]}`", fmt_pct(ta, a["test_top1_std"]), fmt_pct(tb, b["test_top1_std"]),
                     fmt_pp(tb - ta if ta is not None and tb is not None else None),
                     fmt_seconds(a["wall_seconds_mean"]), fmt_seconds(b["wall_seconds_mean"]),
                     _delta_pct(a["wall_seconds_mean"], b["wall_seconds_mean"]),
                     fmt_rate(a["train_images_per_second_mean"]), fmt_rate(b["train_images_per_second_mean"]),
                     _delta_pct(a["train_images_per_second_mean"], b["train_images_per_second_mean"]),
                     fmt_rate(a["infer_images_per_second_mean"]), fmt_rate(b["infer_images_per_second_mean"]),
                     _delta_pct(a["infer_images_per_second_mean"], b["infer_images_per_second_mean"]),
                     status(a), status(b)])
    out.append(_md_table(headers, body, "llrrrrrrrrrrrrll"))
    out.append("")
    out.append(f"Δ is B − A: top-1 in percentage points, times and images/s relative to A. "
               f"A: {condition_line(cond_a)}. B: {condition_line(cond_b)}.")
    return "\n".join(out) + "\n"
