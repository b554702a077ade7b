"""Reports built only from the ``result.json`` files of a run directory.

``write_report(run_dir)`` writes report.md, report.html (one self-contained page, matplotlib plots as PNG data
URIs), summary.csv and summary.json; ``summary_table`` is the terminal table after a sweep (rich); ``compare``
puts two run directories side by side. Every number comes from ``benchmarks.stats`` (one pandas table of runs);
this module shapes it for the jinja2 templates in ``benchmarks/templates/``, which hold the layout and the words
(report.j2, compare.j2, conditions.j2; the macros of markdown.j2 or html.j2 write them). No framework imported.
"""

from __future__ import annotations

import base64
import io
import math
import re
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
from jinja2 import Environment, FileSystemLoader
from markupsafe import Markup, escape

from backends.base import BackendError, BackendInfo, backend_info
from benchmarks import stats
from common.results import SCHEMA_VERSION, RunResults, load_results, write_json_atomic, write_text_atomic

DASH, NOT_AVAILABLE = "—", "not available"
_PALETTE = ("#8e6bbf", "#c9a227", "#6b7a8f", "#d16ba5", "#17becf", "#8c564b")
_NO_COLOR = BackendInfo.color  # the default: the backend set none
_num = stats.finite


def fmt_pct(mean: Any, std: Any = None) -> str:
    """A fraction as a percentage, ``84.2 ± 1.2``; ``—`` when missing."""
    m, s = _num(mean), _num(std)
    return DASH if m is None else f"{100 * m:.1f}" + (f" ± {100 * s:.1f}" if s is not None else "")


def fmt_pp(delta: Any) -> str:
    return DASH if _num(delta) is None else f"{100 * delta:+.1f} pp"


def fmt_rate(mean: Any, std: Any = None) -> str:
    m, s = _num(mean), _num(std)
    return DASH if m is None else f"{m:,.1f}" + (f" ± {s:.1f}" if s is not None else "")


def fmt_seconds(seconds: Any, std: Any = None) -> str:
    """A duration, ``2m 51s`` or ``41.7 s`` (``± 5 s`` with a spread)."""
    t, s = _num(seconds), _num(std)
    if t is None:
        return DASH
    text = (f"{t:.1f} s" if t < 100 else f"{int(t // 60)}m {int(round(t % 60)):02d}s" if t < 3600
            else f"{int(t // 3600)}h {int(t % 3600 // 60):02d}m")
    return text + (f" ± {s:.0f} s" if s is not None else "")


def fmt_bytes(n: Any) -> str:
    v = _num(n)
    if not v:
        return DASH
    power = min(int(math.log(v, 1024)), 4)
    return f"{v:.0f} B" if power == 0 else f"{v / 1024 ** power:.1f} {('KiB', 'MiB', 'GiB', 'TiB')[power - 1]}"


def fmt_value(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}" if math.isfinite(value) else DASH
    return DASH if value is None else str(value)


def _join(items: Iterable[Any], limit: int = 6) -> str:
    items = [fmt_value(i) for i in items]
    return ", ".join(items[:limit]) + (f", … (+{len(items) - limit} more)" if len(items) > limit else "")


def _unique(values: Iterable[Any]) -> list:
    return list(dict.fromkeys(v for v in values if v is not None and v == v))


def _status(row: dict, width: int) -> str:
    """A row's status with its first error (without the seed when no seed finished)."""
    if not row["errors"]:
        return row["status"]
    first = " ".join((row["errors"][0].split(": ", 1)[-1] if row["n_ok"] == 0 else row["errors"][0]).split())
    return f"{row['status']}: {first if len(first) <= width else first[:width - 1] + '…'}"


def backend_colors(backends: Iterable[str]) -> dict[str, str]:
    """Each backend's ``BackendInfo.color``; a palette colour for plug-ins that set none."""
    out, spare = {}, iter(_PALETTE * 4)
    for b in backends:
        try:
            color = backend_info(b).color
        except BackendError:
            color = _NO_COLOR
        out[b] = next(spare) if color == _NO_COLOR else color
    return out


# ------------------------------------------------------------- the report's data

