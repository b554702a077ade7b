"""Facts the docs state that no code computes: each corrected wording stays corrected, and each
measured figure is the one in the stored measurement it cites (no framework)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _row(doc: str, starts: str) -> str:
    (line,) = [line for line in (ROOT / "docs" / doc).read_text(encoding="utf-8").splitlines()
               if line.startswith(starts)]
    return line


def test_frozen_batchnorm_row_says_what_keras_2_did():
    """Keras 2 did not update a non-trainable BatchNormalization's moving statistics; in training
    it normalised with the batch's statistics (Keras 3 runs such a layer in inference mode)."""
    row = _row("differences.md", "| BatchNorm in frozen layers |")
    assert "kept updating statistics" not in row
    assert ("Keras 2, the seed's era, did not update a non-trainable BN's moving statistics either, but in "
            "training it normalised with the batch's statistics") in row
