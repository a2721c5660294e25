"""The model factory: the one place that maps a config name (the registry,
:mod:`corect.models.registry`) to a class."""

from __future__ import annotations

import torch
from torch import nn

from corect.config import ConfigError, ModelConfig
from corect.models.corect import CORECT
from corect.models.registry import FUSION_NAMES, MODEL_NAMES


def build_model(
    config: ModelConfig,
    dims: dict[str, int],
    num_classes: int,
    num_speakers: int,
    input_statistics: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> nn.Module:
    """Instantiate the model named by ``config.name`` for inputs of the given dims.

    `input_statistics` (modality -> per-dimension mean and std of the training split)
    sets the input standardisation; a model loaded from a checkpoint gets them from its
    state dict instead."""
    if config.name == "corect":
        model = CORECT(config, dims, num_classes, num_speakers)
    elif config.name in (*FUSION_NAMES, "context"):
        from corect.models.baselines import build_fusion_model

        model = build_fusion_model(config, dims, num_classes, num_speakers)
    else:
        raise ConfigError(f"model.name={config.name!r}: choose one of {', '.join(MODEL_NAMES)}")
    if input_statistics is not None:
        model.encoder.set_input_statistics(input_statistics)
    return model
