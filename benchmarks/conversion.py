"""Weights across frameworks: native checkpoint -> canonical ``.npz`` -> native checkpoint.

Each direction runs in its own framework's process (docs/design.md, "Weights
and parity"): reading a checkpoint is the source backend's
``convert.read_canonical`` and writing one is the target backend's
``convert.write_canonical``, each either in a child process
(``python -m benchmarks.weights_worker``) or in a process that already runs
that framework (a run's own child writes its backend's checkpoint). The
canonical ``.npz`` in between is framework-free, and its digest is what every
result records.

Caches (the source model of a sweep, conversions of a user's checkpoint) are
folders under ``<cache root>/weights/`` built while holding their claim
(``common.locks``), each backend's checkpoint written into a temporary folder
renamed into place whole, so two processes never see half a checkpoint and
never convert the same thing twice.
"""

from __future__ import annotations

import hashlib
import logging
import importlib
import os
import shutil
import tempfile
from pathlib import Path

from backends.base import BackendError, availability, backend_info, backend_names, loaded_infos
from benchmarks.child import run_json_child
from common import canonical
from common.locks import claim_directory
from common.models import get_model
from common.paths import cache_root, kind_of

log = logging.getLogger(__name__)

CANONICAL = "canonical"  # the framework-free format, as a --from / --to value
WORKER = "benchmarks.weights_worker"


def source_backend_order() -> list[str]:
    """The fixed, documented choice of the backend that pretrains the source model of a
    sweep: the first installed of these (``BackendInfo.source_order``; docs/running.md)."""
    ranked = [(info.source_order, name) for name, info in loaded_infos()
              if info.source_order is not None]
    return [name for _, name in sorted(ranked)]


# ------------------------------------------------------------------ formats

def _converting_infos():
    """The descriptors of the registry entries that convert weights, in registry order."""
    return [info for _, info in loaded_infos() if info.converter]


def detect_format(path: str | Path) -> str | None:
    """Which backend wrote the checkpoint at ``path``, or None: ``.npz`` canonical, else the
    first registry entry that converts weights and whose ``BackendInfo.wrote`` it (by its
    ``checkpoint_suffixes`` or ``checkpoint_files``): ``.pt``/``.pth`` pytorch,
    ``.weights.h5`` keras, a TF checkpoint prefix (``NAME.index`` beside it), one of its
    files or a folder with a ``checkpoint`` file slim."""
    p = Path(path)
    if p.name.endswith(".npz"):
        return CANONICAL
    return next((info.name for info in _converting_infos() if info.wrote(p)), None)


def _several_files(backend: str | None) -> bool:
    """Whether ``backend``'s checkpoint is several files under a prefix (a TF checkpoint)."""
    try:
        return backend not in (None, CANONICAL) and bool(backend_info(backend).checkpoint_files)
    except BackendError:
        return False


# The first bytes of the files a checkpoint may be: torch.save's zip (and numpy's .npz), the
# pickle stream of torch's legacy format, HDF5 (Keras .weights.h5).
CHECKPOINT_MAGIC = {b"PK\x03\x04": "zip", b"\x80": "pickle", b"\x89HDF\r\n\x1a\n": "HDF5"}


def checkpoint_problem(path: str | Path) -> str | None:
    """Why ``path`` is not a checkpoint ``--weights PATH`` can restore, or None: it does not
    exist, is a folder (other than a TF checkpoint folder) or another special file, or its
    first bytes are none of a zip, a pickle or HDF5 (a TF checkpoint is its ``.index``).
    Framework-free: the ``bench`` parent and the run's process ask the same question."""
    p = Path(path)
    found = detect_format(p)
    if _several_files(found) and backend_info(found).checkpoint_module().is_complete(p):
        return None
    kind = kind_of(p)
    if kind is None:
        return "does not exist"
    if kind == "a folder":
        return "is a folder, not a checkpoint file (a TF checkpoint folder holds a 'checkpoint' file)"
    if kind != "a file":
        return f"is {kind}, not a checkpoint file"
    with open(p, "rb") as f:
        head = f.read(8)
    if not any(head.startswith(m) for m in CHECKPOINT_MAGIC):
        return ("is not a checkpoint: its first bytes are none of a zip (torch.save, .npz), a "
                "pickle (torch's legacy format) or HDF5 (.weights.h5)")
    return None


