"""Classification metrics for utterance-level emotion recognition (scikit-learn based).

All figures are fractions in [0, 1]; utterances labelled -1 (unlabeled) are ignored.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

SCORES = ("accuracy", "weighted_f1", "macro_f1")  # the headline figures every table shows
SCORE_NAMES = {"accuracy": "Accuracy", "weighted_f1": "Weighted F1", "macro_f1": "Macro F1"}
POSITION_BUCKETS: tuple[tuple[int, int | None], ...] = ((1, 5), (6, 10), (11, 20), (21, None))


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str]
) -> dict[str, object]:
    """Accuracy, weighted and macro F1, per-class F1 and support, confusion matrix
    (rows = true class, columns = predicted), over the labelled utterances."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    keep = y_true >= 0
    y_true, y_pred = y_true[keep], y_pred[keep]
    classes = list(range(len(labels)))
    if y_true.size == 0:
        raise ValueError("no labelled utterances to score")
    per_class = f1_score(y_true, y_pred, labels=classes, average=None, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "weighted_f1": float(
            f1_score(y_true, y_pred, labels=classes, average="weighted", zero_division=0)
        ),
        "macro_f1": float(
            f1_score(y_true, y_pred, labels=classes, average="macro", zero_division=0)
        ),
        "per_class_f1": {name: float(f) for name, f in zip(labels, per_class, strict=True)},
        "support": {name: int((y_true == c).sum()) for c, name in enumerate(labels)},
        "confusion": confusion_matrix(y_true, y_pred, labels=classes).tolist(),
        "num_utterances": int(y_true.size),
    }


def weighted_f1_by_position(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    positions: np.ndarray,
    buckets: Sequence[tuple[int, int | None]] = POSITION_BUCKETS,
) -> dict[str, dict[str, float]]:
    """Weighted F1 and count per bucket of 1-based position in the dialogue
    (early utterances have little history)."""
    y_true, y_pred, positions = map(np.asarray, (y_true, y_pred, positions))
    result = {}
    for low, high in buckets:
        name = f"{low}-{high}" if high is not None else f"{low}+"
        pos = positions + 1
        keep = (pos >= low) & ((pos <= high) if high is not None else True) & (y_true >= 0)
        if keep.any():
            f1 = f1_score(y_true[keep], y_pred[keep], average="weighted", zero_division=0)
            result[name] = {"weighted_f1": float(f1), "count": int(keep.sum())}
        else:
            result[name] = {"weighted_f1": float("nan"), "count": 0}
    return result
