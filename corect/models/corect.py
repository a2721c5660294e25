"""CORECT: unimodal encoders + speaker embedding -> RT-GCN and P-CM -> classifier.

Nguyen et al., "Conversation Understanding using Relational Temporal Graph Neural
Networks with Auxiliary Cross-Modality Interaction", EMNLP 2023.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from corect.config import ModelConfig
from corect.data.batching import Batch
from corect.models.caches import StreamingModel, window_size
from corect.models.encoders import UtteranceEncoder, classifier_head
from corect.models.graph import build_graph, num_relations
from corect.models.pcm import PairwiseCrossModal, PCMCache
from corect.models.rtgcn import RTGCN, GraphCache


def drop_rows(x: torch.Tensor, p: float) -> torch.Tensor:
    """Zero each row of `x` ``[N, D]`` with probability p, scale the others by 1/(1-p)."""
    keep = torch.rand(x.shape[0], 1, device=x.device) >= p
    return x * keep.to(x.dtype) / (1 - p)


@dataclass
class CORECTCache:
    """The streaming cache of CORECT's parts (None: the part is off)."""

    rtgcn: GraphCache | None
    pcm: PCMCache | None


class CORECT(StreamingModel):
    r"""The CORECT model.

    With :math:`h_{i,m}` the encoded modality m of utterance i (speaker embedding added):

    .. math::
        g_i = \Vert_m\, \mathrm{RTGCN}(h)_{i,m}, \qquad
        p_i = \mathrm{PCM}(h)_i, \qquad
        \hat y_i = \mathrm{Head}([g_i \Vert p_i])

    Ablations: ``use_rtgcn=False`` drops g, ``use_pcm=False`` drops p (P-CM is off by
    itself with a single modality); with both off the head sees :math:`\Vert_m h_{i,m}`.
    With ``encoder_skip`` the head sees :math:`[\Vert_m h_{i,m} \Vert g_i \Vert p_i]`:
    the parts can only add to what the encoders give; ``part_dropout`` drops g or p of an
    utterance in training, so the head learns to use each alone as well as both
    (docs/parts.md).
    In causal mode the graph keeps only past and self edges (wf = 0) and every attention
    is masked to the past window, and ``step(features, cache, *, party, position)``
    streams: one utterance in, its logits out, from a cache of the past window
    (``init_cache()``; :class:`~corect.models.caches.StreamingModel`, then
    :meth:`step_parts`).
    """

    def __init__(
        self, config: ModelConfig, dims: dict[str, int], num_classes: int, num_speakers: int
    ) -> None:
        super().__init__()
        self.modalities = "".join(dims)
        self.causal = config.causal
        self.wp = config.wp
        self.wf = 0 if config.causal else config.wf
        self.edge_types = config.edge_types
        self.encoder_skip = config.encoder_skip
        self.part_dropout = config.part_dropout
        num_mod = len(self.modalities)
        hidden = config.hidden_size
        self.encoder = UtteranceEncoder(config, dims, num_speakers)
        self.rtgcn = (
            RTGCN(hidden, num_relations(num_mod), config.gnn_heads, config.gnn_dropout)
            if config.use_rtgcn
            else None
        )
        self.pcm = (
            PairwiseCrossModal(
                self.modalities,
                hidden,
                config.pcm_layers,
                config.pcm_heads,
                config.pcm_self_layers,
                config.attention_dropout,
                causal=config.causal,
                window=config.wp,
            )
            if config.use_pcm and num_mod > 1
            else None
        )
        # The head's input: (name, width) of each block, in the order forward concatenates.
        self.head_blocks: list[tuple[str, int]] = []
        if self.encoder_skip or (self.rtgcn is None and self.pcm is None):
            self.head_blocks.append(("encoders", num_mod * hidden))
        if self.rtgcn is not None:
            self.head_blocks.append(("rtgcn", num_mod * self.rtgcn.out_dim))
        if self.pcm is not None:
            self.head_blocks.append(("pcm", self.pcm.out_dim))
        features = sum(width for _, width in self.head_blocks)
        self.head = classifier_head(features, num_classes, config)

    def forward(self, batch: Batch) -> torch.Tensor:
        """Logits [N, classes] for the N real utterances, dialogue after dialogue."""
        hidden = self.encoder(batch)
        per_utterance = [hidden[m][batch.mask] for m in self.modalities]  # M x [N, H]
        parts = list(per_utterance) if self.encoder_skip else []
        if self.rtgcn is not None:
            edge_index, edge_type = build_graph(
                batch.lengths_cpu, len(self.modalities), self.wp, self.wf, self.edge_types
            )
            device = per_utterance[0].device
            nodes = self.rtgcn(
                torch.cat(per_utterance), edge_index.to(device), edge_type.to(device)
            )
            n = per_utterance[0].shape[0]
            parts.append(nodes.view(len(self.modalities), n, -1).transpose(0, 1).flatten(1))
        if self.pcm is not None:
            parts.append(self.pcm(hidden, batch.mask, batch.positions)[batch.mask])
        if not parts:
            parts = per_utterance
        num_parts = (self.rtgcn is not None) + (self.pcm is not None)  # the last blocks
        if self.training and self.part_dropout > 0 and num_parts:
            parts[-num_parts:] = [drop_rows(p, self.part_dropout) for p in parts[-num_parts:]]
        return self.head(torch.cat(parts, dim=-1))

    def init_parts_cache(self) -> CORECTCache:
        """An empty streaming cache of RT-GCN and P-CM (the encoder's comes with it:
        :meth:`~corect.models.caches.StreamingModel.init_cache`)."""
        if not self.causal:
            raise ValueError("only a causal CORECT can stream (model.causal: true)")
        return CORECTCache(
            rtgcn=None if self.rtgcn is None else self.rtgcn.init_cache(window_size(self.wp)),
            pcm=None if self.pcm is None else self.pcm.init_cache(),
        )

    def window_graph(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The graph of one dialogue of `length` utterances (as :meth:`forward` builds it)."""
        return build_graph(
            torch.tensor([length]), len(self.modalities), self.wp, self.wf, self.edge_types
        )

    def step_parts(
        self, hidden: dict[str, torch.Tensor], cache: CORECTCache, *, position: int
    ) -> torch.Tensor:
        """Logits ``[classes]`` of the next utterance from its encoded modalities
        (modality -> ``[H]``), equal to its row of :meth:`forward`; ``step`` (of
        :class:`~corect.models.caches.StreamingModel`) runs the encoder first."""
        parts = [hidden[m] for m in self.modalities] if self.encoder_skip else []
        if self.rtgcn is not None:
            nodes = torch.stack([hidden[m] for m in self.modalities])  # [M, H]
            parts.append(self.rtgcn.step(nodes, cache.rtgcn, graph=self.window_graph).flatten())
        if self.pcm is not None:
            parts.append(self.pcm.step(hidden, cache.pcm, position=position))
        if not parts:
            parts = [hidden[m] for m in self.modalities]
        return self.head(torch.cat(parts))
