"""A padded batch of dialogues: the contract between data and models.

Every model takes a :class:`Batch` and returns logits ``[N, classes]`` for the N real
(unpadded) utterances of the batch, dialogue after dialogue, in dialogue order. Labels
come flattened the same way, so ``loss(model(batch), batch.labels)`` needs no reshaping.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields

import torch

from corect.data.dataset import SplitData

BUCKET_POOL = 5  # batches per length-sorted pool when bucketing


@dataclass
class Batch:
    """B dialogues padded to the longest one (T utterances)."""

    features: dict[str, torch.Tensor]  # modality -> [B, T, D_m], zero at padding
    lengths: torch.Tensor  # [B] int64 (kept on CPU too, see `lengths_cpu`)
    mask: torch.Tensor  # [B, T] bool, True at real utterances
    speakers: torch.Tensor  # [B, T] int64 per-dialogue party index, 0 at padding
    labels: torch.Tensor  # [N] int64 flattened real utterances, -1 = unlabeled
    positions: torch.Tensor  # [B, T] int64 position of each utterance in its dialogue
    lengths_cpu: torch.Tensor  # [B] int64 on CPU, for graph building and packing
    dialogue_index: torch.Tensor  # [B] int64 index of each dialogue in its split

    @property
    def modalities(self) -> str:
        return "".join(self.features)

    @property
    def num_utterances(self) -> int:
        return int(self.lengths_cpu.sum())

    def to(self, device: torch.device | str) -> Batch:
        """Move every tensor (except `lengths_cpu`) to `device` once."""
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "lengths_cpu":
                moved[f.name] = value
            elif isinstance(value, dict):
                moved[f.name] = {k: v.to(device, non_blocking=True) for k, v in value.items()}
            else:
                moved[f.name] = value.to(device, non_blocking=True)
        return Batch(**moved)


def collate(split: SplitData, dialogue_indices: torch.Tensor | list[int]) -> Batch:
    """Gather dialogues of `split` into a padded batch, with one index per tensor (no loop
    over utterances)."""
    idx = torch.as_tensor(dialogue_indices, dtype=torch.long)
    starts = split.offsets[idx]
    lengths = split.offsets[idx + 1] - starts
    t_max = int(lengths.max())
    positions = torch.arange(t_max).unsqueeze(0).expand(len(idx), t_max)
    mask = positions < lengths.unsqueeze(1)
    rows = (starts.unsqueeze(1) + positions).masked_fill(~mask, 0)
    features = {m: x[rows].masked_fill(~mask.unsqueeze(-1), 0.0) for m, x in split.features.items()}
    return Batch(
        features=features,
        lengths=lengths,
        mask=mask,
        speakers=split.parties[rows].masked_fill(~mask, 0),
        labels=split.labels[rows[mask]],
        positions=positions.masked_fill(~mask, 0).contiguous(),
        lengths_cpu=lengths,
        dialogue_index=idx,
    )


def iterate_batches(
    split: SplitData,
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    bucket_by_length: bool = False,
) -> Iterator[Batch]:
    """Yield batches over a split; shuffled with `generator` when `shuffle` is True.

    With `bucket_by_length` (training), dialogues of similar length share a batch: the
    (shuffled) order is cut into pools of `BUCKET_POOL` batches, each pool sorted by
    length and cut into batches, and the batches shuffled. Far less padding for the
    attention layers, and still a different batch mix every epoch."""
    n = split.num_dialogues
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    if bucket_by_length:
        pools = torch.split(order, batch_size * BUCKET_POOL)
        order = torch.cat([p[torch.sort(split.lengths[p], stable=True).indices] for p in pools])
    chunks = list(torch.split(order, batch_size))
    if bucket_by_length and shuffle:
        chunks = [chunks[i] for i in torch.randperm(len(chunks), generator=generator)]
    for chunk in chunks:
        yield collate(split, chunk)


def num_batches(split: SplitData, batch_size: int) -> int:
    return (split.num_dialogues + batch_size - 1) // batch_size


def drop_modalities(batch: Batch, probability: float, generator: torch.Generator) -> Batch:
    """Modality dropout for training: blank each modality of each dialogue with the given
    probability, always keeping at least one modality per dialogue."""
    modalities = list(batch.features)
    if probability <= 0 or len(modalities) < 2:
        return batch
    b = batch.mask.shape[0]
    drop = torch.rand(b, len(modalities), generator=generator) < probability
    all_dropped = drop.all(dim=1)
    keep = torch.randint(len(modalities), (b,), generator=generator)
    drop[all_dropped, keep[all_dropped]] = False
    features = {
        m: x * (~drop[:, k]).to(x.device, x.dtype).view(b, 1, 1)
        for k, (m, x) in enumerate(batch.features.items())
    }
    return Batch(**{**batch.__dict__, "features": features})


def drop_utterances(batch: Batch, probability: float, generator: torch.Generator) -> Batch:
    """Utterance dropout for training: blank every modality of each real utterance with
    the given probability. Labels stay, so a blanked utterance must be told from its
    dialogue context (zero means "no input" to every model, see InputNormalizer)."""
    if probability <= 0:
        return batch
    drop = torch.rand(batch.mask.shape, generator=generator) < probability
    keep = (~drop).unsqueeze(-1)
    features = {m: x * keep.to(x.device, x.dtype) for m, x in batch.features.items()}
    return Batch(**{**batch.__dict__, "features": features})
