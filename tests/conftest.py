"""Shared fixtures: small random datasets built in memory (no files from shared/)."""

from __future__ import annotations

import json
from pathlib import Path

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


TEXT_LABELS = ["joy", "anger", "neutral"]
TEXT_LINES = [
    "I got the job, I can't believe it!",
    "Stop touching my things.",
    "The train leaves at nine.",
    "That is wonderful news.",
    "You never listen to me!",
    "Okay, see you tomorrow.",
]


@pytest.fixture(scope="session")
def text_causal_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny causal text run on a converted JSONL dataset whose text features come from
    the bundled MiniLM encoder (so a service encodes new texts itself): ``run`` and
    ``data`` (the dataset, with texts in its test split). About 10 s, once a session."""
    from corect.config import load_config
    from corect.train import train
    from data_prep import jsonl

    root = tmp_path_factory.mktemp("text_causal_run")
    lines = []
    for d, split in enumerate(["train"] * 4 + ["dev"] * 2 + ["test"] * 3):
        utterances = [
            {
                "speaker": "AB"[k % 2],
                "text": TEXT_LINES[(d + k) % len(TEXT_LINES)],
                "label": TEXT_LABELS[(d + k) % len(TEXT_LINES) % 3],
            }
            for k in range(3 + d % 3)
        ]
        lines.append({"id": f"d{d}", "split": split, "utterances": utterances})
    source = root / "dialogues.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    data = root / "data"
    jsonl.convert(
        [str(source), "--modalities", "t", "--labels", ",".join(TEXT_LABELS), "--quiet"]
        + ["--text-cache-dir", str(root / "text_cache"), "--out", str(data)]
    )
    overrides = [f"data.path={data}", "data.modalities=t", "model.causal=true"]
    overrides += ["model.hidden_size=8", "model.gnn_heads=1", "model.encoder_heads=1"]
    overrides += ["model.pcm_heads=1", "model.pcm_layers=1", "model.pcm_self_layers=1"]
    overrides += ["train.epochs=1", "train.batch_size=3", "train.progress=false"]
    overrides += ["train.figures=false", f"train.runs_dir={root / 'runs'}"]
    return {"run": train(load_config(None, overrides)), "data": data}
