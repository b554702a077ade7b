"""Facts the docs state that no code computes: each corrected wording stays corrected, and each
measured figure is the one in the stored measurement it cites (no framework)."""

from __future__ import annotations

import json
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


def test_vgg16_parity_figures_are_the_stored_reports():
    """docs/weights-and-parity.md quotes the stored ``bench parity --model vgg16`` reports: the logits
    of every pair, the worst block, and keras vs slim, whose logits are not "exactly 0.0" apart."""
    text = " ".join((ROOT / "docs" / "weights-and-parity.md").read_text(encoding="utf-8").split())
    paragraph = text[text.index("VGG16 (`bench parity --model vgg16`"):text.index("VGG16 needs no alignment")]
    assert "agree exactly" not in paragraph
    for size in (32, 224):
        report = json.loads((ROOT / "benchmarks" / "results" / "parity" / f"vgg16-{size}px-suite" / "parity.json")
                            .read_text(encoding="utf-8"))
        diffs = report["max_abs_diff"]
        worst_block = max((v, block) for pair in diffs.values() for block, v in pair.items() if block != "logits")
        assert f"{report['logits_max_abs_diff']:.1e} ({size} px)" in paragraph
        assert f"{worst_block[0]:.1e} ({worst_block[1]})" in paragraph
        assert f"{diffs['keras-slim']['logits']:.1e} ({size} px)" in paragraph and diffs["keras-slim"]["logits"] > 0
        assert max(v for block, v in diffs["keras-slim"].items() if block != "logits") == 0.0
    assert re.search(r"Keras and slim compute the same blocks bit for bit \(0\.0\), but not the same logits", paragraph)


def test_training_crop_source_effect_is_the_measured_one():
    """The "Training crop source" row quotes ``python -m benchmarks.bench_crop_source`` at 75 px."""
    from benchmarks.bench_crop_source import measure, sample_photos

    row = {r["area"]: r for r in measure(sample_photos(), 75)}
    text = _row("differences.md", "| Training crop source (`inception`, `torchvision` presets) |")
    small = [row[a] for a in (0.05, 0.08, 0.1)]
    assert all(r["enlarged"] for r in small) and not any(row[a]["enlarged"] for a in (0.25, 0.5, 1.0))
    sides = [f"{r['shrunk_side']:.0f}" for r in small]
    assert (f"enlarged from {sides[0]}, {sides[1]} and {sides[2]} source pixels a side where the references "
            f"shrink {small[0]['full_side']:.0f}-{small[2]['full_side']:.0f}") in text
    assert (f"mean abs difference {small[0]['mean']:.1f}, {small[1]['mean']:.1f} and {small[2]['mean']:.1f} /255 "
            f"(max {max(r['max'] for r in small)})") in text
    assert f"mean {row[0.25]['mean']:.1f} to {row[1.0]['mean']:.1f} /255" in text


def test_throughput_rows_say_slim_times_the_same_step():
    """TF-Slim's timed step holds its batch on the device like PyTorch's and Keras' (its
    ``timed_step`` is ``common.timing.timed_step``): no doc row says it reads the tf.data iterator."""
    row = _row("differences.md", "| The timed throughput step (`throughput.timed_step`) |")
    assert "iterator hands over every step" not in row and "slim not yet" not in row
    assert "the same step in every backend, said in the same words" in row
    text = " ".join((ROOT / "docs" / "measurements.md").read_text(encoding="utf-8").split())
    section = text[text.index("## What a throughput row times"):text.index("## Where a sweep's time goes")]
    assert "Not yet TF-Slim" not in section
    assert "in PyTorch, in Keras (on TensorFlow, jax and torch) and in TF-Slim" in section
    assert "same words for every backend where it is true" not in section
