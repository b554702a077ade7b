"""The ``linear_probe`` head: multinomial logistic regression on cached features.

Fitted with numpy (full-batch gradient descent with Nesterov momentum and L2),
so the head is identical for every backend and any difference in a linear
probe comes from the backbone's features alone.
"""

from __future__ import annotations

import numpy as np

from common.metrics import log_softmax


def fit_logistic(features: np.ndarray, labels: np.ndarray, num_classes: int, *,
                 l2: float = 1e-4, steps: int = 500, learning_rate: float = 0.5,
                 seed: int = 0) -> dict:
    """Weights ``W [D, C]``, bias ``b [C]`` and the standardisation used."""
    x = np.asarray(features, np.float64)
    mean, std = x.mean(0), x.std(0) + 1e-6
    x = (x - mean) / std
    y = np.eye(num_classes)[labels]
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.01, (x.shape[1], num_classes))
    b = np.zeros(num_classes)
    vw, vb = np.zeros_like(w), np.zeros_like(b)
    n = len(x)
    for _ in range(steps):
        lw, lb = w + 0.9 * vw, b + 0.9 * vb
        p = np.exp(log_softmax(x @ lw + lb))
        gw = x.T @ (p - y) / n + l2 * lw
        gb = (p - y).mean(0)
        vw = 0.9 * vw - learning_rate * gw
        vb = 0.9 * vb - learning_rate * gb
        w, b = w + vw, b + vb
    return {"W": w, "b": b, "mean": mean, "std": std}


def predict_logistic(head: dict, features: np.ndarray) -> np.ndarray:
    x = (np.asarray(features, np.float64) - head["mean"]) / head["std"]
    return x @ head["W"] + head["b"]
