"""Statistics over result files (framework-free): one tidy table, seed aggregates, paired tests.

``runs_frame(results)``, a pandas DataFrame with one row per result file, is the one table every report
number comes from. ``aggregate`` gives one row per (recipe, backend): mean, sample std (ddof = 1) and count
over the seeds that finished. Two kinds of test, kept apart (docs/design.md, "Verdicts"):
``framework_tests`` judges frameworks, only with ``MIN_FRAMEWORK_SEEDS`` or more seeds per backend (paired
t-test over seeds, Holm-corrected over the pairs of a recipe); ``paired_tests`` compares two trained models
image by image on the same test files (exact McNemar test), which says nothing about frameworks.
``accuracy_intervals`` gives each accuracy its Wilson interval. Order: recipes as in docs/design.md, others
by name, the ``scratch`` control last; backends in registry order (``backend_names()``), unknown ones after.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any, Iterable

import numpy as np
import pandas as pd
from scipy.stats import binomtest, ttest_rel

from backends.base import backend_names
from common.config import FIDELITY_SWITCHES, Fidelity
from common.results import Result, SchemaError

CONTROL_RECIPE = "scratch"
RECIPE_ORDER = ("linear_probe", "head", "partial", "full", "two_phase")
ALPHA = 0.05                 # significance level of every test (after Holm's correction for the verdicts)
MIN_FRAMEWORK_SEEDS = 3      # seeds per backend (paired by seed) before a framework verdict is made
INTERVAL_LEVEL = 0.95        # confidence level of the Wilson accuracy intervals
FRAMEWORK_TEST = {"test": "paired t-test over seeds of the per-seed test top-1 differences (scipy.stats.ttest_rel, "
                          "two-sided), pairing runs by seed",
                  "correction": "Holm, over the pairs of backends of a recipe", "alpha": ALPHA,
                  "min_seeds": MIN_FRAMEWORK_SEEDS}

#: aggregated metric -> (part of the result, key path inside it)
METRICS: dict[str, tuple[str, ...]] = {
    "test_top1": ("test", "top1"), "test_top5": ("test", "top5"), "test_loss": ("test", "loss"),
    "best_val_top1": ("best", "val_top1"), "wall_seconds": ("times", "total_seconds"),
    "train_seconds": ("times", "train_seconds"), "pretrain_seconds": ("times", "pretrain_seconds"),
    "source_pretrain_seconds": ("times", "source_pretrain_seconds"),
    **{f"{kind}_images_per_second{q}": ("throughput", kind, f"images_per_second{q}")
       for kind in ("train", "infer") for q in ("", "_p10", "_p90")},
    "first_train_step_seconds": ("throughput", "train", "first_step_seconds"),
    "throughput_batch_size": ("throughput", "train", "batch_size"),
    "end_to_end_images_per_second": ("throughput", "end_to_end_train_images_per_second"),
    "peak_memory_bytes": ("throughput", "peak_memory_bytes"), "peak_rss_bytes": ("peak_rss_bytes",),
}


#: the metrics of the throughput measurement itself, which a run citing an earlier seed's
#: measurement (``throughput.measured_in``) does not repeat in the means (its own end-to-end
#: train img/s is its own)
CITED_THROUGHPUT_METRICS = tuple(m for m, path in METRICS.items() if path[0] == "throughput"
                                 and path[1] != "end_to_end_train_images_per_second")


def lookup(obj: Any, path: Iterable[str]) -> Any:
    """The value at ``path`` through records (attributes) and dicts (keys); None where missing."""
    for key in path:
        obj = obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)
    return obj


def finite(value: Any) -> float | None:
    """``value`` as a float when it is a finite real number, else None (bools excluded)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        return None
    return float(value) if np.isfinite(value) else None


def as_result(r: dict | Result) -> Result:
    """``r`` as a ``Result``; a dict that does not fit the schema becomes a failed result saying why."""
    try:
        return r if isinstance(r, Result) else Result.parse(r)
    except SchemaError as err:
        return Result(status="failed", error=f"result does not fit the schema: {err}",
                      **{k: r.get(k) for k in ("backend", "recipe", "seed")})


def backend_sort_key(backend: str) -> tuple[int, str]:
    order = backend_names()
    return (order.index(backend) if backend in order else len(order), backend)


