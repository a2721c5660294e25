"""CORECT: unimodal encoders + speaker embedding -> RT-GCN and P-CM -> classifier.

Nguyen et al., "Conversation Understanding using Relational Temporal Graph Neural
Networks with Auxiliary Cross-Modality Interaction", EMNLP 2023.
"""

from __future__ import annotations

import torch
from torch import nn

from corect.config import ModelConfig
from corect.data.batching import Batch
from corect.graph import build_graph, num_relations
from corect.models.encoders import ClassifierHead, UtteranceEncoder
from corect.models.pcm import PairwiseCrossModal
from corect.models.rtgcn import RTGCN


class CORECT(nn.Module):
    r"""The CORECT model.

    With :math:`h_{i,m}` the encoded modality m of utterance i (speaker embedding added):

    .. math::
        g_i = \Vert_m\, \mathrm{RTGCN}(h)_{i,m}, \qquad
        p_i = \mathrm{PCM}(h)_i, \qquad
        \hat y_i = \mathrm{Head}([g_i \Vert p_i])

    Ablations: ``use_rtgcn=False`` drops g, ``use_pcm=False`` drops p (P-CM is off by
    itself with a single modality); with both off the head sees :math:`\Vert_m h_{i,m}`.
    In causal mode the graph keeps only past and self edges (wf = 0) and every attention
    is masked to the past window.
    """

    def __init__(
        self, config: ModelConfig, dims: dict[str, int], num_classes: int, num_speakers: int
    ) -> None:
        super().__init__()
        self.modalities = "".join(dims)
        self.wp = config.wp
        self.wf = 0 if config.causal else config.wf
        self.edge_types = config.edge_types
        num_mod = len(self.modalities)
        hidden = config.hidden_size
        self.encoder = UtteranceEncoder(config, dims, num_speakers)
        self.rtgcn = (
            RTGCN(hidden, num_relations(num_mod), config.gnn_heads, config.dropout)
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
        features = 0
        if self.rtgcn is not None:
            features += num_mod * self.rtgcn.out_dim
        if self.pcm is not None:
            features += self.pcm.out_dim
        if features == 0:
            features = num_mod * hidden
        self.head = ClassifierHead(features, hidden, num_classes, config.dropout)

    def forward(self, batch: Batch) -> torch.Tensor:
        """Logits [N, classes] for the N real utterances, dialogue after dialogue."""
        hidden = self.encoder(batch)
        per_utterance = [hidden[m][batch.mask] for m in self.modalities]  # M x [N, H]
        parts = []
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
        return self.head(torch.cat(parts, dim=-1))