def converter(backend: str):
    """The backend's ``convert`` module (sets its environment, imports its framework)."""
    info = backend_info(backend)
    if not info.converter:
        raise BackendError(f"the {backend} backend cannot convert weights")
    info.apply_environment()
    return importlib.import_module(info.converter)


def can_convert(backend: str, model: str) -> bool:
    """``backend`` is installed and reads/writes ``model`` as canonical weights."""
    try:
        return availability(backend) is None and backend_info(backend).converts(model)
    except BackendError:
        return False


def source_backend(model: str, run_backend: str) -> str:
    """The backend whose pretrained source model a ``run_backend`` run starts from: the
    first installed of ``source_backend_order()`` that converts ``model``, or the run's own
    backend when it (or the model) cannot convert."""
    if not can_convert(run_backend, model):
        return run_backend
    return next((b for b in source_backend_order() if can_convert(b, model)), run_backend)


def run_weights_worker(args: list, progress: bool = False) -> dict:
    """``benchmarks.weights_worker`` in a child process; its result, or a one-line error.
    ``progress``: the child's log messages are logged here as they come (pretraining)."""
    result = run_json_child(WORKER, [str(a) for a in args], progress=progress)
    if result.get("status") != "ok":
        raise canonical.ConversionError(result.get("error") or f"{WORKER} {args[0]} failed")
    return result


def to_canonical(backend: str, model: str, native: str | Path, out: Path,
                 in_process: bool = False) -> dict:
    """Write the canonical ``.npz`` of ``backend``'s checkpoint ``native`` to ``out``;
    returns its metadata (digest, dropped tensors)."""
    if backend == CANONICAL:
        tensors, meta = canonical.load(Path(native))
        canonical.check(model, tensors, get_model(model).feature_dim)
        return canonical.save(out, model, tensors, meta)
    if in_process:
        tensors, meta = converter(backend).read_canonical(model, native)
        return canonical.save(out, model, tensors, {**meta, "source_backend": backend,
                                                    "source_file": str(native)})
    return run_weights_worker(["read", "--backend", backend, "--model", model, "--input", native,
                               "--output", out])["meta"]


def from_canonical(backend: str, model: str, npz: Path, out: str | Path,
                   in_process: bool = False) -> Path:
    """Write ``backend``'s native checkpoint of the canonical ``npz`` at ``out``; returns
    the file (or the TF checkpoint prefix)."""
    if backend == CANONICAL:
        tensors, meta = canonical.load(npz)
        canonical.save(Path(out), model, tensors, meta)
        return Path(out)
    if in_process:
        tensors, meta = canonical.load(npz)
        return Path(converter(backend).write_canonical(model, tensors, out, meta))
    return Path(run_weights_worker(["write", "--backend", backend, "--model", model,
                                    "--input", npz, "--output", out])["output"])


def check_convertible(model: str, *backends: str) -> None:
    """One line when ``model`` cannot be converted, or a backend cannot do it here."""
    reason = canonical.conversion_refusal(model)
    if reason:
        raise canonical.ConversionError(reason)
    for b in backends:
        if b == CANONICAL:
            continue
        if b not in backend_names():
            raise BackendError(f"unknown backend {b!r}; choose one of: "
                               f"{', '.join(source_backend_order())}, {CANONICAL}")
        why = availability(b)
        if why:
            raise BackendError(f"backend {b!r} is not available: {why}")
        if not backend_info(b).converter:  # an optional capability (BackendInfo.converter)
            raise canonical.ConversionError(f"the {b} backend does not convert weights")
        if not backend_info(b).converts(model):
            raise canonical.ConversionError(f"the {b} backend has no conversion table for {model}")


