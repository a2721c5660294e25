"""Models. :func:`build_model` is the one place that maps a config name to a class.

Every model takes a :class:`corect.data.batching.Batch` and returns logits
``[N, classes]`` for the batch's N real utterances, dialogue after dialogue.
"""

from __future__ import annotations

from torch import nn

from corect.config import ModelConfig
from corect.models.corect import CORECT


def build_model(
    config: ModelConfig, dims: dict[str, int], num_classes: int, num_speakers: int
) -> nn.Module:
    """Instantiate the model named by ``config.name`` for inputs of the given dims."""
    if config.name == "corect":
        return CORECT(config, dims, num_classes, num_speakers)
    from corect.models.fusion import build_fusion_model

    return build_fusion_model(config, dims, num_classes, num_speakers)


__all__ = ["CORECT", "build_model"]
