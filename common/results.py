"""The result schema shared by every backend, and its atomic writer.

One ``result.json`` per (backend, recipe, seed) run. Reports are built only
from these files, so any report can be regenerated from a run directory.
"""

from __future__ import annotations

import json
import math
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
STATUSES = ("ok", "failed", "skipped")

# Top-level keys every result has, whatever its status.
REQUIRED_KEYS = ("schema_version", "status", "error", "backend", "recipe", "seed", "model",
                 "config", "versions", "device")
# Keys an "ok" result adds.
OK_KEYS = ("data", "weights", "phases", "curves", "best", "val", "test", "throughput", "times")


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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a result is for every reader
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(_clean(payload), f, indent=2, sort_keys=True, allow_nan=False)
            f.write("\n")
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


def validate_result(result: dict) -> list[str]:
    """Problems with ``result`` against the schema (empty when valid)."""
    problems = [f"missing key {k!r}" for k in REQUIRED_KEYS if k not in result]
    if result.get("status") not in STATUSES:
        problems.append(f"status {result.get('status')!r} not in {STATUSES}")
    if result.get("status") == "ok":
        problems += [f"missing key {k!r} in an ok result" for k in OK_KEYS if k not in result]
        test = result.get("test") or {}
        for k in ("top1", "top5", "per_class", "confusion", "loss"):
            if k not in test:
                problems.append(f"test metrics lack {k!r}")
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


def read_results(run_dir: Path) -> list[dict]:
    """Every ``*/result.json`` under ``run_dir``, sorted by backend, recipe, seed."""
    results = []
    for p in sorted(Path(run_dir).glob("*/result.json")):
        try:
            r = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        r["_path"] = str(p)
        results.append(r)
    results.sort(key=lambda r: (r.get("backend", ""), r.get("recipe", ""), r.get("seed", 0)))
    return results


def run_name(backend: str, recipe: str, seed: int) -> str:
    return f"{backend}-{recipe}-s{seed}"