#: condition -> its ``stats.runs_frame`` column: the Conditions table, the warnings, `bench compare`
CONDITIONS = {"model": "model", "image size": "image_size", "batch size": "batch_size",
              "precision": "precision", "timed steps (throughput)": "throughput_steps", "seeds": "seed",
              "data source": "data_source", "split digest": "split_digest", "initial weights": "weights_kind",
              "weights digest": "weights_digest", "recipe phases / epochs": "phases",
              "training-step fidelity": "fidelity",
              "framework versions": "versions", "device": "device"}


def conditions(df: pd.DataFrame) -> dict:
    """What the runs were measured under: the distinct values of every ``CONDITIONS`` entry (over the ok
    runs), ``classes``, ``counts`` (images per split), ``digests`` (split digest -> runs), ``environment``
    (backend -> (device, versions)); ``conditions.j2`` words their warnings and the caption of every figure."""
    pool = df[df.status == "ok"] if (df.status == "ok").any() else df
    results = list(pool.result)
    out = {label: _unique((df if col == "seed" else pool)[col]) for label, col in CONDITIONS.items()}
    counts = next((c for r in results if isinstance(c := stats.lookup(r, ("data", "counts")), dict)), {})
    out.update(seeds=sorted(out["seeds"]),
               classes=next((c for r in results if (c := stats.lookup(r, ("data", "classes")))), []),
               counts={k: sum(v.values()) if isinstance(v, dict) else v for k, v in counts.items()},
               digests={d: list(g.name) for d, g in df.groupby("split_digest", sort=False)},
               environment={b: next((stats.device_text(r.device), r.versions or {})
                                    for r in results if r.backend == b) for b in _unique(pool.backend)})
    return out


def starting_weights(df: pd.DataFrame) -> list[dict]:
    """Per recipe with finished runs: ``random`` (every run started from random weights), ``known`` (a record per
    backend and weights digest), ``missing`` (the backends that recorded no digest), ``unproven`` (a record per
    backend without a digest, with weights_conversion: why) and ``differ`` (not all started from the same weights).
    Weights are told apart by their digest, else by who made them (kind and source backend): two backends that
    each pretrained their own source model, or each loaded their own ImageNet file, started from different ones."""
    out = []
    for recipe, g in df[df.status == "ok"].groupby("recipe", sort=False):
        runs = g.drop_duplicates(["backend", "weights_digest"])
        known = runs[runs.weights_digest.notna()]
        trained = runs[runs.weights_kind != "none"]
        identities = {d if isinstance(d, str) else (k, s) for d, k, s in
                      zip(trained.weights_digest, trained.weights_kind, trained.weights_source)
                      if isinstance(d, str) or s is not None}
        unproven = trained[trained.weights_digest.isna()]
        out.append({"recipe": recipe, "random": set(runs.weights_kind) == {"none"},
                    "known": stats.records(known[["backend", "weights_digest", "weights_kind", "weights_source"]]),
                    "missing": _unique(runs.backend[runs.weights_digest.isna()]),
                    "unproven": stats.records(unproven[["backend", "weights_kind", "weights_source",
                                                        "weights_conversion"]].drop_duplicates("backend")),
                    "differ": len(identities) > 1})
    return out


