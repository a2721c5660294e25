"""Parts every model shares: input normalisation, unimodal encoders, the speaker
embedding, the classifier head.

CORECT and all fusion baselines encode a batch with :class:`UtteranceEncoder` and
classify with :class:`ClassifierHead`; they differ only in what happens in between.

Why inputs are standardised inside the model (docs/data.md, "Feature scale"): real
features come at any scale. Sentence embeddings are L2-normalised (each dimension has a
standard deviation near 0.05), openSMILE functionals span 1e-3 to 1e4 within one vector,
CNN pooling outputs are non-negative with a large offset. Added to them, a speaker
embedding or a positional encoding of unit size drowns the content, and at the published
learning rate the input projection takes thousands of steps to grow out of it. So every
modality is standardised per dimension with statistics of the training split
(:class:`InputNormalizer`), held as buffers that travel with the checkpoint, and the
speaker and position signals start small (:data:`SPEAKER_INIT_STD`,
:data:`POSITION_INIT_SCALE`) and grow only as training finds them useful.

Streaming: every encoder has ``init_cache()`` and ``step(x, cache, *, position)``, one
utterance ``[D] -> [H]`` (the MLP needs no cache, the transformer keeps its attention
window, the causal LSTM its state); :meth:`UtteranceEncoder.step` strings them together
with the input normalisation and the speaker embedding.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from corect.common.errors import InputError
from corect.config import ModelConfig
from corect.data.batching import Batch
from corect.models.attention import AttentionCache, AttentionStack, sinusoidal_positions
from corect.models.caches import RecurrentCache

SPEAKER_INIT_STD = 0.1  # speaker embedding at init: a tenth of a standardised input's size
POSITION_INIT_SCALE = 0.1  # learned gain of the sinusoidal positions, at init


class InputNormalizer(nn.Module):
    r"""Per-dimension standardisation with statistics of the training split.

    .. math::
        \hat x = \mathrm{clip}\big((x - \mu) / \max(\sigma, \epsilon),\ -c,\ c\big)

    :math:`\mu, \sigma` are buffers set once by :meth:`set_statistics` (from the train
    split) and saved in the state dict, so evaluation, prediction and streaming apply
    exactly what training used. Until then the layer is the identity. The clip `c` bounds
    heavy tails and near-constant dimensions. An all-zero row (batch padding, a blanked
    modality) stays zero: zero means "no input".
    """

    def __init__(self, dim: int, clip: float = 5.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.clip = clip
        self.eps = eps
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.register_buffer("fitted", torch.tensor(False))

    def set_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Use these per-dimension statistics (``[dim]`` each) from now on."""
        if mean.shape != self.mean.shape or std.shape != self.std.shape:
            raise ValueError(
                f"input statistics of shape {tuple(mean.shape)}, expected {tuple(self.mean.shape)}"
            )
        self.mean.copy_(mean)
        self.std.copy_(std.clamp(min=self.eps))
        self.fitted.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``[..., dim]`` raw features -> standardised features of the same shape."""
        if not bool(self.fitted):
            return x
        present = (x != 0).any(dim=-1, keepdim=True)
        z = ((x.float() - self.mean) / self.std).clamp(-self.clip, self.clip)
        return (z * present).to(x.dtype)


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

    def init_cache(self) -> None:
        """Context-free: nothing to keep."""
        return None

    def step(self, x: torch.Tensor, cache: None, *, position: int) -> torch.Tensor:
        """One utterance: x ``[in_dim]`` -> ``[hidden]`` (context-free: no cache used)."""
        return self.net(x)


class TransformerEncoder(nn.Module):
    r"""Transformer over the dialogue's utterances:
    :math:`h = \mathrm{Transformer}(W x + \alpha\,\mathrm{PE}(\text{position}))`, with a
    learned gain :math:`\alpha` (0.1 at init), a padding mask and, in causal mode, a mask
    to the past window."""

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
        self.position_scale = nn.Parameter(torch.tensor(POSITION_INIT_SCALE))
        self.dropout = nn.Dropout(dropout)
        self.stack = AttentionStack(
            hidden, layers, heads, attention_dropout, causal=causal, window=window
        )

    def embed(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The stack's input: projected content plus scaled positions (then dropout)."""
        h = self.project(x) + self.position_scale * sinusoidal_positions(positions, self.hidden)
        return self.dropout(h)

    def forward(self, x: torch.Tensor, batch: Batch) -> torch.Tensor:
        return self.stack(self.embed(x, batch.positions), batch.mask)

    def init_cache(self) -> AttentionCache:
        """The stack's keys and values of the window (causal only)."""
        return self.stack.init_cache()

    def step(self, x: torch.Tensor, cache: AttentionCache, *, position: int) -> torch.Tensor:
        """One utterance at `position`: x ``[in_dim]`` -> ``[hidden]`` (causal only)."""
        return self.stack.step(self.embed(x, torch.tensor(position, device=x.device)), cache)


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

    def init_cache(self) -> RecurrentCache:
        """The LSTM state (causal only)."""
        if self.lstm.bidirectional:
            raise ValueError("only a causal (one-directional) LSTM can stream")
        return RecurrentCache.empty()

    def step(self, x: torch.Tensor, cache: RecurrentCache, *, position: int) -> torch.Tensor:
        """One utterance: x ``[in_dim]`` -> ``[hidden]``; the LSTM state is carried."""
        out, cache.states[0] = self.lstm(x.view(1, 1, -1), cache.states[0])
        return self.project(self.dropout(out[0, 0]))


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
    """Standardises and encodes each modality to ``[B, T, H]``, and adds a learned speaker
    embedding.

    Speakers are per-dialogue party indices (0 = whoever speaks first), so one table of
    `num_speakers` rows serves dialogues with any cast, two-party or multi-party.
    """

    def __init__(self, config: ModelConfig, dims: dict[str, int], num_speakers: int) -> None:
        super().__init__()
        self.modalities = "".join(dims)
        self.num_speakers = num_speakers
        self.normalizers = nn.ModuleDict(
            {
                m: InputNormalizer(d, clip=config.input_clip)
                if config.input_norm
                else nn.Identity()
                for m, d in dims.items()
            }
        )
        self.encoders = nn.ModuleDict(
            {m: build_encoder(config.encoders[m], d, config) for m, d in dims.items()}
        )
        self.input_noise = config.input_noise
        self.speaker_embedding = None
        if config.use_speaker:
            self.speaker_embedding = nn.Embedding(num_speakers, config.hidden_size)
            nn.init.normal_(self.speaker_embedding.weight, std=SPEAKER_INIT_STD)

    def set_input_statistics(
        self, statistics: dict[str, tuple[torch.Tensor, torch.Tensor]]
    ) -> None:
        """Per-modality (mean, std) of the training split's features (no-op without
        input normalisation)."""
        for m, normalizer in self.normalizers.items():
            if isinstance(normalizer, InputNormalizer):
                normalizer.set_statistics(*statistics[m])

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Returns modality -> ``[B, T, H]`` (padding rows are arbitrary, use batch.mask)."""
        hidden = {
            m: enc(self.noisy(self.normalizers[m](batch.features[m])), batch)
            for m, enc in self.encoders.items()
        }
        if self.speaker_embedding is not None:
            if int(batch.speakers.max()) >= self.num_speakers:
                raise InputError(
                    f"a dialogue has {int(batch.speakers.max()) + 1} speakers but the model "
                    f"was built for {self.num_speakers} (set model.num_speakers)"
                )
            speaker = self.speaker_embedding(batch.speakers)
            hidden = {m: h + speaker for m, h in hidden.items()}
        return hidden

    def noisy(self, x: torch.Tensor) -> torch.Tensor:
        """In training, standardised inputs plus Gaussian noise of std ``input_noise``
        (blank rows stay blank); the identity in evaluation."""
        if not self.training or self.input_noise <= 0:
            return x
        present = (x != 0).any(dim=-1, keepdim=True)
        return x + self.input_noise * torch.randn_like(x) * present

    def init_cache(self) -> dict[str, Any]:
        """An empty streaming cache: modality -> its encoder's."""
        return {m: enc.init_cache() for m, enc in self.encoders.items()}

    def step(
        self,
        features: Mapping[str, torch.Tensor],
        cache: dict[str, Any],
        *,
        party: int,
        position: int,
    ) -> dict[str, torch.Tensor]:
        """One utterance (modality -> ``[D]``, its speaker's party index and its position
        in the dialogue) -> modality -> ``[H]``, as its row of :meth:`forward`."""
        hidden = {
            m: enc.step(self.normalizers[m](features[m]), cache[m], position=position)
            for m, enc in self.encoders.items()
        }
        if self.speaker_embedding is not None:
            if party >= self.num_speakers:
                raise InputError(
                    f"speaker number {party + 1} in this dialogue, but the model was trained "
                    f"for at most {self.num_speakers} speakers"
                )
            speaker = self.speaker_embedding.weight[party]
            hidden = {m: h + speaker for m, h in hidden.items()}
        return hidden


