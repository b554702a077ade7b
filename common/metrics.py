"""Classification metrics computed from logits with numpy, identical for every backend.

Backends return logits (``predict``); every number in a result — loss, top-1,
top-5, per-class accuracy, confusion matrix — is computed here, so no metric
can differ between frameworks because of how a framework computes it.
"""

from __future__ import annotations

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    if len(labels) == 0:
        return float("nan")
    return float(-log_softmax(logits.astype(np.float64))[np.arange(len(labels)), labels].mean())


def top_k_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    if len(labels) == 0:
        return float("nan")
    k = min(k, logits.shape[1])
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())


def confusion_matrix(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (labels, pred), 1)
    return cm


def classification_metrics(logits: np.ndarray, labels: np.ndarray, classes) -> dict:
    """Loss, top-1, top-5, per-class accuracy and confusion (rows: true, cols: predicted)."""
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels, np.int64)
    if logits.shape != (len(labels), len(classes)):
        raise ValueError(f"logits shape {logits.shape} does not match "
                         f"{len(labels)} labels x {len(classes)} classes")
    pred = logits.argmax(axis=1)
    cm = confusion_matrix(pred, labels, len(classes))
    support = cm.sum(axis=1)
    per_class = {c: (float(cm[i, i] / support[i]) if support[i] else None)
                 for i, c in enumerate(classes)}
    return {
        "loss": cross_entropy(logits, labels),
        "top1": top_k_accuracy(logits, labels, 1),
        "top5": top_k_accuracy(logits, labels, 5),
        "per_class": per_class,
        "confusion": cm.tolist(),
        "count": int(len(labels)),
    }
