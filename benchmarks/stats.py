"""Seed statistics over result files, framework-free (numpy only).

Every number a report shows comes from here: one aggregated row per
(backend, recipe) with mean and sample standard deviation over the seeds that
finished, the statement of which backends are within their seed spread on a
recipe, and what transfer buys over the ``scratch`` control.

Conventions:

* a metric's values are the finite numbers found in the ``ok`` results of the
  group; ``None``, NaN and missing keys are left out (so ``*_n`` may be less
  than ``n_ok``);
* ``std`` is the sample standard deviation (``ddof=1``) and ``None`` when
  fewer than two values exist: one seed gives no spread estimate;
* rows are ordered by recipe (linear_probe, head, partial, full, two_phase,
  any other by name, then ``scratch``, the control) and then by backend
  (pytorch, keras, slim, then any other name alphabetically).
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np

#: the recipe every transferred recipe is compared with
CONTROL_RECIPE = "scratch"

#: the backends in the order reports list them
BACKEND_ORDER = ("pytorch", "keras", "slim")

#: the recipes in the order of docs/design.md's strategy table (others before the control)
RECIPE_ORDER = ("linear_probe", "head", "partial", "full", "two_phase")

#: aggregated metric -> path of keys inside one result.json
METRICS: dict[str, tuple[str, ...]] = {
    "test_top1": ("test", "top1"),
    "test_top5": ("test", "top5"),
    "test_loss": ("test", "loss"),
    "best_val_top1": ("best", "val_top1"),
    "wall_seconds": ("times", "total_seconds"),
    "train_seconds": ("times", "train_seconds"),
    "pretrain_seconds": ("times", "pretrain_seconds"),
    "train_images_per_second": ("throughput", "train", "images_per_second"),
    "train_images_per_second_p10": ("throughput", "train", "images_per_second_p10"),
    "train_images_per_second_p90": ("throughput", "train", "images_per_second_p90"),
    "infer_images_per_second": ("throughput", "infer", "images_per_second"),
    "infer_images_per_second_p10": ("throughput", "infer", "images_per_second_p10"),
    "infer_images_per_second_p90": ("throughput", "infer", "images_per_second_p90"),
    "end_to_end_images_per_second": ("throughput", "end_to_end_train_images_per_second"),
    "peak_memory_bytes": ("throughput", "peak_memory_bytes"),
    "peak_rss_bytes": ("peak_rss_bytes",),
}


def lookup(result: dict, path: Iterable[str]) -> Any:
    """The value at ``path`` of nested dicts, or None where any key is missing."""
    value: Any = result
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def finite(value: Any) -> float | None:
    """``value`` as a float when it is a finite real number, else None (bools excluded)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def metric(result: dict, name: str) -> float | None:
    """One of ``METRICS`` from one result, None unless the result is ``ok`` and the value finite."""
    if result.get("status") != "ok":
        return None
    return finite(lookup(result, METRICS[name]))


def mean_std(values: Iterable[Any]) -> tuple[float | None, float | None, int]:
    """``(mean, sample std, n)`` of the finite values; std None for n < 2, both None for n = 0."""
    xs = np.asarray([v for v in (finite(x) for x in values) if v is not None], np.float64)
    if xs.size == 0:
        return None, None, 0
    if xs.size == 1:
        return float(xs[0]), None, 1
    return float(xs.mean()), float(xs.std(ddof=1)), int(xs.size)


def backend_sort_key(backend: str) -> tuple[int, str]:
    return (BACKEND_ORDER.index(backend) if backend in BACKEND_ORDER else len(BACKEND_ORDER), backend)


def recipe_sort_key(recipe: str) -> tuple[int, int, str]:
    """Known strategies in docs/design.md order, then other recipes by name, the control last."""
    if recipe == CONTROL_RECIPE:
        return (2, 0, recipe)
    if recipe in RECIPE_ORDER:
        return (0, RECIPE_ORDER.index(recipe), recipe)
    return (1, 0, recipe)