class PrototypeLogits(nn.Module):
    r"""Distance-based logits: the cosine similarity of u to one learned prototype
    :math:`c_k` per class, sharpened by a temperature (a cosine classifier).

    .. math::
        s_k = \frac{\cos(u, c_k)}{\tau}
            = \frac{1}{\tau} \frac{u^\top c_k}{\lVert u \rVert\,\lVert c_k \rVert}

    The logits are bounded by :math:`1/\tau`, so every class is scored by its angle to
    its prototype, not by the size of its weight vector (which, in a linear layer, grows
    with the class's frequency)."""

    def __init__(self, dim: int, num_classes: int, temperature: float) -> None:
        super().__init__()
        self.temperature = temperature
        self.prototypes = nn.Parameter(torch.empty(num_classes, dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.prototypes)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """u: ``[N, dim]`` -> logits ``[N, classes]``."""
        return cosine_logits(nn.functional.normalize(u, dim=-1), self.prototypes, self.temperature)


def cosine_logits(unit: torch.Tensor, prototypes: torch.Tensor, temperature: float) -> torch.Tensor:
    """cos(u, c_k) / τ of unit vectors ``[N, d]`` against prototypes ``[K, d]`` (any
    length): ``[N, K]``. The prototype classifier's and ``train.loss.prototype``'s logits."""
    return unit @ nn.functional.normalize(prototypes, dim=-1).T / temperature


class ClassifierHead(nn.Module):
    r"""Utterance classifier: :math:`f(\mathrm{Dropout}(\mathrm{ReLU}(W_1 z)))`, with f a
    linear layer (``model.classifier: linear``) or :class:`PrototypeLogits`
    (``prototype``)."""

    def __init__(
        self,
        in_dim: int,
        hidden: int,
        num_classes: int,
        dropout: float,
        *,
        prototype_temperature: float | None = None,
    ) -> None:
        super().__init__()
        self.in_dim = in_dim  # width of z (train.loss and train.distill read it)
        last = (
            nn.Linear(hidden, num_classes)
            if prototype_temperature is None
            else PrototypeLogits(hidden, num_classes, prototype_temperature)
        )
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout), last)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def classifier_head(in_dim: int, num_classes: int, config: ModelConfig) -> ClassifierHead:
    """The shared head for inputs of width `in_dim`, as `config` says (hidden size,
    dropout, ``classifier`` and its temperature)."""
    temperature = config.classifier_temperature if config.classifier == "prototype" else None
    return ClassifierHead(
        in_dim, config.hidden_size, num_classes, config.dropout, prototype_temperature=temperature
    )
