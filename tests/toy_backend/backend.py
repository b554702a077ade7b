"""The toy backend's framework side: softmax regression in numpy on 8x8 thumbnails.

``ToyBackend`` is what ``toy_backend.INFO`` names; it runs the real driver, runner,
result files and reports in well under a second per run. ``FakeBackend`` is the same
backend registered as a class, for the harness tests:
``TRANSFER_BENCH_BACKENDS=fake=fake_backend:FakeBackend`` (with ``tests/`` on
``PYTHONPATH``). ``FAKE_BACKEND_CRASH`` makes it fail on purpose: ``raise`` (a Python
error in fit), ``segfault`` (the process dies), ``sleep`` (each epoch sleeps 2 s, for
interruption tests), ``enospc`` (saving a checkpoint finds the disk full), ``nan`` (the
epoch's loss is NaN, as a diverged run's); ``FAKE_BACKEND_CRASH_EPOCH=N`` limits it to
global epoch N; ``FAKE_BACKEND_SETUP_SLEEP=S`` sleeps S seconds in ``setup`` (a child of
bench eval or bench throughput to kill). Its one export format, ``npz``, writes the
arrays and reads them back; ``FAKE_EXPORT_OFFSET`` adds that much to the exported logits
(an export that fails its check).
"""

from __future__ import annotations

import errno
import os
import pickle
import signal
import time
from pathlib import Path

import numpy as np

from backends.base import Backend
from common.data import load_batch
from common.metrics import log_softmax
from common.progress import progress
from common.timing import measure_steps, timed_step

THUMB = 8


def _crash(global_epoch: int) -> str | None:
    """The crash asked for by ``FAKE_BACKEND_CRASH`` in this epoch, if any."""
    at = os.environ.get("FAKE_BACKEND_CRASH_EPOCH")
    if at and int(at) != global_epoch:
        return None
    return os.environ.get("FAKE_BACKEND_CRASH")


