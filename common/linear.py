"""The ``linear_probe`` head: multinomial logistic regression on cached features.

The protocol of the CLIP and VTAB linear probes, with scikit-learn (the
well-kept implementation), framework-free and identical for every backend, so
any difference between backends' probes comes from the features alone:

* standardise with the training split's mean and standard deviation, where a
  feature that is constant on the training split keeps scale 1
  (``StandardScaler``'s zero-variance rule): it is 0 on every training image,
  so its weight stays 0 under L2 and its values on other images cannot move
  the logits (dividing by ``std + 1e-6`` instead multiplied such a dead ReLU
  channel by about 1e6 on test images);
* choose the inverse L2 strength ``C`` on the validation split over a log grid
  (best validation accuracy, ties broken by the lower validation loss, then
  the stronger regularisation);
* fit with L-BFGS (``LogisticRegression(solver="lbfgs")``) on the training
  split. With fewer training images than feature dimensions (the usual
  transfer case: 50 images, 2,048 features) the fit runs in the span of the
  standardised training features (their thin SVD): the L2 solution lies in
  that span (representer theorem), so this is the same model, found about
  ten times faster; the weights are mapped back to feature space.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from common.metrics import log_softmax

# inverse L2 strengths tried on the validation split (10^-4 .. 10^4)
C_GRID = tuple(float(c) for c in np.logspace(-4, 4, 9))
MAX_ITER = 1000
TOLERANCE = 1e-8  # tight: in the span of the training features an iteration is cheap


@dataclass
class LinearProbe:
    """A fitted probe: the scaler, the classifier's weights in (standardised) feature space,
    the chosen C and the search."""

    scaler: object
    coef: np.ndarray          # [classes seen in training (or 1 when binary), features]
    intercept: np.ndarray
    classes: np.ndarray       # the class indices the classifier was fitted on
    num_classes: int
    C: float
    iterations: int = 0
    search: list[dict] = field(default_factory=list)  # per C: val top-1 and loss

    @property
    def num_parameters(self) -> int:
        return int(self.coef.size + self.intercept.size)

    def logits(self, features: np.ndarray) -> np.ndarray:
        """``[N, num_classes]`` logits; classes absent from training get -inf-like logits."""
        x = self.scaler.transform(np.asarray(features, np.float64))
        scores = x @ self.coef.T + self.intercept
        if scores.shape[1] == 1:  # scikit-learn's binary case: one score for classes[1]
            scores = np.concatenate([-scores / 2, scores / 2], axis=1)
        out = np.full((len(x), self.num_classes), -1e9)
        out[:, self.classes] = scores
        return out

    def describe(self) -> dict:
        return {"C": self.C, "l2": 1.0 / self.C, "solver": "lbfgs",
                "implementation": "sklearn.linear_model.LogisticRegression",
                "standardisation": "train mean/std, scale 1 for constant features",
                "c_grid": list(C_GRID), "search": self.search}


def _fit(x: np.ndarray, y: np.ndarray, C: float, seed: int, basis: np.ndarray | None):
    """``LogisticRegression`` on ``x`` (or on its coordinates in ``basis``); weights in x's space."""
    from sklearn.linear_model import LogisticRegression

    z = x if basis is None else x @ basis.T
    clf = LogisticRegression(C=C, solver="lbfgs", tol=TOLERANCE, max_iter=MAX_ITER,
                             random_state=seed).fit(z, y)
    coef = clf.coef_ if basis is None else clf.coef_ @ basis
    return coef, clf.intercept_, clf.classes_, int(np.max(clf.n_iter_))


def _mean_loss(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(-log_softmax(logits)[np.arange(len(labels)), labels].mean())


def fit_linear_probe(train_features: np.ndarray, train_labels: np.ndarray,
                     val_features: np.ndarray, val_labels: np.ndarray, num_classes: int, *,
                     seed: int = 0, c_grid: tuple[float, ...] = C_GRID) -> LinearProbe:
    """The probe with ``C`` chosen on the validation split (see module docstring).

    With no validation images (or a single training class) there is nothing to
    choose on: ``C = 1`` (scikit-learn's default).
    """
    from threadpoolctl import threadpool_limits

    # one BLAS thread: these are small dense problems, and BLAS worker threads only add
    # synchronisation (measured: 0.5 s vs 8.7 s for a 50 x 2,048 probe on a busy 2-core CPU)
    with threadpool_limits(limits=1):
        return _fit_linear_probe(train_features, train_labels, val_features, val_labels,
                                 num_classes, seed, c_grid)


def _fit_linear_probe(train_features, train_labels, val_features, val_labels, num_classes,
                      seed, c_grid) -> LinearProbe:
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.preprocessing import StandardScaler

    train_labels = np.asarray(train_labels, np.int64)
    val_labels = np.asarray(val_labels, np.int64)
    scaler = StandardScaler().fit(np.asarray(train_features, np.float64))
    x = scaler.transform(np.asarray(train_features, np.float64))
    if len(np.unique(train_labels)) < 2:
        raise ValueError("a linear probe needs training images of at least two classes")
    basis = None
    if x.shape[0] < x.shape[1]:  # the span of the training features (see module docstring)
        _, singular, vt = np.linalg.svd(x, full_matrices=False)
        basis = vt[singular > singular.max() * 1e-10] if singular.size and singular.max() else None
    grid = tuple(c_grid) if len(val_labels) else (1.0,)
    best, search = None, []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # recorded as n_iter == MAX_ITER
        for C in grid:
            coef, intercept, classes, iterations = _fit(x, train_labels, C, seed, basis)
            probe = LinearProbe(scaler, coef, intercept, classes, num_classes, C, iterations)
            row = {"C": C, "iterations": iterations}
            if len(val_labels):
                logits = probe.logits(val_features)
                row.update(val_top1=float((logits.argmax(1) == val_labels).mean()),
                           val_loss=_mean_loss(logits, val_labels))
                key = (row["val_top1"], -row["val_loss"])
                # strictly better only: on a tie the smaller C (stronger L2), tried first, stays
                if best is None or key > best[0]:
                    best = (key, probe)
            else:
                best = (None, probe)
            search.append(row)
    probe = best[1]
    probe.search = search
    return probe
