"""What a fine-tuning run reads: a split's labelled utterances as model inputs, and the
training batches over them (similar lengths together, in random order)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from corect.data.dataset import Dataset
from corect.data.text_model import context_inputs
from data_prep.finetuning.config import FinetuneError


@dataclass
class Utterances:
    """The labelled utterances of one split: model inputs and class ids."""

    inputs: list[str]
    labels: list[int]


def read_utterances(dataset: Dataset, split: str, context: int, separator: str) -> Utterances:
    """The labelled utterances of `split` as model inputs (unlabelled ones still serve as
    past context). The loader has checked the texts file against the split (one list of
    strings per dialogue, of the right length); here it must exist."""
    data = dataset.splits[split]
    if data.texts is None:
        text_file = Path(dataset.path or ".") / f"{split}.texts.json"
        raise FinetuneError(
            f"{text_file}: missing; fine-tuning needs the utterance texts (convert the "
            "dataset with data_prep.meld or data_prep.jsonl, which store them)"
        )
    inputs: list[str] = []
    labels: list[int] = []
    offsets = data.offsets.tolist()
    for d, texts in enumerate(data.texts):
        start, end = offsets[d], offsets[d + 1]
        speakers = [dataset.speaker_names[int(s)] for s in data.speakers[start:end]]
        for text, label in zip(
            context_inputs(texts, speakers, context, separator),
            data.labels[start:end].tolist(),
            strict=True,
        ):
            if label >= 0:
                inputs.append(text)
                labels.append(int(label))
    if not labels:
        raise FinetuneError(f"{dataset.path}: split {split!r} has no labelled utterances")
    return Utterances(inputs, labels)


def length_batches(
    lengths: Sequence[int], batch_size: int, generator: torch.Generator, pool: int = 50
) -> list[list[int]]:
    """Training batches of similar lengths (little padding) in random order: the indices
    are shuffled, cut into pools of `pool` batches, each pool sorted by length and cut into
    batches, and the batches shuffled."""
    order = torch.randperm(len(lengths), generator=generator).tolist()
    batches = []
    size = batch_size * pool
    for start in range(0, len(order), size):
        chunk = sorted(order[start : start + size], key=lambda i: lengths[i])
        batches.extend(chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size))
    permutation = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in permutation]
