"""The result schema shared by every backend: typed, versioned, written atomically.

One ``result.json`` per (backend, recipe, seed) run. Reports are built only
from these files, so any report can be regenerated from a run directory.

The schema types the core (``Result`` and its parts ``DataInfo``,
``WeightsInfo``, ``Metrics``, ``Throughput``, ``Times``) and keeps every
part permissive: a key the schema does not know (a field another part of the
suite added, a newer schema's field) is kept in the part's ``extra`` and
written back unchanged. ``write_result`` checks a result against the schema
before writing it; ``load_results`` reads a run directory and sorts its files
into readable results and unreadable files (with the reason), and notes for
each readable result the fields of this schema version it lacks (an older
file is shown with those fields "not available", never dropped).
The field types are read from the dataclasses themselves (``common.schema``, which
also types recipes and run configurations).

Schema versions: 1 (the first); 2 adds ``test.predictions`` (the predicted
class index of every test image, in split order) and ``test.labels`` (their
true class indices), so that backends can be compared image by image.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.schema import field_kinds

SCHEMA_VERSION = 2
STATUSES = ("ok", "failed", "skipped")

# Top-level keys every result has, whatever its status: a file without them is unreadable.
REQUIRED_KEYS = ("schema_version", "status", "error", "backend", "recipe", "seed", "model",
                 "config", "versions", "device")
# Keys an "ok" result adds.
OK_KEYS = ("data", "weights", "phases", "curves", "best", "val", "test", "throughput", "times")
# Fields of an "ok" result of this schema that the report uses; an older file may lack some.
OK_FIELDS = OK_KEYS + ("preprocessing", "test.top1", "test.top5", "test.per_class",
                       "test.confusion", "test.predictions", "test.labels", "throughput.phase")


class SchemaError(ValueError):
    """A result that does not fit the schema; ``str(err)`` names the field."""


# ------------------------------------------------------------------ the schema

_NUMBERS = {float: (int, float), int: (int,)}


@dataclass
class Record:
    """A typed part of a result. Unknown keys are kept in ``extra`` (and written back)."""

    extra: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, value: Any, where: str = "result"):
        """``value`` (a dict from JSON) as this record; SchemaError when a field has the wrong type."""
        if value is None:
            return None
        if not isinstance(value, dict):
            raise SchemaError(f"{where} is a JSON {_json_type(value)}, expected an object")
        kinds = field_kinds(cls)
        known = [f.name for f in dataclasses.fields(cls) if not f.metadata.get("local")]
        kwargs = {n: _typed(kinds[n], value[n], f"{where}.{n}") for n in known if n in value}
        for f in dataclasses.fields(cls):
            low, high = f.metadata.get("range", (None, None))
            v = kwargs.get(f.name)
            if low is not None and v is not None and not low <= v <= high:
                raise SchemaError(f"{where}.{f.name} is {v!r}, outside [{low:g}, {high:g}] "
                                  f"({f.metadata['what']})")
        return cls(**kwargs, extra={k: v for k, v in value.items() if k not in known})

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            if f.name != "extra" and not f.metadata.get("local"):
                v = getattr(self, f.name)
                out[f.name] = v.to_dict() if isinstance(v, Record) else v
        return {**out, **self.extra}


def _json_type(value: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number" if isinstance(value, (int, float)) else type(value).__name__)


def _typed(kind: type, value: Any, where: str) -> Any:
    """``value`` (or null) checked against a field's kind (``common.schema.field_kinds``: a
    Record, number, str, list or dict)."""
    if value is None:
        return None
    if isinstance(kind, type) and issubclass(kind, Record):
        return kind.parse(value, where)
    allowed = _NUMBERS.get(kind, (kind,))
    if isinstance(value, bool) or not isinstance(value, allowed):
        expected = {float: "a number", int: "an integer", str: "a string", list: "an array",
                    dict: "an object"}[kind]
        raise SchemaError(f"{where} is a JSON {_json_type(value)}, expected {expected}")
    return value


def _fraction() -> Any:
    """A share in [0, 1] (an accuracy): 1.7 is refused, not shown as 170 %."""
    return field(default=None, metadata={"range": (0.0, 1.0), "what": "a share of images"})


def _local() -> Any:
    """A field that is not part of the file (where it was read from, what it lacks)."""
    return field(default=None, metadata={"local": True})


@dataclass
class DataInfo(Record):
    source: str | None = None
    root: str | None = None
    split_digest: str | None = None
    classes: list | None = None
    num_classes: int | None = None
    image_size: int | None = None
    counts: dict | None = None


@dataclass
class WeightsInfo(Record):
    kind: str | None = None            # none | source | imagenet | path
    digest: str | None = None          # sha256 over the canonical tensors of the starting weights
    source_backend: str | None = None  # the backend that made (or first held) those weights
    converted_from: str | None = None  # the other backend's checkpoint they were converted from
    checkpoint: str | None = None      # the native checkpoint this run restored
    alignment: dict | None = None      # {mode: suite | native, changes: [...]}: see ModelEntry.alignment
    conversion: str | None = None      # why there is no digest (a model that does not convert...)


@dataclass
class Metrics(Record):
    top1: float | None = _fraction()
    top5: float | None = _fraction()
    loss: float | None = None
    per_class: dict | None = None
    confusion: list | None = None
    count: int | None = None
    predictions: list | None = None    # predicted class index per image, in split order
    labels: list | None = None         # true class index per image, in split order


@dataclass
class Throughput(Record):
    precision: str | None = None
    train: dict | None = None
    infer: dict | None = None
    phase: dict | None = None
    peak_memory_bytes: float | None = None
    end_to_end_train_images_per_second: float | None = None
    timed_step: str | None = None    # what a timed step is (common.timing.timed_step), per backend
    # the run whose measurement this is, when an earlier seed's run of the same (backend,
    # recipe) in the sweep measured it on the same device (benchmarks.runner.earlier_throughput)
    measured_in: str | None = None


@dataclass
class Times(Record):
    total_seconds: float | None = None
    attempt_seconds: list | None = None  # wall seconds of each attempt, when a run was resumed
    pretrain_seconds: float | None = None   # the source weights: cache, conversion, pretraining
    # the part of pretrain_seconds that pretrained the sweep's shared source model in this run
    # (not in total_seconds: the report shows it once, on its own line)
    source_pretrain_seconds: float | None = None
    train_seconds: float | None = None
    throughput_seconds: float | None = None
    # where the time went (common.timing.Timeline): Unix time of the origin (the worker's
    # process start), spans and windows in seconds since then, and when the run ended
    started_at: float | None = None
    spans: list | None = None
    windows: list | None = None
    ended: float | None = None


@dataclass
class Result(Record):
    """One run's result.json."""

    schema_version: int | None = None
    status: str | None = None
    error: str | None = None
    backend: str | None = None
    recipe: str | None = None
    seed: int | None = None
    model: str | None = None
    config: dict | None = None
    versions: dict | None = None
    device: dict | None = None
    data: DataInfo | None = None
    weights: WeightsInfo | None = None
    preprocessing: dict | None = None
    fidelity: dict | None = None     # training-step switch -> native | aligned (common.config)
    phases: list | None = None
    curves: list | None = None
    best: dict | None = None
    val: Metrics | None = None
    test: Metrics | None = None
    throughput: Throughput | None = None
    times: Times | None = None
    peak_rss_bytes: float | None = None
    path: str | None = _local()
    lacks: list | None = _local()

    def to_dict(self) -> dict:
        """The JSON form: required keys always, other top-level fields when set."""
        return {k: v for k, v in super().to_dict().items() if v is not None or k in REQUIRED_KEYS}

    @property
    def name(self) -> str:
        return run_name(self.backend, self.recipe, self.seed)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def lacking_fields(raw: dict) -> list[str]:
    """The ``OK_FIELDS`` an ok result lacks (missing or null); none for failed or skipped."""
    if raw.get("status") != "ok":
        return []
    out = []
    for path in OK_FIELDS:
        value: Any = raw
        for key in path.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        if value is None:
            out.append(path)
    return out


