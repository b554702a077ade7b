"""``bench weights where`` and ``bench weights fetch``.

Both ask the backends themselves (``backends.base.BackendInfo``): ``where``
reads each backend's catalog without importing a framework; ``fetch`` uses
the framework's own download mechanism — torchvision weight enums,
``keras.utils.get_file`` as ``keras.applications`` does, the official slim
archive — so the file lands in exactly the cache that ``--weights imagenet``
reads.
"""

from __future__ import annotations

import sys

from backends.base import backend_info, loaded_infos
from common.models import MODELS


def where_rows() -> list[dict]:
    """One row per (backend, model with ImageNet weights): file, path, present, source URL."""
    rows = []
    for name, info in loaded_infos():
        for model, entry in info.models().items():
            if entry.imagenet is None:
                continue
            path = info.imagenet_location(model)
            rows.append({"backend": name, "model": model, "file": entry.imagenet.file,
                         "path": str(path), "present": info.imagenet_present(model),
                         "source": entry.imagenet.url})
    # ImageNet weights shared by every backend: one file in an installed package
    for model, spec in MODELS.items():
        shared = spec.shared_imagenet
        if shared is None:
            continue
        found = shared.location()
        rows.append({"backend": "all", "model": model, "file": shared.file,
                     "path": str(found) if found else f"(pip install -e '.[{shared.extra}]': "
                                                      f"{shared.distribution})",
                     "present": found is not None and found.is_file(),
                     "source": shared.distribution})
    return rows


def where_table() -> str:
    rows = where_rows()
    w_b = max(len(r["backend"]) for r in rows)
    w_m = max(len(r["model"]) for r in rows)
    lines = [f"{'backend':{w_b}s}  {'model':{w_m}s}  present  path"]
    for r in rows:
        lines.append(f"{r['backend']:{w_b}s}  {r['model']:{w_m}s}  {'yes' if r['present'] else 'no ':7s}  "
                     f"{r['path']}")
    lines.append("")
    lines.append("Offline: copy each file to the path shown (slim: extract the .ckpt files from the "
                 "official .tar.gz there), or pass --weights PATH.")
    return "\n".join(lines)


def fetch(backend: str, model: str) -> int:
    """Download ImageNet weights for ``backend``/``model`` into its cache; 0 on success."""
    info = backend_info(backend)
    entry = info.entry(model)
    if entry.imagenet is None:
        print(f"bench: error: no ImageNet weights known for {backend} {model}", file=sys.stderr)
        return 2
    try:
        path = info.fetch_imagenet(model)
    except Exception as err:  # URLError, keras' download Exception, a bad archive...
        first = (str(err).splitlines() or [""])[0][:200]
        print(f"bench: error: download failed ({type(err).__name__}: {first}); "
              f"{info.offline_message(model)}", file=sys.stderr)
        return 1
    print(f"{backend} {model}: ImageNet weights at {path}")
    return 0
