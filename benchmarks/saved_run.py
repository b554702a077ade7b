"""After training: ``bench eval``, ``bench predict`` and ``bench export`` on a finished run.

The parent side, framework-free: it finds the run folder (``config.json``,
``result.json``, ``split.json``, ``checkpoints/``), checks everything a user can
get wrong before any framework starts — no such run, a run that failed or was
skipped, a linear probe (no checkpoint), a missing checkpoint, an unreadable
image, a format the run's backend does not write — each as one line
(``SavedRunError``, exit 2), then asks ``benchmarks.saved_run_worker``, in a
process of the run's own backend, for logits or an export. Metrics, the
confusion matrix and the predictions CSV are computed here from those logits by
``common.metrics``, the same code as every run's result.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from backends.base import availability, backend_info
from benchmarks import child
from common.config import RunConfig
from common.data import DataError, Sample, Split, load_dataset
from common.metrics import classification_metrics, log_softmax
from common.paths import kind_of, write_problem
from common.progress import ProgressRelay
from common.results import write_json_atomic

log = logging.getLogger(__name__)
CHECKPOINTS = ("best", "last")
GOLDEN_IMAGES = 8  # the export check's batch: the run's first test images


class SavedRunError(ValueError):
    """Bad input to eval/predict/export: one line for the user (exit 2)."""


class BackendProcessFailed(RuntimeError):
    """The backend's process failed or died (exit 1, one line)."""


class ExportCheckError(BackendProcessFailed):
    """The exported model's logits differ from the native model's (exit 1)."""


@dataclass(frozen=True)
class SavedRun:
    """A finished run folder, read without importing a framework."""

    path: Path
    config: RunConfig
    result: dict
    split: Split
    image_size: int

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def classes(self) -> tuple[str, ...]:
        return self.split.classes

    def test_images(self) -> list[Sample]:
        """The run's test split, or one line when its images are no longer where they were."""
        gone = [s.path for s in self.split.test if not os.path.isfile(s.path)]
        if gone:
            raise SavedRunError(f"{len(gone)} test image(s) of run {str(self.path)!r} are no longer "
                                f"there, e.g. {gone[0]}; pass the data with --data")
        return self.split.test

    def checkpoint(self, which: str) -> Path:
        """``checkpoints/<which>`` (no suffix, as ``Backend.restore`` takes it); one line when
        the backend's file is not there."""
        if which not in CHECKPOINTS:
            raise SavedRunError(f"--checkpoint {which!r}: choose one of {', '.join(CHECKPOINTS)}")
        base = self.path / "checkpoints" / which
        if not checkpoint_present(base, self.config.backend):
            raise SavedRunError(f"run {str(self.path)!r} has no {which} checkpoint "
                                f"({base}{backend_info(self.config.backend).checkpoint_suffix})")
        return base


def checkpoint_present(base: Path, backend: str) -> bool:
    """Whether the backend's checkpoint ``base`` + suffix exists (a TF prefix: its ``.index``)."""
    suffix = backend_info(backend).checkpoint_suffix
    f = Path(str(base) + suffix)
    return f.is_file() or Path(str(f) + ".index").is_file()