# ------------------------------------------------------------------- writing

def _clean(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf become null, numpy scalars become Python numbers."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()
    if hasattr(obj, "tolist") and callable(obj.tolist):
        return _clean(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON to ``path`` via a temporary file and ``os.replace``."""
    write_text_atomic(path, json.dumps(_clean(payload), indent=2, sort_keys=True, allow_nan=False) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file of this process and ``os.replace``:
    readers see the old file or the new one, never half of one, also when two processes
    write the same path; the file gets the permissions the umask gives a new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a result is for every reader
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process umask, read without changing it where the OS allows."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_result(path: Path, result: dict | Result) -> None:
    """Check ``result`` against the schema and write it atomically (extra keys kept)."""
    if isinstance(result, Result):
        result = result.to_dict()
    write_json_atomic(path, Result.parse(_clean(result)).to_dict())


def validate_result(result: dict) -> list[str]:
    """Problems with ``result`` against the schema (empty when valid)."""
    problems = [f"missing key {k!r}" for k in REQUIRED_KEYS if k not in result]
    try:
        Result.parse(result)
    except SchemaError as err:
        problems.append(str(err))
    if result.get("status") not in STATUSES:
        problems.append(f"status {result.get('status')!r} not in {STATUSES}")
    if result.get("status") == "ok":
        problems += [f"an ok result lacks {p!r}" for p in lacking_fields(result)]
    elif result.get("status") == "failed" and not result.get("error"):
        problems.append("a failed result must say its error")
    return problems


def cpu_name() -> str:
    """The CPU model ("Intel(R) Xeon(R) ..."), for device records of CPU runs."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def base_result(backend: str, recipe: str, seed: int, model: str, config: dict) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "status": "failed",
        "error": None,
        "backend": backend,
        "recipe": recipe,
        "seed": seed,
        "model": model,
        "config": config,
        "versions": {"python": platform.python_version()},
        "device": {"kind": "cpu", "name": cpu_name()},
    }


# ------------------------------------------------------------------- reading

@dataclass
class Unreadable:
    """A result file that could not be used, and why (one line)."""

    path: str
    reason: str


@dataclass
class RunResults:
    """What ``load_results`` found in a run directory."""

    results: list[Result]
    unreadable: list[Unreadable]

    @property
    def lacking(self) -> list[Result]:
        """Readable results that lack fields of this schema (older files)."""
        return [r for r in self.results if r.lacks]


def read_result(path: Path) -> Result:
    """One result file; SchemaError (one line) when it is not a readable result."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise SchemaError(f"not valid JSON, truncated or corrupt ({err.msg}: line {err.lineno} "
                          f"column {err.colno})") from None
    except UnicodeDecodeError:
        raise SchemaError("not UTF-8 text") from None
    except OSError as err:
        raise SchemaError(f"cannot be read ({err.strerror})") from None
    if not isinstance(raw, dict):
        raise SchemaError(f"a JSON {_json_type(raw)}, not a result object")
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise SchemaError(f"lacks the required key{'s' * (len(missing) > 1)} {', '.join(missing)}")
    if raw["status"] not in STATUSES:
        raise SchemaError(f"status {raw['status']!r} is not one of {', '.join(STATUSES)}")
    result = Result.parse(raw)
    if not isinstance(result.backend, str) or not isinstance(result.recipe, str) or result.seed is None:
        raise SchemaError("backend, recipe and seed must be set")
    result.path, result.lacks = str(path), lacking_fields(raw)
    return result


def load_results(run_dir: Path) -> RunResults:
    """Every ``*/result.json`` under ``run_dir``: readable results sorted by backend, recipe,
    seed, and the unreadable files with their reasons."""
    results, unreadable = [], []
    for p in sorted(Path(run_dir).glob("*/result.json")):
        try:
            results.append(read_result(p))
        except SchemaError as err:
            unreadable.append(Unreadable(str(p), str(err)))
    results.sort(key=lambda r: (r.backend, r.recipe, r.seed))
    return RunResults(results, unreadable)


def read_results(run_dir: Path) -> list[dict]:
    """The readable results of ``run_dir`` as dicts (``_path``: the file), sorted by backend,
    recipe, seed; see ``load_results`` for the unreadable ones."""
    return [{**r.to_dict(), "_path": r.path} for r in load_results(run_dir).results]


def run_name(backend: str, recipe: str, seed: int) -> str:
    return f"{backend}-{recipe}-s{seed}"
