"""A dataset in memory: the dialogues converters hand to the writer
(:class:`DialogueRecord`) and what the loader gives back (:class:`Dataset`, one
:class:`SplitData` per split), with the per-dialogue party index of every utterance.

Reading and writing the on-disk format is :mod:`corect.data.format`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from corect.data.manifest import DatasetError

__all__ = ["Dataset", "DialogueRecord", "SplitData", "label_index", "party_indices"]


@dataclass
class DialogueRecord:
    """One dialogue as converters produce it.

    `labels` are indices into the dataset's label list (-1 = unlabeled); `features` maps a
    modality letter to an array of shape [len(speakers), dim].
    """

    id: str
    speakers: list[str]
    labels: list[int]
    features: dict[str, np.ndarray]
    texts: list[str] | None = None


@dataclass
class SplitData:
    """All utterances of one split, concatenated dialogue after dialogue."""

    dialogue_ids: list[str]
    offsets: torch.Tensor  # [D + 1] int64
    features: dict[str, torch.Tensor]  # modality -> [N, dim] float32
    labels: torch.Tensor  # [N] int64, -1 = unlabeled
    speakers: torch.Tensor  # [N] int64, index into Dataset.speaker_names
    parties: torch.Tensor  # [N] int64, per-dialogue party index (0, 1, ... by first turn)
    texts: list[list[str]] | None = None

    @property
    def num_dialogues(self) -> int:
        return len(self.dialogue_ids)

    @property
    def num_utterances(self) -> int:
        return int(self.offsets[-1])

    @property
    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def feature_statistics(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per-modality, per-dimension (mean, std) over the split's utterances (float64
        accumulation, so features of any scale give exact statistics)."""
        stats = {}
        for m, x in self.features.items():
            x64 = x.double()
            stats[m] = (x64.mean(0).float(), x64.std(0, correction=0).float())
        return stats

    def select_modalities(self, modalities: str) -> SplitData:
        return SplitData(
            self.dialogue_ids,
            self.offsets,
            {m: self.features[m] for m in modalities},
            self.labels,
            self.speakers,
            self.parties,
            self.texts,
        )


@dataclass
class Dataset:
    """A loaded, validated dataset."""

    name: str
    task: str
    labels: list[str]
    dims: dict[str, int]
    speaker_names: list[str]
    splits: dict[str, SplitData] = field(default_factory=dict)
    path: Path | None = None
    text_features: dict[str, Any] | None = None  # the manifest's record of the text encoder

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def max_parties(self) -> int:
        return max(int(s.parties.max()) + 1 for s in self.splits.values() if s.num_utterances)

    @cached_property
    def fingerprint(self) -> str:
        """A hash of what a model learns from: the labels in order, the modalities and
        dims, and per loaded split the dialogue ids, labels, parties and features."""
        digest = hashlib.sha256(json.dumps([self.labels, self.dims], sort_keys=True).encode())
        for name in sorted(self.splits):
            split = self.splits[name]
            digest.update(json.dumps([name, split.dialogue_ids]).encode())
            features = [split.features[m] for m in sorted(split.features)]
            for tensor in (split.offsets, split.labels, split.parties, *features):
                array = np.ascontiguousarray(tensor.numpy())
                digest.update(f"{array.dtype.str}{array.shape}".encode())
                digest.update(array.data)
        return digest.hexdigest()[:32]

    def select_modalities(self, modalities: str) -> Dataset:
        """The same dataset restricted to `modalities` (letters); missing ones fail clearly."""
        missing = [m for m in modalities if m not in self.dims]
        if missing:
            raise DatasetError(
                f"{self.path}: modality {', '.join(missing)} requested but the dataset has "
                f"only {''.join(self.dims)} (manifest field 'modalities')"
            )
        return Dataset(
            self.name,
            self.task,
            self.labels,
            {m: self.dims[m] for m in modalities},
            self.speaker_names,
            {k: s.select_modalities(modalities) for k, s in self.splits.items()},
            self.path,
            self.text_features,
        )


def label_index(names: Sequence[str]) -> dict[str, int]:
    """Name -> index in the ordered label list."""
    return {name: i for i, name in enumerate(names)}


def party_indices(speakers: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Per-dialogue party index of each utterance: 0 for the first speaker to talk, 1 for
    the next new one, and so on. Vectorized over the whole split."""
    n = speakers.numel()
    if n == 0:
        return speakers.clone()
    lengths = offsets[1:] - offsets[:-1]
    dialogue = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
    position = torch.arange(n) - offsets[:-1][dialogue]
    # Key (dialogue, speaker); the first turn of each key gives its order of appearance.
    key = dialogue * (int(speakers.max()) + 1) + speakers
    uniq, inverse = torch.unique(key, return_inverse=True)
    first = torch.full((uniq.numel(),), n, dtype=torch.long).scatter_reduce(
        0, inverse, position, reduce="amin"
    )
    key_dialogue = torch.zeros_like(uniq).scatter(0, inverse, dialogue)
    # Rank each key's first position among keys of the same dialogue.
    order = torch.argsort(key_dialogue * (n + 1) + first)
    rank_in_sorted = torch.arange(uniq.numel())
    sorted_dialogue = key_dialogue[order]
    start_of_dialogue = torch.searchsorted(sorted_dialogue, sorted_dialogue, right=False)
    rank = torch.empty_like(rank_in_sorted)
    rank[order] = rank_in_sorted - start_of_dialogue
    return rank[inverse]