def open_run(path: str | Path) -> SavedRun:
    """The finished run at ``path`` (``RUN_DIR/<backend>-<recipe>-s<seed>``), or one line
    saying why it cannot be reopened."""
    path = Path(path)
    if not path.is_dir():
        raise SavedRunError(f"no such run: {str(path)!r} is not a folder; give a run folder such "
                            f"as results/<time>/pytorch-two_phase-s0")
    if not (path / "config.json").is_file():
        hint = ""
        if (path / "sweep.json").is_file():
            runs = sorted(p.name for p in path.iterdir() if (p / "config.json").is_file())
            hint = f" (it is a sweep; its runs: {', '.join(runs[:6]) or 'none yet'})"
        raise SavedRunError(f"no such run: {str(path)!r} has no config.json{hint}; give one run "
                            f"folder of a 'bench run' directory")
    try:
        config = RunConfig.from_dict(json.loads((path / "config.json").read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SavedRunError(f"{path / 'config.json'} is not a run configuration "
                            f"({type(err).__name__}: {err})") from None
    try:
        result = json.loads((path / "result.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise SavedRunError(f"run {str(path)!r} has no readable result.json: it has not finished; "
                            f"finish it with 'bench run --resume {path.parent}'") from None
    status = result.get("status") if isinstance(result, dict) else None
    if status != "ok":
        why = result.get("error", "no reason recorded") if isinstance(result, dict) else "?"
        raise SavedRunError(f"run {str(path)!r} {status or 'did not finish'} ({' '.join(str(why).split())[:200]}); "
                            f"only a finished run has a model to use")
    if config.recipe.is_linear_probe:
        raise SavedRunError(f"run {str(path)!r} is a linear probe: its head is a scikit-learn model "
                            f"kept in no checkpoint; use a fine-tuned run (e.g. --recipe head)")
    try:
        split = Split.read(path / "split.json")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SavedRunError(f"run {str(path)!r}: split.json is unreadable ({type(err).__name__})") from None
    image_size = int((result.get("data") or {}).get("image_size") or 0)
    if image_size < 1:
        raise SavedRunError(f"run {str(path)!r}: result.json records no image size")
    reason = availability(config.backend)
    if reason:
        raise SavedRunError(f"run {str(path)!r} was trained by the {config.backend} backend, which "
                            f"is not available here: {reason}")
    return SavedRun(path, config, result, split, image_size)


def open_target(path: str | Path, which: str = "best") -> tuple[SavedRun, Path]:
    """``bench predict``'s first argument: a run folder (its ``which`` checkpoint) or a
    checkpoint file inside one (``checkpoints/best.pt``, ``last.weights.h5``,
    ``best.ckpt.index``, or the name without its suffix)."""
    path = Path(path)
    if path.is_dir() or not path.parent.name == "checkpoints":
        run = open_run(path)
        return run, run.checkpoint(which)
    run = open_run(path.parent.parent)
    suffix = backend_info(run.config.backend).checkpoint_suffix
    name = re.sub(r"\.(index|meta|data-\d+-of-\d+|optimizer\.npz)$", "", path.name)
    name = name[:-len(suffix)] if name.endswith(suffix) else name
    base = path.parent / name
    if not checkpoint_present(base, run.config.backend):
        raise SavedRunError(f"no {run.config.backend} checkpoint at {str(path)!r} (expected "
                            f"{base}{suffix})")
    return run, base


def _check_writable(directory: Path, hint: str) -> None:
    """One line (``SavedRunError``) when files cannot be written in ``directory``: a
    read-only mount, an immutable folder, a file in its place."""
    problem = write_problem(directory)
    if problem is None and kind_of(directory) not in (None, "a folder"):
        problem = f"it is {kind_of(directory)}"
    if problem:
        raise SavedRunError(f"{directory} cannot be written ({problem}); {hint}")


# ------------------------------------------------------------------ the child

def run_in_backend(run: SavedRun, job: dict) -> dict:
    """``job`` done by ``benchmarks.saved_run_worker`` in a process of the run's backend;
    its answer. Log lines are echoed, progress rendered here; an error is raised as
    ``SavedRunError`` (bad input), ``ExportCheckError`` or ``BackendProcessFailed``."""
    with child.temporary_folder("bench-saved-run-") as tmp:
        # the job, the logits and the framework's scratch files lie in ``tmp``: removed here
        # when the child ends, and by the child itself when bench is killed
        job = {**job, "config": str(run.path / "config.json"), "image_size": run.image_size,
               "classes": list(run.classes)}
        job_file = tmp / "job.json"
        job_file.write_text(json.dumps(job), encoding="utf-8")
        relay = ProgressRelay()
        try:
            ended = child.run(child.command("benchmarks.saved_run_worker", [job_file]),
                              child.environment(run.config.backend, tmp=tmp),
                              on_progress=relay.feed)
        finally:
            relay.close()
        if ended.error is not None:
            message = ended.error["error"]
            if ended.error["kind"] == "usage":
                raise SavedRunError(message)
            if ended.error["kind"] == "check":
                raise ExportCheckError(message)
            raise BackendProcessFailed(f"the {run.config.backend} process failed: {message}"[:400])
        answer = ended.result
        if answer is None:
            raise BackendProcessFailed(f"the {run.config.backend} process died ({ended.reason()}): "
                                       f"{ended.last_line()}"[:400])
        if "logits" in answer:
            answer["logits"] = np.load(answer["logits"])
        return answer


# ------------------------------------------------------------------ eval

def eval_samples(run: SavedRun, data: str | None, class_map: str | None) -> tuple[list[Sample], str, list]:
    """(images with the run's class indices, a name for them, skipped files): the run's own
    test split, or every readable image of ``data`` (its ``test/`` when it is split)."""
    if data is None:
        return run.test_images(), "test", []
    from common import verify

    kind = kind_of(data)
    if kind not in ("a folder", "a file"):
        raise SavedRunError(f"--data {data!r} {'is ' + kind if kind else 'does not exist'}; pass "
                            f"an image folder with one subfolder per class (named as the run's "
                            f"classes)")
    try:
        ds = load_dataset(data, class_map)
        ds, skipped = verify.verified(ds)
    except DataError as err:
        raise SavedRunError(str(err)) from None
    samples = ds.samples
    if ds.presplit is not None:
        subset = next((n for n in ("test", "val") if ds.presplit.get(n)), None)
        if subset is None:
            raise SavedRunError(f"--data {data!r} is split into folders but has no test/ or val/ "
                                f"images to evaluate")
        samples = ds.presplit[subset]
    index = {c: i for i, c in enumerate(run.classes)}
    unknown = [c for c in ds.classes if c not in index]
    if unknown:
        raise SavedRunError(f"--data {data!r} has class(es) {', '.join(map(repr, unknown[:5]))} that "
                            f"the run does not know; its classes are: {', '.join(run.classes)}")
    if not samples:
        raise SavedRunError(f"--data {data!r} holds no readable image")
    mapped = [Sample(s.path, index[ds.classes[s.label]]) for s in samples]
    return mapped, eval_folder_name(data), skipped


def eval_folder_name(data: str) -> str:
    """The name of ``--data``'s evaluation folder: its own name and a short digest of its
    absolute path, so two data sets of one name (``/a/good``, ``/b/good``) never share a
    folder, and one data set evaluated again replaces its own results."""
    absolute = Path(data).resolve()
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", absolute.name) or "data"
    return f"{name}-{hashlib.sha256(os.fsencode(absolute)).hexdigest()[:8]}"


def evaluate(run: SavedRun, checkpoint: str = "best", data: str | None = None,
             class_map: str | None = None) -> dict:
    """Metrics of the run's ``checkpoint`` on ``data`` (default: its own test split), with
    the confusion matrix and a predictions CSV written to ``RUN/eval/<checkpoint>-<data>/``."""
    base = run.checkpoint(checkpoint)
    samples, name, skipped = eval_samples(run, data, class_map)
    out = run.path / "eval" / f"{checkpoint}-{name}"
    _check_writable(out, "bench eval writes into RUN/eval/: copy the run folder "
                         "somewhere writable and evaluate the copy")  # before inference
    answer = run_in_backend(run, {"action": "logits", "checkpoint": str(base),
                                  "images": [[s.path, s.label] for s in samples]})
    logits = answer["logits"]
    labels = np.asarray([s.label for s in samples], np.int64)
    metrics = classification_metrics(logits, labels, run.classes)
    out.mkdir(parents=True, exist_ok=True)
    probabilities = np.exp(log_softmax(np.asarray(logits, np.float64)))
    with open(out / "predictions.csv", "w", newline="", encoding="utf-8",
              errors="backslashreplace") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "true_label", "predicted_label",
                         *(f"p_{c}" for c in run.classes)])
        for s, p in zip(samples, probabilities):
            writer.writerow([s.path, run.classes[s.label], run.classes[int(p.argmax())],
                             *(f"{x:.6f}" for x in p)])
    with open(out / "confusion.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *run.classes])
        for c, row in zip(run.classes, metrics["confusion"]):
            writer.writerow([c, *row])
    record = {"run": str(run.path), "backend": run.config.backend, "checkpoint": checkpoint,
              "data": data or "the run's test split", "images": len(samples),
              "skipped": [list(x) for x in skipped], "classes": list(run.classes),
              "normalisation": answer["normalisation"], "versions": answer["versions"],
              "device": answer["device"], "metrics": metrics,
              "files": {k: str(out / f) for k, f in (("metrics", "metrics.json"),
                                                      ("predictions", "predictions.csv"),
                                                      ("confusion", "confusion.csv"))}}
    write_json_atomic(out / "metrics.json", record)
    return record


def eval_text(record: dict) -> str:
    """The terminal summary of ``evaluate``: top-1 (top-5 for more than 5 classes), per class,
    the confusion matrix and the files written."""
    m, classes = record["metrics"], record["classes"]
    lines = [f"{Path(record['run']).name} ({record['backend']}, checkpoint {record['checkpoint']}) "
             f"on {record['data']}: {record['images']} image(s), {len(classes)} classes"]
    if record["skipped"]:
        lines.append(f"  skipped {len(record['skipped'])} unreadable file(s), e.g. "
                     f"{record['skipped'][0][0]}")
    top = f"  top-1 {100 * m['top1']:.1f} %"
    if len(classes) > 5:  # with 5 classes or fewer top-5 is 100 % by construction
        top += f", top-5 {100 * m['top5']:.1f} %"
    lines.append(f"{top}, loss {m['loss']:.3f}")
    width = max(len(c) for c in classes)
    lines.append("  per class (accuracy, images):")
    for i, c in enumerate(classes):
        acc = m["per_class"][c]
        n = sum(m["confusion"][i])
        lines.append(f"    {c:<{width}}  {'      —' if acc is None else f'{100 * acc:5.1f} %'}  {n}")
    lines.append("  confusion (rows: true, columns: predicted):")
    short = [c[:8] for c in classes]
    cell = max(4, *(len(s) for s in short))
    lines.append(f"    {'':<{width}}  " + " ".join(f"{s:>{cell}}" for s in short))
    for c, row in zip(classes, m["confusion"]):
        lines.append(f"    {c:<{width}}  " + " ".join(f"{v:>{cell}}" for v in row))
    lines.append("  written: " + ", ".join(record["files"].values()))
    return "\n".join(lines)


# ------------------------------------------------------------------ predict

def predict(run: SavedRun, checkpoint: Path, images: list[str], top_k: int = 5) -> list[dict]:
    """Class probabilities of each image: ``[{"path", "top": [(class, p), ...]}]``; an image
    that cannot be read is one line before any framework starts."""
    from common.verify import inspect_image

    for image in images:
        if Path(image).is_dir():
            raise SavedRunError(f"{image!r} is a folder; bench predict takes image files "
                                f"(bench eval --data takes a folder)")
        info = inspect_image(image)
        if info.problem:
            raise SavedRunError(f"image {image!r} cannot be read: {info.problem}")
    answer = run_in_backend(run, {"action": "logits", "checkpoint": str(checkpoint),
                                  "images": [[str(Path(p).resolve()), 0] for p in images]})
    probabilities = np.exp(log_softmax(np.asarray(answer["logits"], np.float64)))
    k = min(top_k, len(run.classes))
    out = []
    for path, p in zip(images, probabilities):
        order = np.argsort(-p, kind="stable")[:k]
        out.append({"path": path, "top": [(run.classes[i], float(p[i])) for i in order]})
    return out


def predict_text(run: SavedRun, checkpoint: Path, predictions: list[dict]) -> str:
    lines = [f"{run.name} ({run.config.backend}, {checkpoint.name} checkpoint):"]
    for item in predictions:
        lines.append(item["path"])
        lines += [f"  {p:6.1%}  {c}" for c, p in item["top"]]
    return "\n".join(lines)


# ------------------------------------------------------------------ export

def export(run: SavedRun, fmt: str, checkpoint: str = "best", out: Path | None = None) -> dict:
    """The run's ``checkpoint`` written in ``fmt`` (``RUN/export/<fmt>/`` by default) and
    checked on a golden batch of its test images; ``export.json`` beside it says what the
    exported model takes (layout, size, normalisation, classes) and what the check found."""
    formats = backend_info(run.config.backend).export_formats
    if fmt not in formats:
        raise SavedRunError(f"--format {fmt!r}: the {run.config.backend} backend exports "
                            f"{', '.join(formats) or 'nothing'}")
    base = run.checkpoint(checkpoint)
    golden = run.test_images()[:GOLDEN_IMAGES]
    if not golden:
        raise SavedRunError(f"run {str(run.path)!r} has no test images for the golden batch")
    directory = (out or run.path / "export" / fmt).resolve()
    _check_writable(directory, "give another folder with --out")  # before the framework starts
    answer = run_in_backend(run, {"action": "export", "checkpoint": str(base), "format": fmt,
                                  "directory": str(directory),
                                  "images": [[s.path, s.label] for s in golden]})
    record = {**answer["export"], "run": str(run.path), "backend": run.config.backend,
              "model": run.config.model.name, "checkpoint": checkpoint,
              "image_size": run.image_size, "normalisation": answer["normalisation"],
              "classes": list(run.classes), "versions": answer["versions"]}
    write_json_atomic(directory / "export.json", record)
    return record


def export_text(record: dict) -> str:
    return (f"{Path(record['run']).name} ({record['backend']}, checkpoint {record['checkpoint']}) "
            f"exported as {record['format']}: {record['path']}\n"
            f"  check: logits equal the native model's within {record['tolerance']:g} on "
            f"{record['golden_images']} test image(s) (max abs diff {record['max_abs_diff']:.2g})\n"
            f"  input: {record['input']['layout']} float32 {record['input']['shape']}, "
            f"normalisation {record['normalisation']!r}; output: logits over "
            f"{len(record['classes'])} classes (export.json)")


__all__ = ["SavedRun", "SavedRunError", "BackendProcessFailed", "ExportCheckError", "open_run", "open_target", "evaluate",
           "eval_text", "predict", "predict_text", "export", "export_text"]
