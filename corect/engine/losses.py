"""Loss helpers shared by the training loop and the text fine-tuner."""

from __future__ import annotations

from collections.abc import Sequence

import torch

CLASS_WEIGHTS = ("none", "balanced", "sqrt")


def class_weights(
    labels: torch.Tensor | Sequence[int], num_classes: int, kind: str = "balanced"
) -> torch.Tensor | None:
    """Loss weights per class from the training labels (``-1`` = unlabelled, ignored).

    ``balanced`` = n / (C * count), the inverse frequency; ``sqrt`` = its square root
    (gentler); ``none`` = None. A class absent from `labels` gets weight 1. With a
    mean-reduced cross-entropy only the ratios matter. Computed in float64, returned
    as float32."""
    if kind not in CLASS_WEIGHTS:
        raise ValueError(f"class weights {kind!r}: choose one of {', '.join(CLASS_WEIGHTS)}")
    if kind == "none":
        return None
    labels = torch.as_tensor(labels, dtype=torch.long)
    counts = torch.bincount(labels[labels >= 0], minlength=num_classes).double()
    weights = counts.sum() / (num_classes * counts.clamp(min=1))
    weights = torch.where(counts > 0, weights, torch.ones_like(weights))
    return (weights.sqrt() if kind == "sqrt" else weights).float()
