"""The fusion baselines as models: :class:`FusionModel` (shared encoder, a fusion from
:mod:`corect.models.fusion`, optional :class:`DialogueContext`, head) and its factory.

Both run a batch (``forward``) or, when causal, one utterance at a time (``step``, with the
encoders' attention windows and the GRU state in an explicit cache,
:mod:`corect.models.caches`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from corect.config import ModelConfig
from corect.data.batching import Batch
from corect.models.caches import RecurrentCache, StreamingModel
from corect.models.encoders import UtteranceEncoder
from corect.models.fusion import build_fusion
from corect.models.registry import FUSION_NAMES


class DialogueContext(nn.Module):
    r"""A GRU over the fused utterance vectors of each dialogue.

    .. math::
        c_{1..T} = \mathrm{BiGRU}(z_{1..T}) \ \text{(offline)}, \qquad
        c_t = \mathrm{GRU}(z_t, c_{t-1}) \ \text{(causal)}

    Sequences are packed with the true lengths, so padding never reaches a real
    utterance and a dialogue's outputs do not depend on its batch; in causal mode the GRU
    runs forward only, so :math:`c_t` depends on utterances 1..t alone. With several
    streams (late fusion) each stream has its own GRU, so they stay separate.
    """

    def __init__(
        self,
        in_dim: int,
        hidden: int,
        num_layers: int,
        dropout: float,
        *,
        causal: bool,
        streams: int = 1,
    ) -> None:
        super().__init__()
        if in_dim % streams:
            raise ValueError(f"DialogueContext: in_dim={in_dim} not divisible by {streams}")
        self.streams = streams
        self.causal = causal
        self.grus = nn.ModuleList(
            nn.GRU(
                in_dim // streams,
                hidden,
                num_layers=num_layers,
                batch_first=True,
                bidirectional=not causal,
                dropout=dropout if num_layers > 1 else 0.0,
            )
            for _ in range(streams)
        )
        self.dropout = nn.Dropout(dropout)
        self.out_dim = streams * hidden * (1 if causal else 2)

    def reset_parameters(self) -> None:
        for gru in self.grus:
            gru.reset_parameters()

    def forward(self, z: torch.Tensor, batch: Batch) -> torch.Tensor:
        """z: [N, d] in ``batch.mask`` order -> [N, out_dim]."""
        b, t = batch.mask.shape
        padded = z.new_zeros(b, t, z.shape[-1])
        padded[batch.mask] = z
        outputs = []
        for gru, chunk in zip(self.grus, padded.chunk(self.streams, dim=-1), strict=True):
            packed = pack_padded_sequence(
                chunk, batch.lengths_cpu, batch_first=True, enforce_sorted=False
            )
            out, _ = gru(packed)
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=t)
            outputs.append(out[batch.mask])
        return self.dropout(torch.cat(outputs, dim=-1))

    def init_cache(self) -> RecurrentCache:
        """An empty streaming cache: each stream's GRU state."""
        if not self.causal:
            raise ValueError("only a causal (one-directional) dialogue context can stream")
        return RecurrentCache.empty(self.streams)

    def step(self, z: torch.Tensor, cache: RecurrentCache) -> torch.Tensor:
        """The next utterance: z ``[d]`` -> ``[out_dim]``, one GRU step per stream."""
        states, outputs = cache.states, []
        for s, (gru, chunk) in enumerate(zip(self.grus, z.chunk(self.streams), strict=True)):
            out, states[s] = gru(chunk.view(1, 1, -1), states[s])
            outputs.append(out[0, 0])
        return self.dropout(torch.cat(outputs))


class FusionModel(StreamingModel):
    r"""A fusion baseline: the shared encoder, a per-utterance fusion, an optional dialogue
    context, and a classifier.

    .. math::
        x_{i,m} = \mathrm{Enc}_m(\cdot)_i + s_{\mathrm{speaker}(i)}, \qquad
        z_i = \mathrm{Fuse}(x_{i,1}, \dots, x_{i,M}), \qquad
        \hat y_i = \mathrm{Head}(z_i) \ \text{or}\ \mathrm{Head}(\mathrm{GRU}(z)_i)

    `fusion` is a :data:`FUSION_NAMES` entry; ``context=True`` adds the
    :class:`DialogueContext` (``model.name: context``, fusion from ``model.fusion``).
    """

    def __init__(
        self,
        config: ModelConfig,
        dims: dict[str, int],
        num_classes: int,
        num_speakers: int,
        *,
        fusion: str,
        context: bool = False,
    ) -> None:
        super().__init__()
        self.modalities = "".join(dims)
        self.encoder = UtteranceEncoder(config, dims, num_speakers)
        self.fusion = build_fusion(fusion, self.modalities, config)
        features = self.fusion.out_dim
        self.context = None
        if context:
            self.context = DialogueContext(
                features,
                config.hidden_size,
                config.context_layers,
                config.dropout,
                causal=config.causal,
                streams=self.fusion.streams,
            )
            features = self.context.out_dim
        self.head = self.fusion.make_head(features, num_classes, config)

    def forward(self, batch: Batch) -> torch.Tensor:
        """Logits [N, classes] for the N real utterances, dialogue after dialogue."""
        hidden = self.encoder(batch)
        x = torch.stack([hidden[m][batch.mask] for m in self.modalities], dim=1)  # [N, M, H]
        z = self.fusion(x)
        if self.context is not None:
            z = self.context(z, batch)
        return self.head(z)

    def init_parts_cache(self) -> RecurrentCache | None:
        """An empty streaming cache after the encoder: the dialogue context's (None
        without one; the fusion is per utterance)."""
        return None if self.context is None else self.context.init_cache()

    def step_parts(
        self, hidden: dict[str, torch.Tensor], cache: RecurrentCache | None, *, position: int
    ) -> torch.Tensor:
        """Logits ``[classes]`` of the next utterance from its encoded modalities, equal
        to its row of :meth:`forward` (causal encoders and context); ``step`` (of
        :class:`~corect.models.caches.StreamingModel`) runs the encoder first."""
        z = self.fusion(torch.stack([hidden[m] for m in self.modalities]).unsqueeze(0))[0]
        if self.context is not None:
            z = self.context.step(z, cache)
        return self.head(z.unsqueeze(0))[0]


def build_fusion_model(
    config: ModelConfig, dims: dict[str, int], num_classes: int, num_speakers: int
) -> FusionModel:
    """The baseline named by ``config.name`` (a fusion name, or ``context``)."""
    if config.name == "context":
        return FusionModel(
            config, dims, num_classes, num_speakers, fusion=config.fusion, context=True
        )
    if config.name not in FUSION_NAMES:
        raise ValueError(
            f"model.name={config.name!r} is not a fusion baseline "
            f"({', '.join(FUSION_NAMES)} or context)"
        )
    return FusionModel(config, dims, num_classes, num_speakers, fusion=config.name)


__all__ = ["DialogueContext", "FusionModel", "build_fusion_model"]