class ToyBackend(Backend):
    name = "toy"
    checkpoint_suffix = ".pkl"  # as toy_backend.INFO says
    export_formats = ("npz",)

    def frameworks(self):
        return {"numpy": np.__version__}

    def device(self):
        return {"kind": "cpu", "name": "numpy"}

    def _setup(self, split, image_size):
        time.sleep(float(os.environ.get("FAKE_BACKEND_SETUP_SLEEP", 0)))  # for kill tests
        self.rng = np.random.default_rng(self.config.train.seed)
        self._data = {}

    @property
    def data(self):
        """Thumbnails of each subset, decoded on first use (throughput needs none)."""
        if not self._data:
            for name in ("train", "val", "test"):
                x, y = load_batch(self.split.subset(name), THUMB)
                self._data[name] = (x.reshape(len(x), THUMB * THUMB * 3).astype(np.float64) / 255.0, y)
        return self._data

    def _build(self, model, num_classes, weights, head_hidden_units):
        d = THUMB * THUMB * 3
        self.params = {"stem.W": self.rng.normal(0, 0.1, (d, 16)),
                       "head.W": self.rng.normal(0, 0.1, (16, num_classes)), "head.b": np.zeros(num_classes)}
        if weights.kind == "path":
            with open(weights.path, "rb") as f:
                self.params["stem.W"] = pickle.load(f)["params"]["stem.W"]
        self.lr = 0.1

    def _apply_phase(self, phase, index):
        self.trainable = ["head.W", "head.b"] + (["stem.W"] if phase.train in ("all", "top", "blocks") else [])
        n = sum(self.params[k].size for k in self.trainable)
        return {"trainable_blocks": ["stem"] if "stem.W" in self.trainable else [], "trainable_params": n,
                "total_params": sum(v.size for v in self.params.values()),
                "trainable_tensors": len(self.trainable), "native": {"arrays": list(self.trainable)}}

    def _set_learning_rate(self, lr):
        self.lr = lr * 50

    def _forward(self, x):
        h = np.maximum(x @ self.params["stem.W"], 0)
        return h, h @ self.params["head.W"] + self.params["head.b"]

    def _fit_epoch(self, phase, global_epoch):
        self.epoch = global_epoch
        crash = _crash(global_epoch)
        if crash == "raise":
            raise RuntimeError("fake backend exploded")
        if crash == "segfault":
            os.kill(os.getpid(), signal.SIGSEGV)
        if crash == "sleep":
            time.sleep(2)
        t0 = time.perf_counter()
        x, y = self.data["train"]
        h, logits = self._forward(x)
        p = np.exp(log_softmax(logits))
        loss = float(-np.log(p[np.arange(len(y)), y] + 1e-12).mean())
        g = (p - np.eye(p.shape[1])[y]) / len(y)
        grads = {"head.W": h.T @ g, "head.b": g.sum(0),
                 "stem.W": x.T @ ((g @ self.params["head.W"].T) * (h > 0))}
        for k in self.trainable:
            self.params[k] -= self.lr * grads[k]
        if crash == "nan":
            loss = float("nan")
        return {"loss": loss, "top1": float((logits.argmax(1) == y).mean()), "images": len(y),
                "seconds": time.perf_counter() - t0}

    def _predict(self, subset):
        x, bs = self.data[subset][0], self.config.train.batch_size
        starts = progress(range(0, len(x), bs), desc=self.pass_name)  # common.progress, as every backend
        logits = [self._forward(x[i:i + bs])[1] for i in starts]
        return np.concatenate(logits) if logits else self._forward(x)[1]

    def _extract_features(self, subset):
        return self._forward(self.data[subset][0])[0]

    def _save(self, path):
        return self._save_held(self.params, path)

    def _hold(self):  # the driver holds a better epoch's parameters until the phase ends
        if os.environ.get("FAKE_BACKEND_HOLDS") == "nothing":  # as a backend without _hold
            return None
        return {k: v.copy() for k, v in self.params.items()}

    def _save_held(self, params, path):
        out = Path(str(path) + self.checkpoint_suffix)
        if _crash(getattr(self, "epoch", 0)) == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out))
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "wb") as f:
            pickle.dump({"params": params}, f)
        return out

    def _restore(self, path):
        with open(str(path) + self.checkpoint_suffix, "rb") as f:
            self.params = pickle.load(f)["params"]

    def _trainable_names(self):
        return list(self.trainable)

    def _snapshot(self, block):
        return {k: v.copy() for k, v in self.params.items() if k.startswith(block)}

    def _export(self, fmt, directory, golden):
        path = Path(directory) / "model.npz"
        np.savez(path, **self.params)
        x = np.asarray(golden, np.float64)[:, :THUMB, :THUMB].reshape(len(golden), -1)
        with np.load(path) as saved:
            h = np.maximum(x @ saved["stem.W"], 0)
            exported = h @ saved["head.W"] + saved["head.b"]
        exported += float(os.environ.get("FAKE_EXPORT_OFFSET", 0))
        return path, exported, self._forward(x)[1], {"layout": "NHWC", "shape": [None, THUMB, THUMB, 3]}

    def _throughput(self, batch_size, precision, steps, warmup, kinds, compile):
        x = np.random.default_rng(0).random((batch_size, THUMB * THUMB * 3))
        t = measure_steps(lambda: self._forward(x), lambda: None, batch_size=batch_size, steps=steps,
                          warmup=warmup)
        # the numpy forward pass stands in for both steps; the wording is the common one
        return {"precision": precision, **{kind: t for kind in kinds}, "peak_memory_bytes": None,
                "timed_step": timed_step(batch_size)}


class FakeBackend(ToyBackend):
    """The toy backend registered as a class (``fake=fake_backend:FakeBackend``)."""

    name = "fake"


class CrashingBackend(FakeBackend):
    """Dies with a segmentation fault in its first epoch (a native crash)."""

    name = "fakecrash"

    def _fit_epoch(self, phase, global_epoch):
        os.kill(os.getpid(), signal.SIGSEGV)
