"""A fourth backend, outside the suite's package: numpy softmax regression on thumbnails.

It is the proof that a backend is one folder plus one registry line
(docs/design.md, "Adding a backend"): this folder and
``TRANSFER_BENCH_BACKENDS="toy=toy_backend:INFO"`` (with ``tests/`` on
``PYTHONPATH``), no other file edited. ``INFO`` declares only the core facts and
the one optional capability it has (``export_formats``); it has no catalog (it
takes any model of ``common.models``), no conversion, parity, sweep or data
parallel, and every command that needs one of those refuses it in one line
(``tests/test_toy_backend.py``). Its import is light, as every backend package's:
``backend.ToyBackend`` is imported only by ``backends.base.get_backend``.
"""

from backends.base import BackendInfo

INFO = BackendInfo(
    name="toy",
    backend_class="toy_backend.backend:ToyBackend",
    requires=("numpy",),
    install_hint="pip install numpy",
    checkpoint_suffix=".pkl",  # pickle of the arrays (backend.py)
    export_formats=("npz",),   # backend.ToyBackend._export
    color="#8c564b",
    description="numpy softmax regression on 8x8 thumbnails (the tests' toy backend)",
    in_all=False,  # --backend all stays one entry per framework; name it
)