def convert_checkpoint(model: str, source: str, target: str, input_path: str | Path,
                       output: str | Path) -> dict:
    """``bench weights convert``: ``source``'s checkpoint -> ``target``'s, each side in its
    own child process; returns ``{"output", "digest", "dropped"}``."""
    check_convertible(model, source, target)
    found = detect_format(input_path)
    if found is None or not (Path(input_path).exists() or _several_files(found)):
        raise BackendError(f"--input {str(input_path)!r} is not a checkpoint (.pt, .weights.h5, a "
                           f"TF checkpoint prefix or a canonical .npz)")
    if found != source:
        raise BackendError(f"--input {str(input_path)!r} is a {found} checkpoint (by its name), "
                           f"not {source}; pass --from {found}")
    with tempfile.TemporaryDirectory(prefix="bench-convert-") as tmp:
        npz = Path(tmp) / "canonical.npz"
        meta = to_canonical(source, model, input_path, npz)
        written = from_canonical(target, model, npz, output)
    return {"output": str(written), "digest": meta["digest"], "dropped": meta.get("dropped", [])}


# ------------------------------------------------------------------ caches

def write_native_atomically(backend: str, model: str, npz: Path, folder: Path, name: str,
                            in_process: bool) -> Path:
    """``folder/<name><suffix>`` (``folder`` created by one rename): ``backend``'s checkpoint
    of ``npz``. Call while holding the claim of ``folder.parent``."""
    suffix = backend_info(backend).checkpoint_suffix
    tmp = folder.parent / f".{folder.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        from_canonical(backend, model, npz, tmp / name, in_process=in_process)
        os.rename(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder / f"{name}{suffix}"


def file_signature(path: str | Path) -> str:
    """Identity of a user's checkpoint for caches: its resolved path, size and mtime (a TF
    prefix by its ``.index`` file)."""
    p = Path(path)
    stat_of = p if p.exists() else Path(str(p) + ".index")
    st = stat_of.stat()
    return f"{stat_of.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def path_cache_dir(model: str, path: str | Path) -> Path:
    key = hashlib.sha256(f"{model}|{file_signature(path)}".encode()).hexdigest()[:16]
    return cache_root() / "weights" / "converted" / f"{model}-{key}"


def canonical_of_path(model: str, fmt: str, path: str | Path, in_process: bool) -> tuple[Path, dict]:
    """The cached canonical ``.npz`` of a user's checkpoint (made once) and its metadata."""
    cache = path_cache_dir(model, path)
    npz = cache / "canonical.npz"
    with claim_directory(cache, wait=None):
        if not npz.is_file():
            to_canonical(fmt, model, path, npz, in_process=in_process)
    return npz, canonical.load(npz)[1]


def native_of_path(model: str, backend: str, npz: Path, in_process: bool) -> Path:
    """The cached ``backend`` checkpoint converted from the canonical ``npz`` beside it."""
    folder = npz.parent / backend
    suffix = backend_info(backend).checkpoint_suffix
    with claim_directory(npz.parent, wait=None):
        if not folder.is_dir():
            write_native_atomically(backend, model, npz, folder, "weights", in_process)
    return folder / f"weights{suffix}"


def alignment_record(backend: str, model: str, weights_kind: str) -> dict:
    """What this run's model changes to compute what the other frameworks compute
    (result["weights"]["alignment"]): ``suite`` for suite-made weights and random init,
    ``native`` (the framework's own model) for its ImageNet weights."""
    try:
        entry = backend_info(backend).models().get(model)
    except BackendError:
        entry = None
    changes = list(getattr(entry, "alignment", ()) or ())
    if weights_kind == "imagenet" and get_model(model).shared_imagenet is None:
        return {"mode": "native", "changes": [],
                "note": "the framework's own model, as its ImageNet weights expect"}
    return {"mode": "suite", "changes": changes}

