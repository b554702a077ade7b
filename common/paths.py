"""Where the suite keeps what it generates and caches (framework-free).

One root, ``$TRANSFER_BENCH_DATA`` or ``./data``, holds the synthetic domains
(``synthetic/``), the source-pretrained weights (``weights/<backend>/``),
slim's ImageNet checkpoints (``weights/imagenet/slim``) and the linear-probe
feature cache (``features/``). Nothing else is written outside ``--out``.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "TRANSFER_BENCH_DATA"


def cache_root() -> Path:
    """The root of generated data and caches: ``$TRANSFER_BENCH_DATA`` or ``./data``."""
    return Path(os.environ.get(CACHE_ENV, "data")).resolve()
