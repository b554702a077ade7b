"""``Backend.export``: each framework's deployable format, written, loaded back by its own
runtime and checked against the native logits on a golden batch (max abs diff <= 1e-4).

One round trip per backend runs by default — PyTorch TorchScript, Keras ``.keras``
and a slim SavedModel — and the other formats with ``-m slow`` (``bench export`` on a
PyTorch run: test_user_workflow.py). ResNet-50 (ResNet-18 in PyTorch) at 32 px with
random weights: the logits stay small, so 1e-4 is a real bound.
"""

from __future__ import annotations

import numpy as np
import pytest

from backends.base import BackendError, WeightsRequest, backend_info, get_backend
from benchmarks import driver
from benchmarks.saved_run_worker import golden_batch
from common.models import get_model
from conftest import require_backend, tiny_config

CASES = [("pytorch", "resnet18", "torchscript"), ("keras", "resnet50", "keras"),
         ("slim", "resnet50", "savedmodel"),
         pytest.param("pytorch", "resnet18", "onnx", marks=pytest.mark.slow),
         pytest.param("keras", "resnet50", "savedmodel", marks=pytest.mark.slow),
         pytest.param("slim", "resnet50", "frozen_graph", marks=pytest.mark.slow)]


def _built(backend_name, model, tiny_quads, tmp_path):
    require_backend(backend_name)
    config = tiny_config(backend_name, "head", tiny_quads, tmp_path / "run", model=model,
                         image_size=32)
    split = driver.prepare_split(config)
    b = get_backend(backend_name)(config, tmp_path / "run")
    b.setup(split, 32)
    b.build(get_model(model), split.num_classes, WeightsRequest("none"), 0)
    return b, split


@pytest.mark.parametrize("backend_name, model, fmt", CASES)
def test_export_round_trip_equals_the_native_logits(backend_name, model, fmt, tiny_quads, tmp_path):
    b, split = _built(backend_name, model, tiny_quads, tmp_path)
    try:
        golden = golden_batch(split.test, 32, b.preprocessing_name())
        assert golden.shape == (8, 32, 32, 3) and golden.dtype == np.float32
        record = b.export(fmt, tmp_path / fmt, golden)
        assert record["format"] == fmt and record["golden_images"] == 8
        assert 0 <= record["max_abs_diff"] <= 1e-4
        assert (tmp_path / fmt).exists() and str(tmp_path / fmt) in record["path"]
        assert record["input"]["shape"][0] is None  # any batch size
        # a format another backend writes is refused in one line, naming this backend's
        other = "onnx" if backend_name != "pytorch" else "savedmodel"
        with pytest.raises(BackendError, match=f"cannot export '{other}'; its formats are: "
                                               f"{', '.join(backend_info(backend_name).export_formats)}"):
            b.export(other, tmp_path / "other", golden)
    finally:
        b.close()

