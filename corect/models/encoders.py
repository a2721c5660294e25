"""Parts every model shares: unimodal encoders, the speaker embedding, the classifier head.

CORECT and all fusion baselines encode a batch with :class:`UtteranceEncoder` and
classify with :class:`ClassifierHead`; they differ only in what happens in between.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from corect.config import ModelConfig
from corect.data.batching import Batch
from corect.models.attention import AttentionStack, sinusoidal_positions


class MLPEncoder(nn.Module):
    r"""Context-free utterance encoder: :math:`h = \mathrm{ReLU}(W_2\,\mathrm{ReLU}(W_1 x))`."""

    def __init__(self, in_dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor, batch: Batch) -> torch.Tensor:
        return self.net(x)


class TransformerEncoder(nn.Module):
    r"""Transformer over the dialogue's utterances:
    :math:`h = \mathrm{Transformer}(W x + \mathrm{PE}(\text{position}))`, with a padding
    mask and, in causal mode, a mask to the past window."""

    def __init__(
        self,
        in_dim: int,
        hidden: int,
        layers: int,
        heads: int,
        dropout: float,
        attention_dropout: float,
        *,
        causal: bool,
        window: int,
    ) -> None:
        super().__init__()
        self.hidden = hidden
        self.project = nn.Linear(in_dim, hidden)
        self.dropout = nn.Dropout(dropout)
        self.stack = AttentionStack(
            hidden, layers, heads, attention_dropout, causal=causal, window=window
        )

    def forward(self, x: torch.Tensor, batch: Batch) -> torch.Tensor:
        h = self.project(x) + sinusoidal_positions(batch.positions, self.hidden)
        return self.stack(self.dropout(h), batch.mask)


class LSTMEncoder(nn.Module):
    """LSTM over the dialogue's utterances: bidirectional offline, forward-only causal."""

    def __init__(self, in_dim: int, hidden: int, dropout: float, *, causal: bool) -> None:
        super().__init__()
        bidirectional = not causal
        self.lstm = nn.LSTM(
            in_dim,
            hidden // 2 if bidirectional else hidden,
            batch_first=True,
            bidirectional=bidirectional,
        )
        self.project = nn.Linear(hidden // 2 * 2 if bidirectional else hidden, hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, batch: Batch) -> torch.Tensor:
        packed = pack_padded_sequence(x, batch.lengths_cpu, batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return self.project(self.dropout(out))


def build_encoder(kind: str, in_dim: int, config: ModelConfig) -> nn.Module:
    """The unimodal encoder named `kind` (mlp | transformer | lstm)."""
    if kind == "mlp":
        return MLPEncoder(in_dim, config.hidden_size, config.dropout)
    if kind == "transformer":
        return TransformerEncoder(
            in_dim,
            config.hidden_size,
            config.encoder_layers,
            config.encoder_heads,
            config.dropout,
            config.attention_dropout,
            causal=config.causal,
            window=config.wp,
        )
    if kind == "lstm":
        return LSTMEncoder(in_dim, config.hidden_size, config.dropout, causal=config.causal)
    raise ValueError(f"model.encoders: unknown encoder {kind!r}")


class UtteranceEncoder(nn.Module):
    """Encodes each modality to ``[B, T, H]`` and adds a learned speaker embedding.

    Speakers are per-dialogue party indices (0 = whoever speaks first), so one table of
    `num_speakers` rows serves dialogues with any cast, two-party or multi-party.
    """

    def __init__(self, config: ModelConfig, dims: dict[str, int], num_speakers: int) -> None:
        super().__init__()
        self.modalities = "".join(dims)
        self.num_speakers = num_speakers
        self.encoders = nn.ModuleDict(
            {m: build_encoder(config.encoders[m], d, config) for m, d in dims.items()}
        )
        self.speaker_embedding = (
            nn.Embedding(num_speakers, config.hidden_size) if config.use_speaker else None
        )

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Returns modality -> ``[B, T, H]`` (padding rows are arbitrary, use batch.mask)."""
        hidden = {m: enc(batch.features[m], batch) for m, enc in self.encoders.items()}
        if self.speaker_embedding is not None:
            if int(batch.speakers.max()) >= self.num_speakers:
                raise ValueError(
                    f"a dialogue has {int(batch.speakers.max()) + 1} speakers but the model "
                    f"was built for {self.num_speakers} (set model.num_speakers)"
                )
            speaker = self.speaker_embedding(batch.speakers)
            hidden = {m: h + speaker for m, h in hidden.items()}
        return hidden


class ClassifierHead(nn.Module):
    r"""Utterance classifier: :math:`W_2\,\mathrm{Dropout}(\mathrm{ReLU}(W_1 z))`."""

    def __init__(self, in_dim: int, hidden: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