def ordered_backends(names: Iterable[str]) -> list[str]:
    return sorted(set(names), key=backend_sort_key)


def recipe_sort_key(recipe: str) -> tuple[int, int, str]:
    if recipe == CONTROL_RECIPE:
        return (2, 0, recipe)
    return (0, RECIPE_ORDER.index(recipe), recipe) if recipe in RECIPE_ORDER else (1, 0, recipe)


def _correct(r: Result) -> np.ndarray | None:
    """Per test image: did the run predict it right (None without stored predictions)."""
    pred, labels = lookup(r, ("test", "predictions")), lookup(r, ("test", "labels"))
    if not r.ok or pred is None or labels is None or len(pred) != len(labels):
        return None
    return np.asarray(pred) == np.asarray(labels)


def device_text(device: Any) -> str:
    """A result's device record on one line, ``cpu Intel(R) Xeon(R) ...`` (extra keys in brackets)."""
    if not isinstance(device, dict):
        return "unknown"
    extra = ", ".join(f"{k} {v}" for k, v in device.items() if k not in ("kind", "name"))
    return " ".join(str(device[k]) for k in ("kind", "name") if device.get(k)) + (f" ({extra})" if extra else "")


def fidelity_text(settings: dict) -> str:
    """A run's training-step switches in words: ``native``, ``aligned`` or ``switch=setting, ...``
    (a switch the result does not record: ``native``, what every run did before it existed)."""
    settings = settings if isinstance(settings, dict) else {}
    return Fidelity(**{k: str(settings.get(k, "native")) for k in FIDELITY_SWITCHES}).text()


def _run_row(r: Result) -> dict:
    classes = lookup(r, ("data", "num_classes")) or len(lookup(r, ("data", "classes")) or []) or None
    row = {"backend": r.backend, "recipe": r.recipe, "seed": r.seed, "status": r.status, "error": r.error,
           "name": r.name, "model": r.model, "num_classes": classes,
           "image_size": lookup(r, ("data", "image_size")) or lookup(r.config, ("data", "image_size")),
           "batch_size": lookup(r.config, ("train", "batch_size")),
           "precision": lookup(r, ("throughput", "precision")) or lookup(r.config, ("train", "precision")),
           "throughput_steps": lookup(r.config, ("train", "throughput_steps")),
           "data_source": lookup(r, ("data", "source")) or lookup(r.config, ("data", "source")),
           "split_digest": lookup(r, ("data", "split_digest")),
           "weights_kind": lookup(r, ("weights", "kind")) or lookup(r.config, ("model", "weights")),
           "weights_digest": lookup(r, ("weights", "digest")),
           "weights_source": lookup(r, ("weights", "source_backend")),
           "weights_conversion": lookup(r, ("weights", "conversion")),
           "phases": f"{r.recipe}: " + " + ".join(f"{p.get('name')} ({p.get('train')}, {p.get('optimizer')}, lr "
                                                  f"{p.get('learning_rate')}, {p.get('epochs')} ep)"
                                                  for p in lookup(r.config, ("recipe", "phases")) or []),
           # a result from before the switches existed ran every framework's own step: native
           "fidelity": fidelity_text(r.fidelity or lookup(r.config, ("recipe", "fidelity")) or {}),
           "versions": f"{r.backend}: " + ", ".join(f"{k} {v}" for k, v in sorted((r.versions or {}).items())),
           "device": f"{r.backend}: {device_text(r.device)}", "correct": _correct(r), "result": r}
    row.update({name: finite(lookup(r, path)) if r.ok else None for name, path in METRICS.items()})
    if lookup(r, ("throughput", "measured_in")):  # another run's measurement: counted there once
        row.update({name: None for name in CITED_THROUGHPUT_METRICS})
    if classes is not None and classes <= 5:
        row["test_top5"] = None  # 100 % by construction
    return row


def runs_frame(results: Iterable[dict | Result]) -> pd.DataFrame:
    """One row per result, in report order: identity, conditions, metrics (NaN unless ok; top-5
    NaN for runs with 5 classes or fewer), ``correct`` (per test image, or None), ``result``."""
    rows = sorted((_run_row(as_result(r)) for r in results),
                  key=lambda row: (recipe_sort_key(row["recipe"]), backend_sort_key(row["backend"]), row["seed"]))
    df = pd.DataFrame(rows, columns=list(_run_row(Result())), dtype=object)  # None stays None in text
    df[list(METRICS)] = df[list(METRICS)].astype(float)
    return df


