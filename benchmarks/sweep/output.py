"""``bench throughput --sweep``, the outputs: what the rows say, and ``throughput.json``,
``throughput.md`` and ``throughput.png``.

``limiting_stage`` reads an end-to-end row's numbers, ``targets`` checks the sweep against
the H100 targets; the markdown is ``templates/sweep.j2`` written with the report's macros
and filters (``benchmarks.report.render``), the plot one matplotlib figure. No framework
imported.
"""

from __future__ import annotations

from pathlib import Path

from backends.base import backend_info
from benchmarks.sweep.planning import KINDS, MODES, PRECISIONS, TRAIN_FLOPS_FACTOR, models_order
from common.results import write_json_atomic

TARGET_E2E_RATIO = 0.9


def limiting_stage(row: dict) -> str | None:
    """Which stage limits an end-to-end row, from its numbers: the model step when the
    epoch keeps within ``TARGET_E2E_RATIO`` of it; else the input pipeline when it alone
    is slower than the model step; else the loop between them."""
    if row.get("status") != "ok" or row.get("ratio") is None:
        return None
    decode = (row.get("decode") or {}).get("images_per_second")
    step = row["model_step_images_per_second"]
    if row["ratio"] >= TARGET_E2E_RATIO:
        return "the model step (the input pipeline keeps up)"
    if decode is None:
        return "not known: the input pipeline alone was not timed"
    if decode < step:
        return (f"the input pipeline: {decode:.0f} img/s decoding and augmenting alone, "
                f"below the model step's {step:.0f}")
    return (f"the loop around the step (copies, per-step host work): the pipeline alone gives "
            f"{decode:.0f} img/s, the model step {step:.0f}")


# ------------------------------------------------------------------ targets

def targets(record: dict) -> list[dict]:
    """The issue's targets on an H100, checked against this sweep's rows (not on a CPU)."""
    rows = record["rows"]

    def rate(backend, mode, model, batch=256):
        for r in rows:
            if (r["backend"], r["mode"], r["model"], r["precision"], r["kind"],
                    r["batch_requested"]) == (backend, mode, model, "bf16", "train", batch) \
                    and r.get("status") == "ok":
                return r["images_per_second"]
        return None

    out = []
    for model, floor in (("inception_v3", 2500.0), ("resnet50", 3000.0)):
        got = rate("pytorch", "eager", model)
        out.append({"target": f"{model} bf16 train, torch backend, batch 256 >= {floor:.0f} img/s",
                    "value": got, "met": None if got is None or record["smoke"] else got >= floor})
        jax = rate("keras-jax", "XLA", model)
        within = None if got is None or jax is None else jax / got
        out.append({"target": f"{model} bf16 train batch 256: Keras on jax within 15 % of torch",
                    "value": within,
                    "met": None if within is None or record["smoke"] else within >= 0.85})
    e2e = next((r for r in record["end_to_end"] if r["backend"] == "pytorch"
                and r.get("model") == "inception_v3" and r.get("phase") == "full"
                and r.get("status") == "ok"), None)
    ratio = e2e["ratio"] if e2e else None
    out.append({"target": "inception_v3 bf16 batch 128, torch backend: end to end >= 90 % of the "
                          "model step (full fine-tuning)", "value": ratio,
                "met": None if ratio is None or record["smoke"] else ratio >= TARGET_E2E_RATIO})
    return out


# ------------------------------------------------------------------ outputs