def per_class_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Test accuracy per class (rows) and (backend, recipe) (columns), ``mean`` and ``std`` over seeds."""
    rows = [{"backend": r.backend, "recipe": r.recipe, "class": c, "acc": _num(a)}
            for r in df[df.status == "ok"].result for c, a in (stats.lookup(r, ("test", "per_class")) or {}).items()]
    if not rows:
        return pd.DataFrame()
    return (pd.DataFrame(rows).astype({"acc": float}).groupby(["class", "backend", "recipe"], sort=False)
            .acc.agg(["mean", "std"]).unstack(["backend", "recipe"]))


def phase_reports(df: pd.DataFrame) -> dict[str, dict[int, dict[str, dict]]]:
    """recipe -> phase index -> backend -> phase report (of the first ok seed), in report order."""
    out: dict = {}
    for r in df[df.status == "ok"].drop_duplicates(["backend", "recipe"]).result:
        for i, phase in enumerate(p for p in r.phases or [] if isinstance(p, dict)):
            out.setdefault(r.recipe, {}).setdefault(int(phase.get("index", i)), {})[r.backend] = phase
    return {recipe: {i: dict(sorted(per.items(), key=lambda kv: stats.backend_sort_key(kv[0])))
                     for i, per in sorted(out[recipe].items())} for recipe in sorted(out, key=stats.recipe_sort_key)}


def describe_native(native: Any) -> list[str]:
    """How a framework expressed a phase, as short lines (``**key**: value``; param groups one line each)."""
    if not isinstance(native, dict) or not native:
        return [fmt_value(native) if native else DASH]
    lines = []
    for key, value in native.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            lines += [f"**{key}[{i}]**: " + ", ".join(f"{k}={_join(v, 4) if isinstance(v, list) else fmt_value(v)}"
                                                      for k, v in item.items()) for i, item in enumerate(value)]
        elif isinstance(value, dict):
            lines.append(f"**{key}**: " + ", ".join(f"{k}={fmt_value(v)}" for k, v in value.items()))
        else:
            lines.append(f"**{key}**: " + ((_join(value) or "(none)") if isinstance(value, list) else fmt_value(value)))
    return lines


def timed_steps(df: pd.DataFrame) -> list[dict]:
    """What the finished runs' throughput timed (``throughput.timed_step``): one entry per
    distinct wording, with the backends that recorded it (``step`` None: a result from before
    the field existed)."""
    steps: dict = {}
    for r in df[df.status == "ok"].itertuples():
        step = stats.lookup(r.result, ("throughput", "timed_step"))
        steps.setdefault(step, []).append(r.backend)
    return [{"step": step, "backends": stats.ordered_backends(dict.fromkeys(backends))}
            for step, backends in steps.items()]


def cited_measurements(df: pd.DataFrame) -> list[dict]:
    """The throughput measurements other runs cite (``throughput.measured_in``): one entry per
    measuring run, with the runs that cite it."""
    cited: dict = {}
    for r in df[df.status == "ok"].itertuples():
        source = stats.lookup(r.result, ("throughput", "measured_in"))
        if source:
            cited.setdefault(source, []).append(r.name)
    return [{"run": source, "citing": names} for source, names in cited.items()]


def report_context(run: RunResults, run_dir: Path, figures: dict[str, str]) -> dict:
    """Everything ``templates/report.j2`` shows; ``figures``: key -> PNG data URI."""
    df = stats.runs_frame(run.results)
    agg, cond, per_class = stats.aggregate(df), conditions(df), per_class_frame(df)
    classes = list(per_class.get("mean", pd.DataFrame()).columns)
    return {
        "df": df, "agg": agg,
        "title": f"transfer-bench report: {Path(run_dir).name}", "run_dir": str(run_dir), "figures": figures,
        "generated": time.strftime("%Y-%m-%d %H:%M"), "cond": cond, "weights": starting_weights(df),
        "n": {"total": len(df), **{s: int((df.status == s).sum()) for s in ("ok", "failed", "skipped")}},
        "versions": _unique(k for _, versions in cond["environment"].values() for k in versions),
        "rows": stats.records(agg), "top5": bool(agg.test_top5_mean.notna().any()),  # NaN for <= 5 classes
        # the sweep's shared source model, pretrained by the first run that needed it: once
        "pretraining": [{"run": r.name or f"{r.backend}-{r.recipe}-s{r.seed}",
                         "seconds": r.source_pretrain_seconds}
                        for r in df.itertuples() if (r.source_pretrain_seconds or 0) > 0],
        "intervals": stats.records(stats.accuracy_intervals(df)), "pairs": stats.paired_tests(df),
        "verdicts": (verdicts := stats.framework_tests(df)), "framework_test": stats.FRAMEWORK_TEST,
        "alignment": stats.alignment(df, verdicts),
        "gains": stats.transfer_gain(agg), "timed_steps": timed_steps(df),
        "cited": cited_measurements(df),
        "per_class": {"head": ["class"] + [f"{b} `{r}`" for b, r in classes],
                      "rows": [[c] + [fmt_pct(per_class["mean"].loc[c, k], per_class["std"].loc[c, k])
                                      for k in classes] for c in per_class.index]},
        "phases": phase_reports(df), "failures": stats.records(df[df.status != "ok"]),
        "unreadable": run.unreadable, "lacking": run.lacking, "schema": SCHEMA_VERSION, "alpha": stats.ALPHA,
        "level": f"{100 * stats.INTERVAL_LEVEL:g} %"}


# --------------------------------------------------------------------- plots

STYLE = {"font.family": "DejaVu Sans", "font.size": 9, "axes.titlesize": 10, "axes.titleweight": "bold",
         "legend.frameon": False, "axes.spines.top": False, "axes.spines.right": False, "axes.axisbelow": True,
         "axes.grid": True, "axes.grid.axis": "y", "grid.color": "#e6e9ef", "xtick.labelsize": 8.5}


def figure_grid(n: int, cols: int, width: float, height: float, **kw):
    """A figure of ``n`` panels, ``cols`` a row, each ``width`` x ``height`` inches; unused panels hidden."""
    from matplotlib.figure import Figure

    cols = max(1, min(n, cols))
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(width * cols + 0.4, height * rows + 0.5), dpi=110, layout="constrained")
    axes = list(fig.subplots(rows, cols, squeeze=False, **kw).flat)
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes


def png_bytes(fig, colors: dict[str, str] | None = None) -> bytes:
    """The figure as PNG bytes (with a legend of the backends' colours)."""
    if colors:
        from matplotlib.patches import Patch

        fig.legend(handles=[Patch(color=c, label=b) for b, c in colors.items()], loc="outside upper center",
                   ncols=len(colors))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor="white")
    return buf.getvalue()


