"""Shared fixtures: small random datasets built in memory (no files from shared/)."""

from __future__ import annotations

import pytest
import torch

from corect.config import Config, SyntheticConfig, config_from_dict
from corect.data.dataset import SplitData, party_indices

TINY_DIMS = {"t": 8, "a": 6, "v": 5}

# Tests use tiny tensors: one thread avoids thread-pool synchronisation costs, which
# dominate at this size and explode when the machine is busy.
torch.set_num_threads(1)


def make_split(
    lengths: list[int],
    dims: dict[str, int] = TINY_DIMS,
    num_classes: int = 3,
    num_speakers: int = 4,
    seed: int = 0,
) -> SplitData:
    """A random split with dialogues of the given lengths."""
    g = torch.Generator().manual_seed(seed)
    lengths_t = torch.tensor(lengths)
    offsets = torch.cat((torch.zeros(1, dtype=torch.long), lengths_t.cumsum(0)))
    n = int(offsets[-1])
    speakers = torch.randint(0, num_speakers, (n,), generator=g)
    return SplitData(
        [f"d{i}" for i in range(len(lengths))],
        offsets,
        {m: torch.randn(n, d, generator=g) for m, d in dims.items()},
        torch.randint(0, num_classes, (n,), generator=g),
        speakers,
        party_indices(speakers, offsets),
    )


def off_scale_statistics(dims: dict[str, int]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Input statistics far from (0, 1), so that tests exercise the input standardisation
    of every model (offsets of a few units, scales from 0.1 to 10)."""
    g = torch.Generator().manual_seed(11)
    return {
        m: (3 * torch.randn(d, generator=g), 10 ** (2 * torch.rand(d, generator=g) - 1))
        for m, d in dims.items()
    }


def tiny_config(tmp_path, **sections) -> Config:
    """A config that trains in about a second on a tiny synthetic dataset."""
    values = {
        "data": {
            "cache_dir": str(tmp_path / "cache"),
            "synthetic": {
                "train_dialogues": 6,
                "dev_dialogues": 3,
                "test_dialogues": 3,
                "min_length": 3,
                "max_length": 8,
                "dims": dict(TINY_DIMS),
            },
        },
        "model": {
            "hidden_size": 16,
            "gnn_heads": 2,
            "pcm_self_layers": 1,
            "pcm_layers": 1,
            "encoder_layers": 1,
        },
        "train": {
            "epochs": 2,
            "batch_size": 4,
            "runs_dir": str(tmp_path / "runs"),
            "progress": False,
            "figures": False,  # drawing costs seconds; tests/test_plots.py turns it on
            "lr": 1e-3,
        },
    }
    for section, updates in sections.items():
        values.setdefault(section, {}).update(updates)
    return config_from_dict(values)


@pytest.fixture
def tiny_synthetic() -> SyntheticConfig:
    return SyntheticConfig(
        train_dialogues=4,
        dev_dialogues=2,
        test_dialogues=2,
        min_length=3,
        max_length=7,
        dims=dict(TINY_DIMS),
    )