def aggregate(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (recipe, backend) in report order: ``n``, ``n_ok``, ``n_failed``, ``n_skipped``, ``seeds``
    (of ok runs), ``status`` (ok, failed, skipped or ``ok k/n``), ``errors`` (distinct ``seed N: ...`` lines),
    ``<metric>_mean/_std/_n`` for every metric and ``vs_scratch_top1`` (minus the same backend's ``scratch``)."""
    rows = []
    for (recipe, backend), g in df.groupby(["recipe", "backend"], sort=False):
        ok, n_failed = g[g.status == "ok"], int((g.status == "failed").sum())
        status = ("ok" if len(ok) == len(g) else f"ok {len(ok)}/{len(g)}" if len(ok)
                  else "failed" if n_failed else "skipped")
        row = {"backend": backend, "recipe": recipe, "n": len(g), "n_ok": len(ok), "n_failed": n_failed,
               "n_skipped": len(g) - len(ok) - n_failed, "seeds": ok.seed.tolist(), "status": status,
               "precision": ", ".join(dict.fromkeys(ok.precision.dropna())),
               "errors": list(dict.fromkeys(f"seed {s.seed}: {s.error or s.status}"
                                            for s in g[g.status != "ok"].itertuples()))}
        for m in METRICS:
            row.update({f"{m}_mean": ok[m].mean(), f"{m}_std": ok[m].std(), f"{m}_n": ok[m].count()})
        rows.append(row)
    columns = ["backend", "recipe", "n", "n_ok", "n_failed", "n_skipped", "seeds", "status", "precision", "errors"]
    agg = pd.DataFrame(rows, columns=columns + [f"{m}_{s}" for m in METRICS for s in ("mean", "std", "n")])
    control = agg[agg.recipe == CONTROL_RECIPE].set_index("backend").test_top1_mean
    agg["vs_scratch_top1"] = [np.nan if rec == CONTROL_RECIPE else m - control.get(b, np.nan)
                              for b, rec, m in zip(agg.backend, agg.recipe, agg.test_top1_mean)]
    return agg


def records(df: pd.DataFrame) -> list[dict]:
    """``df`` as JSON-ready dicts (NaN -> None)."""
    return [{k: None if isinstance(v, float) and v != v else v for k, v in row.items()}
            for row in df.to_dict("records")]


def transfer_gain(agg: pd.DataFrame, metric: str = "test_top1") -> list[dict]:
    """Per backend with a finished control and a finished transferred recipe: the best
    transferred recipe's mean minus the control's (``backend, best_recipe, best, control, gain``)."""
    done, out = agg[agg[f"{metric}_mean"].notna()], []
    for backend in ordered_backends(done.backend):
        mine = done[done.backend == backend]
        base, moved = mine[mine.recipe == CONTROL_RECIPE], mine[mine.recipe != CONTROL_RECIPE]
        if len(base) and len(moved):
            best = moved.loc[moved[f"{metric}_mean"].idxmax()]
            control = base[f"{metric}_mean"].iloc[0]
            out.append({"backend": backend, "best_recipe": best.recipe, "best": best[f"{metric}_mean"],
                        "control": control, "gain": best[f"{metric}_mean"] - control})
    return out


def curves_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Validation curves of the ok runs, tidy: one row per (run, epoch)."""
    rows = [{"backend": r.backend, "recipe": r.recipe, "seed": r.seed, **p}
            for r in df[df.status == "ok"].result for p in (r.curves or []) if isinstance(p, dict)]
    cols = ["backend", "recipe", "seed", "phase", "phase_name", "global_epoch", "images_seen", "val_top1"]
    curves = pd.DataFrame(rows).reindex(columns=cols)
    curves[cols[5:]] = curves[cols[5:]].apply(pd.to_numeric, errors="coerce")
    return curves


def curve_mean(curves: pd.DataFrame, x: str = "global_epoch") -> pd.DataFrame:
    """Per (backend, recipe, epoch): mean of ``x`` and mean / min / max of val top-1 over seeds."""
    return (curves.dropna(subset=["global_epoch", x, "val_top1"])
            .groupby(["backend", "recipe", "global_epoch"], sort=False)
            .agg(x=(x, "mean"), mean=("val_top1", "mean"), min=("val_top1", "min"),
                 max=("val_top1", "max")).reset_index())


# ------------------------------------------------------------ paired significance

def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> dict:
    """Exact McNemar test on paired right/wrong calls: ``only_a`` (a right, b wrong), ``only_b``,
    and the two-sided p-value of ``binomtest(only_a, only_a + only_b, 0.5)`` (1.0 without any)."""
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    n = only_a + only_b
    return {"only_a": only_a, "only_b": only_b, "p": binomtest(only_a, n, 0.5).pvalue if n else 1.0}


def wilson_interval(right: int, n: int, level: float = INTERVAL_LEVEL) -> tuple[float, float]:
    """Wilson score interval of an accuracy of ``right`` out of ``n`` (``scipy.stats.binomtest``): unlike a
    bootstrap of the test images it does not shrink to one point at 0 or 100 %."""
    ci = binomtest(int(right), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def accuracy_intervals(df: pd.DataFrame) -> pd.DataFrame:
    """Per ok run: test top-1, ``right`` and ``n`` (test images) and its Wilson interval (NaN without
    stored predictions)."""
    ok = df[df.status == "ok"]
    counts = [(int(np.sum(c)), len(c)) if c is not None and len(c) else (None, None) for c in ok.correct]
    ci = [wilson_interval(k, n) if n else (np.nan, np.nan) for k, n in counts]
    return ok[["recipe", "backend", "seed", "test_top1"]].assign(
        right=[k for k, _ in counts], n=[n for _, n in counts],
        low=[c[0] for c in ci], high=[c[1] for c in ci]).reset_index(drop=True)


def mcnemar_call(t: dict) -> str | None:
    """What a McNemar row says about its two trained models: ``a`` or ``b`` (that run got more test images
    right, beyond test-set noise at ``ALPHA``), ``same`` (not told apart) or None (no test)."""
    if t.get("p") is None:
        return None
    return ("a" if t["only_a"] > t["only_b"] else "b") if t["p"] < ALPHA else "same"


def paired_tests(df: pd.DataFrame) -> list[dict]:
    """Every pair of backends on the same recipe and seed (per seed, not pooled: seeds are separate trainings
    of the same images). ``p`` is None when either run stored no predictions or the two used different test
    files (split digest or labels differ); ``call``: ``mcnemar_call``. A statement about two trained models."""
    out = []
    for (recipe, seed), g in df[df.status == "ok"].groupby(["recipe", "seed"], sort=False):
        for ra, rb in combinations(g.itertuples(), 2):
            row = {"recipe": recipe, "seed": seed, "a": ra.backend, "b": rb.backend, "top1_a": ra.test_top1,
                   "top1_b": rb.test_top1, "delta": ra.test_top1 - rb.test_top1, "only_a": None, "only_b": None,
                   "p": None, "why": None}
            la, lb = lookup(ra.result, ("test", "labels")), lookup(rb.result, ("test", "labels"))
            if ra.correct is None or rb.correct is None:
                row["why"] = "no per-image predictions stored: an older result file"
            elif ra.split_digest != rb.split_digest or la != lb:
                row["why"] = "different test files (split digests differ)"
            else:
                row.update(mcnemar(ra.correct, rb.correct))
            row["call"] = mcnemar_call(row)
            out.append(row)
    return out


def holm(pvalues: Iterable[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given: the i-th smallest p (from 0) times (m - i),
    made non-decreasing in that order and capped at 1. Rejecting where the adjusted p < alpha keeps the
    chance of any false verdict among the m at most alpha, whatever their dependence."""
    p = np.asarray(list(pvalues), float)
    order, m = np.argsort(p, kind="stable"), len(p)
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return adjusted.tolist()


def framework_tests(df: pd.DataFrame, metric: str = "test_top1") -> list[dict]:
    """Every pair of backends with finished runs on a recipe, judged across seeds: ``seeds`` (those both
    finished, the pairing), ``mean_a``, ``mean_b``, ``mean_diff`` (a − b) and ``diff_std`` over them. With
    ``MIN_FRAMEWORK_SEEDS`` or more: ``t``, ``p`` (``scipy.stats.ttest_rel``, two-sided; 1.0 when every
    difference is 0, 0.0 when every difference is the same nonzero number), ``p_holm`` (Holm over the
    tested pairs of the recipe) and ``verdict``: ``a`` or ``b`` (that framework reaches the higher accuracy
    on this recipe, p_holm < ``ALPHA``) or ``same`` (no difference shown). Fewer seeds: ``verdict`` None
    and ``why``. See docs/design.md, "Verdicts"."""
    ok = df[(df.status == "ok") & df[metric].notna()]
    out = []
    for recipe, g in ok.groupby("recipe", sort=False):
        per = {b: r.drop_duplicates("seed").set_index("seed")[metric] for b, r in g.groupby("backend", sort=False)}
        tested = []
        for a, b in combinations(ordered_backends(per), 2):
            seeds = sorted(set(per[a].index) & set(per[b].index))
            xa, xb = per[a][seeds].to_numpy(float), per[b][seeds].to_numpy(float)
            diff = np.round(xa - xb, 12)  # accuracies are k / n: no spread from float rounding
            row = {"recipe": recipe, "a": a, "b": b, "seeds": seeds, "n": len(seeds),
                   "mean_a": finite(xa.mean()) if seeds else None, "mean_b": finite(xb.mean()) if seeds else None,
                   "mean_diff": finite(diff.mean()) if seeds else None,
                   "diff_std": finite(diff.std(ddof=1)) if len(seeds) > 1 else None,
                   "t": None, "p": None, "p_holm": None, "verdict": None, "why": None}
            if len(seeds) < MIN_FRAMEWORK_SEEDS:
                row["why"] = (f"{len(seeds)} seed{'s' * (len(seeds) != 1)} finished in both; a framework claim "
                              f"needs at least {MIN_FRAMEWORK_SEEDS} seeds per backend")
            elif not diff.any():
                row.update(t=0.0, p=1.0)
            elif np.ptp(diff) == 0:  # the same nonzero difference on every seed: the t-test's limit
                row.update(t=float(np.copysign(np.inf, diff[0])), p=0.0)
            else:
                t = ttest_rel(np.round(xa, 12), np.round(xb, 12))
                row.update(t=float(t.statistic), p=float(t.pvalue))
            if row["p"] is not None:
                tested.append(row)
            out.append(row)
        for row, adjusted in zip(tested, holm(r["p"] for r in tested)):
            row["p_holm"] = adjusted
            row["verdict"] = ("a" if row["mean_diff"] > 0 else "b") if adjusted < ALPHA else "same"
    return out


def alignment(df: pd.DataFrame, verdicts: list[dict]) -> dict:
    """What the framework verdicts say about the training-step switches: ``setting`` is ``aligned``
    (every switch of every finished run aligned), ``native`` (every switch native) or ``mixed``;
    ``switches`` the switch names; ``tested`` how many pairs have a verdict; ``survive`` the verdicts
    where one framework reaches the higher accuracy (with every switch aligned: the differences that
    survive alignment). See docs/design.md, "Verdicts"."""
    ok = df[df.status == "ok"]
    settings = set(ok.fidelity)
    setting = settings.pop() if len(settings) == 1 else "mixed"
    tested = [v for v in verdicts if v["verdict"] is not None]
    return {"setting": setting if setting in ("aligned", "native") else "mixed",
            "switches": list(FIDELITY_SWITCHES), "tested": len(tested),
            "survive": [v for v in tested if v["verdict"] in ("a", "b")]}


def verdict_flips(a: list[dict], b: list[dict], key: tuple[str, ...], call: str) -> tuple[list[dict], int]:
    """Rows of two sweeps matched on ``key`` where both made a ``call`` and the calls differ (a flip), and how
    many matched rows both made a call on."""
    other = {tuple(r[k] for k in key): r for r in b if r.get(call) is not None}
    both = [(r, other[k]) for r in a if r.get(call) is not None and (k := tuple(r[k2] for k2 in key)) in other]
    return [{**{k: ra[k] for k in key}, "A": ra, "B": rb} for ra, rb in both if ra[call] != rb[call]], len(both)