def png_uri(fig, colors: dict[str, str] | None = None) -> str:
    """The figure as a PNG data URI, for the self-contained HTML report."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(fig, colors)).decode("ascii")


def bar_panels(panels: dict[str, tuple], ylabel: str, label=None, cols: int = 3, width: float = 3.6,
               ylim: tuple | None = None) -> str:
    """Grouped bars, a panel per ``title: (values, err)``: a group per row of ``values``, a bar per column (a
    backend, in its colour); ``err``: a frame like ``values`` (symmetric), a (below, above) pair or None."""
    colors = backend_colors(stats.ordered_backends(c for values, _ in panels.values() for c in values.columns))
    fig, axes = figure_grid(len(panels), cols, width, 3.0, sharey=ylim is not None)
    for ax, (title, (values, err)) in zip(axes, panels.items()):
        values, step, x = values.reindex(columns=list(colors)), 0.8 / len(colors), np.arange(len(values.index))
        for i, col in enumerate(values.columns):
            e = None if err is None else err[col] if isinstance(err, pd.DataFrame) else [err[0][col], err[1][col]]
            bars = ax.bar(x - 0.4 + step * (i + 0.5), values[col].to_numpy(float), step * 0.92, color=colors[col],
                          yerr=None if e is None else np.asarray(e, float), capsize=3, error_kw={"elinewidth": 1})
            ax.bar_label(bars, labels=[label(v) if label and v == v else "" for v in values[col]], padding=2,
                         fontsize=7)
        ax.set_xticks(x, [str(i) for i in values.index], rotation=30 * (len(x) > 4),
                      ha="right" if len(x) > 4 else "center")
        ax.set(title=title, ylabel=ylabel, xlim=(-0.6, len(x) - 0.4), **({"ylim": ylim} if ylim else {}))
        ax.margins(y=0.15)
    return png_uri(fig, colors)


def _pivot(agg: pd.DataFrame, column: str, scale: float = 1.0) -> pd.DataFrame:
    return scale * agg.pivot(index="recipe", columns="backend", values=column).reindex(index=_unique(agg.recipe))


def plot_top1(agg: pd.DataFrame) -> str | None:
    """Test top-1 per recipe and backend, seed std as error bars."""
    done = agg[agg.test_top1_mean.notna()]
    return bar_panels({"": (_pivot(done, "test_top1_mean", 100), _pivot(done, "test_top1_std", 100))},
                      "test top-1 (%)", lambda v: f"{v:.1f}", width=min(12.6, 2.9 + 0.6 * len(done)),
                      ylim=(0, 108)) if len(done) else None


def plot_throughput(agg: pd.DataFrame) -> str | None:
    """Train and infer images/s (model step) per recipe and backend; p10..p90 as error bars."""
    done = agg[agg.train_images_per_second_mean.notna() | agg.infer_images_per_second_mean.notna()]
    panels = {}
    for kind in ("train", "infer"):
        m, lo, hi = (_pivot(done, f"{kind}_images_per_second{q}_mean") for q in ("", "_p10", "_p90"))
        panels[f"{kind}: model step, images/s"] = (m, ((m - lo).clip(lower=0).fillna(0),
                                                       (hi - m).clip(lower=0).fillna(0)))
    return bar_panels(panels, "images / s (median; bars p10–p90)", lambda v: f"{v:,.0f}", cols=2,
                      width=min(6.3, max(3.6, 0.45 * len(done)))) if len(done) else None


def plot_per_class(df: pd.DataFrame) -> str | None:
    """Per-class test accuracy (mean over seeds, std as error bars): a panel per recipe, bars per backend."""
    table = per_class_frame(df)
    if table.empty:
        return None
    width = min(13.0, max(4.5, 1.2 + 0.13 * len(table) * table["mean"].columns.levels[0].size))
    return bar_panels({recipe: tuple(100 * table[s].xs(recipe, axis=1, level="recipe") for s in ("mean", "std"))
                       for recipe in _unique(r for _, r in table["mean"])},
                      "test accuracy (%)", cols=2 if width <= 6.5 else 1, width=width, ylim=(0, 110))


def plot_params(df: pd.DataFrame) -> str | None:
    """Trainable parameters per phase (millions), bars per backend: a panel per recipe."""
    panels = {recipe: (pd.DataFrame({f"{i + 1}: {next(iter(per.values())).get('name', i)}":
                                     {b: (_num(p.get("trainable_params")) or np.nan) / 1e6 for b, p in per.items()}
                                     for i, per in phases.items()}).T, None)
              for recipe, phases in phase_reports(df).items()}
    return bar_panels(panels, "trainable parameters (millions)",
                      lambda y: f"{y:.2f}" if y >= 0.1 else f"{y * 1e3:.1f}k") if panels else None


def plot_curves(df: pd.DataFrame, x: str) -> str | None:
    """Validation top-1 against ``x`` (``global_epoch`` or ``images_seen``): a panel per recipe, a line per
    backend (seed mean; band: seed min..max), phase boundaries dashed."""
    curves = stats.curves_frame(df)
    mean = stats.curve_mean(curves, x)
    if mean.empty:
        return None
    colors, recipes = backend_colors(stats.ordered_backends(mean.backend)), _unique(mean.recipe)
    fig, axes = figure_grid(len(recipes), 3, 4.3, 3.1, sharey=True)
    for ax, recipe in zip(axes, recipes):
        for b, c in mean[mean.recipe == recipe].groupby("backend", sort=False):
            ax.plot(c.x, 100 * c["mean"], color=colors[b], marker="o", markersize=3.5, linewidth=1.8)
            ax.fill_between(c.x, 100 * c["min"], 100 * c["max"], color=colors[b], alpha=0.14, linewidth=0)
        one = curves[curves.recipe == recipe]
        one = one[(one.backend == one.backend.iloc[0]) & (one.seed == one.seed.iloc[0])]
        for (_, prev), (_, nxt) in zip(one.iloc[:-1].iterrows(), one.iloc[1:].iterrows()):
            if prev.phase != nxt.phase and prev[x] == prev[x]:
                ax.axvline(prev[x], color="#7b8494", linestyle="--", linewidth=1)
                ax.annotate(f"→ {nxt.phase_name}", (prev[x], 1), xycoords=("data", "axes fraction"),
                            xytext=(3, -10), textcoords="offset points", fontsize=7.5, color="#5b6475")
        ax.set(title=recipe, ylim=(0, 105), ylabel="validation top-1 (%)",
               xlabel="epoch" if x == "global_epoch" else "training images seen")
    return png_uri(fig, colors)


def plot_confusion(df: pd.DataFrame) -> str | None:
    """A heatmap per recipe x backend: test confusion summed over seeds (rows: true class)."""
    mats = {}
    for (recipe, backend), g in df[df.status == "ok"].groupby(["recipe", "backend"], sort=False):
        ms = [np.asarray(c, float) for c in (stats.lookup(r, ("test", "confusion")) for r in g.result) if c]
        if ms and all(m.ndim == 2 and m.shape == ms[0].shape for m in ms):
            classes = stats.lookup(g.result.iloc[0], ("data", "classes")) or []
            mats[(recipe, backend)] = (sum(ms), len(ms), classes if len(classes) == len(ms[0]) else range(len(ms[0])))
    if not mats:
        return None
    recipes, backends = _unique(k[0] for k in mats), stats.ordered_backends(k[1] for k in mats)
    cell = 2.7 if max(len(m) for m, _, _ in mats.values()) <= 8 else 3.4
    fig, axes = figure_grid(len(recipes) * len(backends), len(backends), cell, cell)
    for ax, key in zip(axes, [(r, b) for r in recipes for b in backends]):
        if key not in mats:
            ax.set_visible(False)
            continue
        m, n, classes = mats[key]
        norm = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        ticks, names = (range(len(m)), [str(c) for c in classes]) if len(m) <= 30 else ([], [])
        ax.set_xticks(ticks, names, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(ticks, names, fontsize=7)
        ax.set(title=f"{key[1]} · {key[0]}" + f" ({n} seeds)" * (n > 1), xlabel="predicted", ylabel="true")
        ax.grid(False)
        for i, j in zip(*np.nonzero(m)) if len(m) <= 12 else []:
            ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=6.5,
                    color="white" if norm[i, j] > 0.55 else "#1d2330")
    return png_uri(fig)


def make_figures(df: pd.DataFrame) -> dict[str, str]:
    """Every plot that has data: key -> PNG data URI (``report.j2`` titles them)."""
    import matplotlib

    agg = stats.aggregate(df)
    with matplotlib.rc_context(STYLE):
        made = {"top1": plot_top1(agg), "curves_epoch": plot_curves(df, "global_epoch"),
                "curves_images": plot_curves(df, "images_seen"), "throughput": plot_throughput(agg),
                "per_class": plot_per_class(df), "confusion": plot_confusion(df), "params": plot_params(df)}
    return {k: uri for k, uri in made.items() if uri}


# ---------------------------------------------------------- outputs and bench compare

def _inline_html(text: Any) -> Markup:
    """``text`` escaped (unless it is markup already), then `code` and **bold** marked up."""
    html = re.sub(r"`([^`]+)`", r"<code>\1</code>", str(text if isinstance(text, Markup) else escape(str(text))))
    return Markup(re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", html))


FILTERS = {
    "pct": fmt_pct, "pp": fmt_pp, "rate": fmt_rate, "seconds": fmt_seconds, "bytes": fmt_bytes, "value": fmt_value,
    "count": lambda n: DASH if _num(n) is None else f"{int(n):,}", "status": _status, "native": describe_native,
    "pvalue": lambda p: NOT_AVAILABLE if p is None else "< 0.001" if p < 0.001 else f"{p:.3f}",
    "p_is": lambda p, name="p": f"{name} " + (NOT_AVAILABLE if p is None else "< 0.001" if p < 0.001 else f"= {p:.3f}"),
    "inline": _inline_html, "code": lambda v: f"`{v}`",
    "joined": lambda values, suffix="", limit=6: _join([f"{v}{suffix}" for v in values], limit) or DASH,
    "oneline": lambda v: " ".join(str(v or DASH).split()), "extract": lambda key, d: d.get(key),
    "slug": lambda v: re.sub(r"[^a-z0-9]+", "-", str(v).lower()).strip("-"),
    "minus": lambda b, a: b - a if None not in (_num(a), _num(b)) else None,
    "relative": lambda a, b: DASH if None in (_num(a), _num(b)) or a == 0 else f"{100 * (b - a) / a:+.1f}%",
    "md_cell": lambda c: " ".join(("; ".join(c) if isinstance(c, list) else str(c)).split()).replace("|", "\\|")
    or " ",
}
TEMPLATES = {fmt: Environment(loader=FileSystemLoader(Path(__file__).with_name("templates")), trim_blocks=True,
                              lstrip_blocks=True, autoescape=fmt == "html") for fmt in ("markdown", "html")}
for _env in TEMPLATES.values():
    _env.filters.update(FILTERS)
    _env.tests["finite"] = lambda v: _num(v) is not None


def render(template: str, fmt: str, **context: Any) -> str:
    """``templates/<template>`` written with the macros of ``templates/<fmt>.j2`` (``markdown``, ``html``)."""
    text = TEMPLATES[fmt].get_template(template).render(format=f"{fmt}.j2", **context)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


#: summary.json key -> the report context's entry
SUMMARY_JSON = {"rows": "rows", "conditions": "cond", "framework_test": "framework_test",
                "framework_verdicts": "verdicts", "transfer_gain": "gains", "paired_tests": "pairs",
                "accuracy_intervals": "intervals", "starting_weights": "weights"}
CSV_FIELDS = (["backend", "recipe", "status", "n", "n_ok", "n_failed", "n_skipped", "seeds"]
              + [f"{m}_{s}" for m in stats.METRICS for s in ("mean", "std", "n")] + ["vs_scratch_top1", "errors"])


REPORT_FILES = ("report.md", "report.html", "summary.csv", "summary.json")


def report_write_problem(run_dir: Path) -> str | None:
    """Why ``write_report`` cannot write into ``run_dir``, or None: a read-only or immutable
    folder (``common.paths.write_problem``), or one of ``REPORT_FILES`` that is a folder or
    another special file; checked before anything is written."""
    from common.paths import kind_of, write_problem

    problem = write_problem(run_dir)
    if problem:
        return f"{run_dir} is not writable ({problem})"
    for name in REPORT_FILES:
        kind = kind_of(Path(run_dir) / name)
        if kind not in (None, "a file"):
            return f"{Path(run_dir) / name} is {kind}, not a file; move it away"
    return None


def write_report(run_dir: Path, plots: bool = True) -> dict[str, Path]:
    """Write report.md, report.html (with plots unless ``plots`` is False), summary.csv and summary.json into
    ``run_dir`` from its result files, whatever they hold (unreadable ones listed); returns {md, html, csv, json}."""
    run_dir = Path(run_dir)
    run = load_results(run_dir)
    paths = {k: run_dir / f"{stem}.{k}" for k, stem in (("md", "report"), ("html", "report"),
                                                        ("csv", "summary"), ("json", "summary"))}
    ctx = report_context(run, run_dir, {})
    write_text_atomic(paths["md"], render("report.j2", "markdown", **ctx))
    figures = make_figures(ctx["df"]) if plots else {}
    write_text_atomic(paths["html"], render("report.j2", "html", **{**ctx, "figures": figures}))
    agg = ctx["agg"]
    table = agg.reindex(columns=CSV_FIELDS).assign(seeds=[";".join(map(str, s)) for s in agg.seeds],
                                                   errors=[" | ".join(e) for e in agg.errors])
    write_text_atomic(paths["csv"], table.to_csv(index=False, float_format="%.6g", lineterminator="\n"))
    write_json_atomic(paths["json"], {"run_dir": str(run_dir), "results": len(ctx["df"]),
                                      **{key: ctx[name] for key, name in SUMMARY_JSON.items()},
                                      "lacking": {r.path: r.lacks for r in run.lacking},
                                      "unreadable": [{"path": u.path, "reason": u.reason} for u in run.unreadable]})
    return paths


def summary_table(results: Iterable, reason_width: int = 48) -> str:
    """The terminal table after a sweep (rich): a line per backend x recipe with test top-1 (mean ± std over
    seeds), vs scratch, wall time, train/infer img/s and the status (its first error cut to ``reason_width``)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    agg = stats.aggregate(stats.runs_frame(results))
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="")
    for i, head in enumerate(["backend", "recipe", "seeds", "test top1 %", "vs scratch", "wall", "train img/s",
                              "infer img/s", "status"]):
        table.add_column(head, justify="right" if 2 <= i < 8 else "left", no_wrap=True)
    for r in stats.records(agg):
        table.add_row(r["backend"], r["recipe"], str(r["n_ok"]) if r["n_ok"] else "-",
                      fmt_pct(r["test_top1_mean"], r["test_top1_std"]), fmt_pp(r["vs_scratch_top1"]),
                      fmt_seconds(r["wall_seconds_mean"]), fmt_rate(r["train_images_per_second_mean"]),
                      fmt_rate(r["infer_images_per_second_mean"]), _status(r, reason_width))
    console = Console(file=io.StringIO(), width=10_000, color_system=None)
    console.print(table)
    lines = [line.rstrip() for line in console.file.getvalue().splitlines() if line.strip()]
    return "\n".join(lines) if len(agg) else "no results"