def group_results(results: Iterable[dict]) -> dict[tuple[str, str], list[dict]]:
    """Results keyed by ``(backend, recipe)`` in report order, each list sorted by seed."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        groups.setdefault((str(r.get("backend", "?")), str(r.get("recipe", "?"))), []).append(r)
    keys = sorted(groups, key=lambda k: (recipe_sort_key(k[1]), backend_sort_key(k[0])))
    return {k: sorted(groups[k], key=lambda r: (finite(r.get("seed")) or 0)) for k in keys}


def _status(n_ok: int, n_failed: int, n_skipped: int) -> str:
    n = n_ok + n_failed + n_skipped
    if n_ok == n:
        return "ok"
    if n_ok == 0:
        return "failed" if n_failed else "skipped"
    return f"ok {n_ok}/{n}"


def aggregate(results: Iterable[dict]) -> list[dict]:
    """One row per (backend, recipe).

    Each row has ``backend``, ``recipe``, ``n`` (result files), ``n_ok``,
    ``n_failed``, ``n_skipped``, ``seeds`` (of the ok results), ``status``
    (``ok``, ``failed``, ``skipped`` or ``ok k/n`` when some seeds did not
    finish), ``errors`` (distinct error lines of failed and skipped results,
    ``"seed N: ..."``), and for every name in ``METRICS`` the keys
    ``<name>_mean``, ``<name>_std`` and ``<name>_n``. ``vs_scratch_top1`` is the
    row's mean test top-1 minus the same backend's ``scratch`` mean (None for
    the control itself or when either is missing).
    """
    rows = []
    for (backend, recipe), group in group_results(results).items():
        statuses = [r.get("status") for r in group]
        n_ok, n_failed = statuses.count("ok"), statuses.count("failed")
        n_skipped = len(group) - n_ok - n_failed
        errors = []
        for r in group:
            if r.get("status") != "ok":
                line = f"seed {r.get('seed')}: {r.get('error') or r.get('status')}"
                if line not in errors:
                    errors.append(line)
        row: dict[str, Any] = {
            "backend": backend, "recipe": recipe, "n": len(group), "n_ok": n_ok,
            "n_failed": n_failed, "n_skipped": n_skipped,
            "seeds": [r.get("seed") for r in group if r.get("status") == "ok"],
            "status": _status(n_ok, n_failed, n_skipped), "errors": errors,
        }
        for name in METRICS:
            m, s, n = mean_std(metric(r, name) for r in group)
            row[f"{name}_mean"], row[f"{name}_std"], row[f"{name}_n"] = m, s, n
        rows.append(row)
    control = {r["backend"]: r["test_top1_mean"] for r in rows if r["recipe"] == CONTROL_RECIPE}
    for row in rows:
        base = control.get(row["backend"])
        row["vs_scratch_top1"] = (row["test_top1_mean"] - base
                                  if row["recipe"] != CONTROL_RECIPE and base is not None
                                  and row["test_top1_mean"] is not None else None)
    return rows


def within_spread(rows: list[dict], metric_name: str = "test_top1") -> list[dict]:
    """For each recipe, every pair of backends with a mean of ``metric_name``.

    Returns dicts ``{recipe, a, b, mean_a, mean_b, std_a, std_b, n_a, n_b, diff,
    spread, within, statement}`` where ``diff = |mean_a - mean_b|`` and
    ``spread = std_a + std_b``. ``within`` is True when ``diff < spread`` (or the
    means are equal), False when not, and None when either side has a single
    seed; ``statement`` says so in one sentence, e.g. "pytorch and keras are
    within their seed spread on two_phase (|Δ| 0.010 < 0.025)".
    """
    by_recipe: dict[str, list[dict]] = {}
    for row in rows:
        if row.get(f"{metric_name}_mean") is not None:
            by_recipe.setdefault(row["recipe"], []).append(row)
    out = []
    for recipe, group in by_recipe.items():
        for i, ra in enumerate(group):
            for rb in group[i + 1:]:
                ma, mb = ra[f"{metric_name}_mean"], rb[f"{metric_name}_mean"]
                sa, sb = ra[f"{metric_name}_std"], rb[f"{metric_name}_std"]
                na, nb = ra[f"{metric_name}_n"], rb[f"{metric_name}_n"]
                a, b = ra["backend"], rb["backend"]
                diff = abs(ma - mb)
                if sa is None or sb is None or na < 2 or nb < 2:
                    spread, within = None, None
                    statement = (f"{a} and {b} on {recipe}: single seed: no spread estimate "
                                 f"(|Δ| {diff:.3f})")
                else:
                    spread = sa + sb
                    within = diff < spread or diff == 0
                    if within:
                        statement = (f"{a} and {b} are within their seed spread on {recipe} "
                                     f"(|Δ| {diff:.3f} < {spread:.3f})")
                    else:
                        statement = (f"{a} and {b} differ by more than their seed spread on "
                                     f"{recipe} (|Δ| {diff:.3f} ≥ {spread:.3f})")
                out.append({"recipe": recipe, "a": a, "b": b, "mean_a": ma, "mean_b": mb,
                            "std_a": sa, "std_b": sb, "n_a": na, "n_b": nb, "diff": diff,
                            "spread": spread, "within": within, "statement": statement})
    return out


def transfer_gain(rows: list[dict], metric_name: str = "test_top1",
                  control: str = CONTROL_RECIPE) -> list[dict]:
    """Per backend with both: the best transferred recipe's mean minus the control's.

    Returns dicts ``{backend, best_recipe, best, control, control_recipe, gain}``
    in backend order; a backend without a finished control or without a
    finished transferred recipe is left out.
    """
    by_backend: dict[str, list[dict]] = {}
    for row in rows:
        if row.get(f"{metric_name}_mean") is not None:
            by_backend.setdefault(row["backend"], []).append(row)
    out = []
    for backend in sorted(by_backend, key=backend_sort_key):
        group = by_backend[backend]
        base = [r for r in group if r["recipe"] == control]
        transferred = [r for r in group if r["recipe"] != control]
        if not base or not transferred:
            continue
        best = max(transferred, key=lambda r: r[f"{metric_name}_mean"])
        b, c = best[f"{metric_name}_mean"], base[0][f"{metric_name}_mean"]
        out.append({"backend": backend, "best_recipe": best["recipe"], "best": b,
                    "control": c, "control_recipe": control, "gain": b - c})
    return out


def curve_mean(results: Iterable[dict], x_key: str = "global_epoch",
               y_key: str = "val_top1") -> dict[str, list]:
    """Seed-averaged curve of ``y_key`` against ``x_key`` for one (backend, recipe).

    Points are matched by ``global_epoch`` across the ok results; returns
    ``{"x", "mean", "min", "max", "phase"}`` lists (x is the mean of ``x_key``
    over seeds at that epoch), skipping epochs with no finite value.
    """
    by_epoch: dict[int, list[dict]] = {}
    for r in results:
        if r.get("status") != "ok":
            continue
        for point in r.get("curves") or []:
            e = finite(point.get("global_epoch"))
            if e is not None:
                by_epoch.setdefault(int(e), []).append(point)
    out: dict[str, list] = {"x": [], "mean": [], "min": [], "max": [], "phase": []}
    for e in sorted(by_epoch):
        pts = by_epoch[e]
        ys = [v for v in (finite(p.get(y_key)) for p in pts) if v is not None]
        xs = [v for v in (finite(p.get(x_key)) for p in pts) if v is not None]
        if not ys or not xs:
            continue
        out["x"].append(float(np.mean(xs)))
        out["mean"].append(float(np.mean(ys)))
        out["min"].append(float(min(ys)))
        out["max"].append(float(max(ys)))
        out["phase"].append(pts[0].get("phase"))
    return out
