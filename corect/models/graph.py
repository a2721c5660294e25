"""The relational temporal graph of CORECT, built with tensor operations only.

One node per (utterance, modality). Nodes are numbered modality-major: node
``m * N + n`` is modality ``m`` of the batch's n-th real utterance (utterances flattened
dialogue after dialogue), so the node features are simply the per-modality utterance
vectors stacked.

Direction is explicit: ``edge_index[0]`` holds the **source** and ``edge_index[1]`` the
**target** of each message (PyG's default ``source_to_target`` flow). Node ``i`` of
modality ``m`` receives messages from utterances ``i - wp .. i + wf`` (inclusive, clipped
to its dialogue) of the same modality, and from the other modalities of utterance ``i``.

Relations (M modalities, ``3M + M(M-1)`` in all, 15 for M = 3):

- ``3m + 0`` temporal past (source before target), ``3m + 1`` self, ``3m + 2`` future,
  for modality m;
- ``3M + p`` cross-modal, for the p-th ordered pair (source modality a, target b), a != b,
  pairs ordered as ``[(a, b) for a in range(M) for b in range(M) if a != b]``.
"""

from __future__ import annotations

import torch

PAST, SELF, FUTURE = 0, 1, 2


def num_relations(num_modalities: int) -> int:
    """3 temporal relations per modality plus one per ordered modality pair."""
    return 3 * num_modalities + num_modalities * (num_modalities - 1)


def cross_modal_pairs(num_modalities: int) -> list[tuple[int, int]]:
    """Ordered (source, target) modality pairs, in relation order."""
    return [(a, b) for a in range(num_modalities) for b in range(num_modalities) if a != b]


def build_graph(
    lengths: torch.Tensor,
    num_modalities: int,
    wp: int,
    wf: int,
    edge_types: str = "temp_multi",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Edges of a batch of dialogues with the given `lengths` (CPU int tensor).

    `wp`, `wf`: past and future windows, inclusive; -1 = the whole dialogue. `edge_types`:
    ``temp`` (temporal only), ``multi`` (cross-modal only) or ``temp_multi`` (both).
    Returns ``edge_index [2, E]`` (row 0 = source, row 1 = target) and ``edge_type [E]``.
    """
    lengths = lengths.to("cpu", torch.long)
    n = int(lengths.sum())
    utterance = torch.arange(n)
    parts_index: list[torch.Tensor] = []
    parts_type: list[torch.Tensor] = []
    if edge_types in ("temp", "temp_multi"):
        max_len = int(lengths.max())
        past = wp if wp >= 0 else max_len - 1
        future = wf if wf >= 0 else max_len - 1
        offsets = torch.cat((lengths.new_zeros(1), lengths.cumsum(0)[:-1]))
        dialogue = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
        position = utterance - offsets[dialogue]
        length = lengths[dialogue]
        shift = torch.arange(-past, future + 1)  # source = target + shift
        source_position = position.unsqueeze(1) + shift
        valid = (source_position >= 0) & (source_position < length.unsqueeze(1))
        target = utterance.unsqueeze(1).expand_as(valid)[valid]
        source = (utterance.unsqueeze(1) + shift)[valid]
        kind = (torch.sign(shift) + 1).expand_as(valid)[valid]  # 0 past, 1 self, 2 future
        for m in range(num_modalities):
            parts_index.append(torch.stack((source + m * n, target + m * n)))
            parts_type.append(kind + 3 * m)
    if edge_types in ("multi", "temp_multi"):
        for p, (a, b) in enumerate(cross_modal_pairs(num_modalities)):
            parts_index.append(torch.stack((utterance + a * n, utterance + b * n)))
            parts_type.append(torch.full((n,), 3 * num_modalities + p, dtype=torch.long))
    if not parts_index:
        return torch.zeros(2, 0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    return torch.cat(parts_index, dim=1), torch.cat(parts_type)