def unreadable_lines(run: RunResults) -> list[str]:
    """One terminal line per unreadable result file and per older file that lacks fields."""
    return ([f"unreadable result, left out: {u.path}: {u.reason}" for u in run.unreadable]
            + [f"older result (schema {r.schema_version}), shown without {', '.join(r.lacks)}: {r.path}"
               for r in run.lacking])


def compared_conditions(a: pd.DataFrame, b: pd.DataFrame) -> list[tuple[str, list, list]]:
    """(condition, A's values, B's values) for every condition that differs between two runs and changes the
    meaning of a delta, compared over the backends and recipes both runs have (over all when they share none)."""
    def shared(df: pd.DataFrame) -> pd.DataFrame:
        both = df[df.backend.isin(set(a.backend) & set(b.backend)) & df.recipe.isin(set(a.recipe) & set(b.recipe))]
        return both if len(both) else df

    ca, cb = conditions(shared(a)), conditions(shared(b))
    return [(key, ca[key], cb[key]) for key in CONDITIONS
            if key != "data source" and sorted(map(str, ca[key])) != sorted(map(str, cb[key]))]


def compare(run_a: Path, run_b: Path) -> str:
    """Markdown: two run directories side by side per backend x recipe (top-1, wall, img/s, B − A, statuses;
    ``absent`` where a side lacks the row) after the conditions that differ; then every framework verdict and
    every per-run McNemar statement that flipped between them; then unreadable or older files."""
    runs = {"A": load_results(run_a), "B": load_results(run_b)}
    dfs = {side: stats.runs_frame(run.results) for side, run in runs.items()}
    rows = {side: {(r["backend"], r["recipe"]): r for r in stats.records(stats.aggregate(df))}
            for side, df in dfs.items()}
    keys = sorted(set(rows["A"]) | set(rows["B"]),
                  key=lambda k: (stats.recipe_sort_key(k[1]), stats.backend_sort_key(k[0])))
    absent = {"status": "absent", "errors": [], "n_ok": 0}
    verdicts = stats.verdict_flips(stats.framework_tests(dfs["A"]), stats.framework_tests(dfs["B"]),
                                   ("recipe", "a", "b"), "verdict")
    calls = stats.verdict_flips(stats.paired_tests(dfs["A"]), stats.paired_tests(dfs["B"]),
                                ("recipe", "seed", "a", "b"), "call")
    return render("compare.j2", "markdown", name_a=Path(run_a).name, name_b=Path(run_b).name, runs=runs,
                  flips={"verdicts": verdicts, "calls": calls}, framework_test=stats.FRAMEWORK_TEST,
                  rows=[(k, rows["A"].get(k, absent), rows["B"].get(k, absent)) for k in keys], schema=SCHEMA_VERSION,
                  differences=compared_conditions(dfs["A"], dfs["B"]), conds={s: conditions(d) for s, d in dfs.items()})