def write_outputs(record: dict, out_dir: Path) -> dict[str, Path]:
    """``throughput.json``, ``throughput.md`` and ``throughput.png`` under ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "throughput.json", "md": out_dir / "throughput.md",
             "png": out_dir / "throughput.png"}
    write_json_atomic(paths["json"], record)
    plot(record, paths["png"])
    text = markdown(record, paths["png"].name)
    tmp = paths["md"].with_name(".throughput.md.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(paths["md"])
    return paths


def markdown(record: dict, plot_name: str = "throughput.png") -> str:
    """The sweep as GitHub markdown (``templates/sweep.j2`` with the report's macros)."""
    from benchmarks.report import render

    order = {b: i for i, (b, _) in reversed(list(enumerate(MODES)))}
    e2e_rows = sorted((r for r in record["end_to_end"] if r.get("status") != "not run"),
                      key=lambda r: (order.get(r["backend"], 99), r.get("recipe") != "two_phase"))
    return render("sweep.j2", "markdown", r=record, plot=plot_name, model_rows=_table_rows(record),
                  e2e_rows=e2e_rows,
                  not_run=_not_run_groups(record), fm=_formatters(), train_flops_factor=TRAIN_FLOPS_FACTOR)


def _formatters() -> dict:
    """The sweep's own units for ``templates/sweep.j2`` (``fm``); its img/s go through the report's
    ``rate`` filter (``benchmarks.report.FILTERS``)."""
    def gb(v):
        return "—" if not v else f"{v / 2**30:.1f} GiB"

    def gflops(v):
        return "—" if not v else f"{v / 1e9:.2f}"

    def pct(v):
        return "—" if v is None else f"{100 * v:.1f} %"

    def secs(v):
        return "—" if v is None else f"{v:.1f} s"

    def mfu(v):  # below 1 %, two decimals
        return "—" if v is None else f"{100 * v:.2f} %" if v < 0.01 else f"{100 * v:.1f} %"

    def tflops(v):
        return "—" if not v else f"{v / 1e12:,.1f}"

    return {"gb": gb, "gflops": gflops, "pct": pct, "secs": secs, "tflops": tflops, "mfu": mfu}


def _table_rows(record: dict) -> list[dict]:
    """Measured and failed model-step rows (not-run rows are grouped apart), in plan order."""
    order = {m: i for i, m in enumerate(MODES)}
    rows = [r for r in record["rows"] if r.get("status") != "not run"]
    return sorted(rows, key=lambda r: (order.get((r["backend"], r["mode"]), 99),
                                       models_order(r["model"]), PRECISIONS.index(r["precision"]),
                                       KINDS.index(r["kind"]), -r["batch_requested"]))


def _not_run_groups(record: dict) -> list[dict]:
    """Rows that did not run, one line per (table, backend, mode, reason)."""
    groups: dict[tuple, dict] = {}
    for r in record["rows"] + record["end_to_end"]:
        if r.get("status") != "not run":
            continue
        key = (r["table"], r["backend"], r["mode"], r["reason"])
        g = groups.setdefault(key, {"table": r["table"], "backend": r["backend"], "mode": r["mode"],
                                    "reason": r["reason"], "rows": 0, "what": set()})
        g["rows"] += 1
        g["what"].add(f"{r['model']} {r['precision']}")
    return [{**g, "what": ", ".join(sorted(g["what"]))} for g in groups.values()]


def plot(record: dict, path: Path) -> None:
    """``figure(record)`` as a PNG at ``path``, in the run report's style (``benchmarks.report``:
    its matplotlib rc ``STYLE``, ``figure_grid`` and ``png_bytes``)."""
    import matplotlib

    from benchmarks.report import STYLE, png_bytes

    with matplotlib.rc_context(STYLE):
        Path(path).write_bytes(png_bytes(figure(record)))


def figure(record: dict):
    """One figure: train and inference img/s at the largest batch, a panel per (kind,
    precision) measured, a bar per backend and mode (the batch it fell back to on the bar
    when memory ran out); and the end-to-end rows beside their model step and their
    pipeline alone."""
    from benchmarks.report import figure_grid

    biggest = max(record["settings"]["batch_sizes"])
    rows = [r for r in record["rows"] if r.get("status") == "ok" and r["batch_requested"] == biggest]
    panels = [(k, p) for k in KINDS for p in PRECISIONS
              if any((r["kind"], r["precision"]) == (k, p) for r in rows)]
    e2e = [r for r in record["end_to_end"] if r.get("status") == "ok"]
    count = max(1, len(panels) + bool(e2e))
    fig, axes = figure_grid(count, 2, 5.8, 3.9)
    series = [m for m in MODES if any((r["backend"], r["mode"]) == m for r in rows)]
    models = sorted({r["model"] for r in rows}, key=models_order)
    width = 0.8 / max(1, len(series))
    for ax, (kind, precision) in zip(axes, panels):
        for i, (backend, mode) in enumerate(series):
            found = [next((r for r in rows if (r["backend"], r["mode"], r["model"], r["kind"],
                                                r["precision"]) == (backend, mode, model, kind,
                                                                    precision)), None)
                     for model in models]
            bars = ax.bar([j - 0.4 + width * (i + 0.5) for j in range(len(models))],
                          [r["images_per_second"] if r else 0.0 for r in found], width * 0.92,
                          color=_mode_color(backend, mode), label=f"{backend} {mode}",
                          hatch="//" if mode == "torch.compile" else None)
            ax.bar_label(bars, fontsize=6, padding=2, labels=[
                "" if r is None else f"{r['images_per_second']:.0f}"
                + (f"\n(b{r['batch']})" if r.get("fell_back") else "") for r in found])
        ax.set_xticks(range(len(models)), models)
        ax.set(title=f"model step: {kind}, {precision}, batch {biggest}", ylabel="images / s")
        ax.margins(y=0.2)
    if e2e:
        ax = axes[len(panels)]
        labels = [f"{r['backend']}\n{r['phase']}" for r in e2e]
        for i, (what, key) in enumerate((("end to end", "end_to_end_images_per_second"),
                                         ("model step", "model_step_images_per_second"),
                                         ("pipeline alone", None))):
            values = [(r.get("decode") or {}).get("images_per_second") if key is None else r[key]
                      for r in e2e]
            bars = ax.bar([j - 0.3 + 0.2 * i for j in range(len(e2e))],
                          [v or 0.0 for v in values], 0.18, label=what,
                          color=("#333333", "#999999", "#cccccc")[i])
            ax.bar_label(bars, labels=["" if not v else f"{v:.0f}" for v in values], fontsize=6,
                         padding=2)
        ax.set_xticks(range(len(e2e)), labels, fontsize=7)
        ax.set(title=f"end to end, {e2e[0]['model']}, batch {e2e[0]['batch']}",
               ylabel="images / s")
        ax.legend(fontsize=7)
        ax.margins(y=0.2)
    if not panels and not e2e:
        axes[0].text(0.5, 0.5, "no row was measured", ha="center", va="center")
    if series:
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center",
                   ncols=min(len(series), 6))
    title = record["device"]["name"] or "no GPU"
    if record["smoke"]:
        title = f"CPU SMOKE TEST, NOT A RESULT ({record['machine']['cpu']})"
    fig.suptitle(f"bench throughput --sweep: {title}", fontsize=10)
    return fig


def _mode_color(backend: str, mode: str) -> str:
    color = backend_info(backend).color
    if mode == "torch.compile":  # a darker shade of the backend's own colour
        r, g, b = (int(color[i:i + 2], 16) for i in (1, 3, 5))
        return "#{:02x}{:02x}{:02x}".format(*(int(c * 0.6) for c in (r, g, b)))
    return color
