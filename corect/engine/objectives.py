r"""Training objectives beyond cross-entropy (``train.loss`` and ``train.distill``;
docs/objectives.md has the formulas, the keys and what they gave).

:func:`build_objective` (called by :func:`corect.engine.training.build_loss` when any
term is on) returns an :class:`Objective`: a loss module with the signature of the plain
cross-entropy, ``loss = objective(logits, labels)``, so the training step is the same for
every model. With :math:`\mathcal V` the labelled utterances of the batch and
:math:`z_i` their representations (below):

.. math::
    \mathcal L = \mathrm{CE}_{w,\epsilon}(\hat y, y)
        + \lambda_{sc}\,\mathcal L_{SupCon}(z) + \lambda_p\,\mathcal L_{proto}(z)
        + \lambda_{kd}\,T^2\,\mathrm{KL}(p^T_T \,\Vert\, p^S_T) + \lambda_f\,\mathcal L_{feat}

The representation is read with hooks on the two parts every model shares, so CORECT and
every baseline get the terms without code of their own (:class:`Representations`):
``head`` = the input of ``model.head`` (for late fusion: its streams concatenated),
``encoder`` = the output of ``model.encoder`` (the per-modality encoders plus the speaker
embedding), modalities concatenated, ``[N, M * hidden]``.

Whatever the objective holds (learned prototypes, running prototypes, the contrastive
memory, the distillation projection, in-model distillation's modality heads) is in its
state dict, which :mod:`corect.engine.state` saves every epoch; it
is not part of the model or its checkpoint. Its parameters are drawn from a random stream
of their own (:func:`own_random_stream`), so switching a term on leaves the model's
initialisation and its dropout draws as they were.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from corect.config import Config, ConfigError, LossConfig
from corect.data.batching import Batch
from corect.data.dataset import Dataset
from corect.engine.distillation import Distillation, ModalityDistillation, teacher_targets
from corect.models.encoders import cosine_logits

# Offset of the objective's own random stream from train.seed (prototypes, projection).
OBJECTIVE_SEED_OFFSET = 7919


def auxiliary_terms_on(config: Config) -> bool:
    """Whether any term besides the (label-smoothed) cross-entropy is on."""
    loss, distill = config.train.loss, config.train.distill
    teachers = bool(distill.teacher_run or distill.teacher_modality)
    return loss.supcon_weight > 0 or loss.prototype != "off" or teachers


@contextlib.contextmanager
def own_random_stream(seed: int) -> Iterator[None]:
    """Run the block on the CPU generator seeded with `seed`, then put back the global
    random state as it was (CUDA's is never touched)."""
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        yield


class Representations:
    """Hooks on ``model.encoder`` (forward) and ``model.head`` (forward pre-hook) that keep,
    from the last forward pass in training mode, the batch, the encoder output (modality
    -> ``[N, H]``, real utterances in batch order; :attr:`encoder` concatenates them) and
    the head's input ``[N, F]``. Nothing is kept in evaluation mode."""

    def __init__(self, model: nn.Module, *, encoder: bool, head: bool) -> None:
        for part, wanted in (("encoder", True), ("head", head)):
            if wanted and not isinstance(getattr(model, part, None), nn.Module):
                raise ConfigError(
                    f"train.loss.representation / train.distill: {type(model).__name__} has "
                    f"no shared .{part} module to read representations from; turn "
                    "train.loss and train.distill off for it"
                )
        self.batch: Batch | None = None
        self.encoded: dict[str, torch.Tensor] | None = None
        self.head: torch.Tensor | None = None
        self.keep_encoder = encoder
        self.handles = [model.encoder.register_forward_hook(self._on_encoder)]
        if head:
            self.handles.append(model.head.register_forward_pre_hook(self._on_head))

    def _on_encoder(
        self, module: nn.Module, args: tuple[Batch], output: dict[str, torch.Tensor]
    ) -> None:
        if module.training:
            self.batch = args[0]
            if self.keep_encoder:
                self.encoded = {m: h[self.batch.mask] for m, h in output.items()}

    def _on_head(self, module: nn.Module, args: tuple[torch.Tensor]) -> None:
        if module.training:
            self.head = args[0]

    @property
    def encoder(self) -> torch.Tensor | None:
        """The kept encoder output, modalities concatenated: ``[N, M * H]``."""
        return None if self.encoded is None else torch.cat(list(self.encoded.values()), -1)

    def clear(self) -> None:
        """Drop what was kept (and the autograd graph it holds)."""
        self.batch = self.encoded = self.head = None

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def representation_width(config: Config, model: nn.Module) -> int:
    """Width of ``train.loss.representation`` for `model`; :class:`ConfigError` naming
    the key when the model has no such part."""
    if config.train.loss.representation == "encoder":
        return len(config.data.modalities) * config.model.hidden_size
    return head_width(model, "train.loss.representation=head")


def head_width(model: nn.Module, key: str) -> int:
    """Width of the input of ``model.head`` (its ``in_dim``)."""
    width = getattr(getattr(model, "head", None), "in_dim", None)
    if not isinstance(width, int):
        raise ConfigError(
            f"{key}: {type(model).__name__} has no shared classifier head with an in_dim "
            "(model.head) to read its input from; use train.loss.representation=encoder"
        )
    return width


def supcon_loss(
    z: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    memory: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    r"""Supervised contrastive loss (Khosla et al. 2020, :math:`\mathcal L^{sup}_{out}`).

    .. math::
        \mathcal L = \frac{1}{|A|} \sum_{i \in A} \frac{-1}{|P(i)|} \sum_{p \in P(i)}
        \log \frac{\exp(\bar z_i \cdot \bar k_p / \tau)}
                  {\sum_{a \in C(i)} \exp(\bar z_i \cdot \bar k_a / \tau)}

    with :math:`\bar z = z / \lVert z \rVert`, :math:`C(i)` the other utterances of the
    batch (and the `memory`'s entries), :math:`P(i) \subseteq C(i)` those with i's label
    and :math:`A` the anchors that have one. An utterance alone with its class is no
    anchor but still a negative for the others; with no anchor at all the loss is 0 (with
    a gradient of zeros). z ``[N, d]``, labels ``[N]`` (all labelled); `memory`: unit
    vectors ``[K, d]`` and their labels ``[K]`` from earlier batches (no gradient), extra
    positives and negatives, never anchors."""
    n = z.shape[0]
    unit = F.normalize(z, dim=-1)
    keys, key_labels = unit, labels
    if memory is not None:
        keys, key_labels = torch.cat([unit, memory[0]]), torch.cat([labels, memory[1]])
    same = labels.unsqueeze(1) == key_labels.unsqueeze(0)
    itself = torch.eye(n, keys.shape[0], dtype=torch.bool, device=z.device)
    positives = same & ~itself
    count = positives.sum(1)
    anchors = count > 0
    if not bool(anchors.any()):
        return z.sum() * 0.0
    similarity = (unit @ keys.T / temperature).masked_fill(itself, float("-inf"))
    log_prob = similarity - similarity.logsumexp(dim=1, keepdim=True)
    mean_positive = log_prob.masked_fill(~positives, 0.0).sum(1)[anchors] / count[anchors]
    return -mean_positive.mean()


class ContrastMemory(nn.Module):
    """The last `size` unit representations of labelled utterances and their labels,
    first in first out, detached (``train.loss.supcon_memory``): the contrastive term's
    positives and negatives beyond the batch, so a rare class alone in its batch still
    has positives. Buffers: saved with the objective's state, so a resumed run goes on
    with the same memory."""

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("keys", torch.zeros(size, dim))
        self.register_buffer("labels", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    def contents(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The filled entries: unit vectors ``[K, d]`` and labels ``[K]``."""
        filled = self.labels >= 0
        return self.keys[filled], self.labels[filled]

    @torch.no_grad()
    def push(self, unit: torch.Tensor, labels: torch.Tensor) -> None:
        """Add unit vectors ``[N, d]`` with labels ``[N]``, overwriting the oldest."""
        size = self.keys.shape[0]
        unit, labels = unit[-size:], labels[-size:]
        rows = (self.pointer + torch.arange(len(labels), device=labels.device)) % size
        self.keys[rows] = unit.detach().to(self.keys.dtype)
        self.labels[rows] = labels
        self.pointer.copy_((self.pointer + len(labels)) % size)


class Prototypes(nn.Module):
    r"""Class prototypes :math:`c_k` and the cosine-similarity logits of a representation.

    .. math::
        s_{ik} = \cos(z_i, c_k) / \tau, \qquad
        \mathcal L_{proto} = \mathrm{CE}_w(s, y)

    ``learned``: the :math:`c_k` are parameters (drawn from a standard normal).
    ``running``: :math:`c_k \leftarrow \mu c_k + (1-\mu)\,\bar m_k` after each batch, with
    :math:`\bar m_k` the mean unit representation of class k in the batch (no gradient; a
    class's first batch sets :math:`c_k = \bar m_k`). The prototypes are updated *before*
    the logits of the same batch are taken, so the target class always has one; a class
    not seen yet gets logit :math:`-\infty`."""

    def __init__(self, kind: str, num_classes: int, dim: int, momentum: float) -> None:
        super().__init__()
        self.kind = kind
        self.momentum = momentum
        if kind == "learned":
            self.centres = nn.Parameter(torch.randn(num_classes, dim))
        else:
            self.register_buffer("centres", torch.zeros(num_classes, dim))
            self.register_buffer("seen", torch.zeros(num_classes, dtype=torch.bool))

    @torch.no_grad()
    def update(self, unit: torch.Tensor, labels: torch.Tensor) -> None:
        """The running update from unit representations ``[N, d]`` and their labels."""
        k = self.centres.shape[0]
        sums = torch.zeros_like(self.centres).index_add_(0, labels, unit.detach())
        counts = torch.bincount(labels, minlength=k).to(unit.dtype).unsqueeze(1)
        present = counts.squeeze(1) > 0
        means = sums / counts.clamp(min=1)
        keep = torch.where(self.seen, self.momentum, 0.0).unsqueeze(1)
        updated = keep * self.centres + (1 - keep) * means
        self.centres.copy_(torch.where(present.unsqueeze(1), updated, self.centres))
        self.seen |= present

    def forward(self, z: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
        """Logits ``[N, classes]`` of representations z ``[N, d]`` with labels ``[N]``."""
        unit = F.normalize(z, dim=-1)
        if self.kind == "running":
            self.update(unit, labels)
        logits = cosine_logits(unit, self.centres, temperature)
        if self.kind == "running":
            logits = logits.masked_fill(~self.seen, float("-inf"))
        return logits


class Objective(nn.Module):
    """Cross-entropy plus the configured auxiliary terms (see the module docstring), on
    the labelled utterances of each batch. ``forward(logits, labels)`` as the plain loss;
    the representations come from :class:`Representations` hooks on the model."""

    def __init__(
        self,
        loss: LossConfig,
        cross_entropy: nn.CrossEntropyLoss,
        representations: Representations,
        prototypes: Prototypes | None,
        distillation: nn.Module | None,
        modality_distillation: ModalityDistillation | None = None,
        memory: ContrastMemory | None = None,
    ) -> None:
        super().__init__()
        self.config = loss
        self.cross_entropy = cross_entropy
        self.representations = representations  # not a module: holds hooks, no state
        self.prototypes = prototypes
        self.distillation = distillation
        self.modality_distillation = modality_distillation
        self.memory = memory

    @property
    def modality_heads(self) -> nn.ModuleDict | None:
        """The per-modality heads of in-model distillation (None without it)."""
        md = self.modality_distillation
        return None if md is None else md.heads

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The total loss of the batch whose forward pass the hooks saw last."""
        loss = self.cross_entropy(logits, labels)
        valid = labels >= 0
        seen, cfg = self.representations, self.config
        if not bool(valid.any()) or seen.batch is None:
            seen.clear()
            return loss
        y = labels[valid]
        with torch.autocast(logits.device.type, enabled=False):
            if cfg.supcon_weight > 0 or self.prototypes is not None:
                z = (seen.encoder if cfg.representation == "encoder" else seen.head)[valid]
                z = z.float()
            if cfg.supcon_weight > 0:
                memory = None if self.memory is None else self.memory.contents()
                loss = loss + cfg.supcon_weight * supcon_loss(z, y, cfg.supcon_temperature, memory)
                if self.memory is not None:
                    self.memory.push(F.normalize(z.detach(), dim=-1), y)
            if self.prototypes is not None:
                scores = self.prototypes(z, y, cfg.prototype_temperature)
                weight = self.cross_entropy.weight
                loss = loss + cfg.prototype_weight * F.cross_entropy(scores, y, weight=weight)
            if self.distillation is not None:
                head = None if seen.head is None else seen.head[valid].float()
                loss = loss + self.distillation(logits[valid], seen.batch, valid, head)
            if self.modality_distillation is not None:
                batch = seen.batch
                encoded = {m: h[valid] for m, h in seen.encoded.items()}
                present = {  # not blanked by modality or utterance dropout
                    m: (batch.features[m][batch.mask] != 0).any(-1)[valid] for m in encoded
                }
                head = None if seen.head is None else seen.head[valid]
                loss = loss + self.modality_distillation(
                    logits[valid], encoded, y, self.cross_entropy.weight, head, present
                )
        seen.clear()
        return loss


def build_objective(
    config: Config,
    dataset: Dataset,
    device: torch.device,
    model: nn.Module,
    cross_entropy: nn.CrossEntropyLoss,
) -> Objective:
    """The :class:`Objective` of `config` for `model`, its hooks attached, on `device`.
    With ``train.distill.teacher_run`` the teacher's outputs are checked and read (or
    computed once and cached: :mod:`corect.engine.distillation`)."""
    loss, distill = config.train.loss, config.train.distill
    feature = bool(distill.teacher_run) and distill.feature_weight > 0
    in_model = bool(distill.teacher_modality)
    fused_features = in_model and distill.teacher_modality == "all" and distill.feature_weight > 0
    uses_rep = loss.supcon_weight > 0 or loss.prototype != "off"
    needs_head = (loss.representation == "head" and uses_rep) or feature or fused_features
    width = representation_width(config, model) if uses_rep else 0
    student_width = head_width(model, "train.distill.feature_weight") if feature else 0
    teacher_width = config.model.hidden_size
    if fused_features:
        teacher_width = head_width(model, "train.distill.teacher_modality=all")
    targets = teacher_targets(config, dataset, device) if distill.teacher_run else None
    with own_random_stream(config.train.seed + OBJECTIVE_SEED_OFFSET):
        prototypes = None
        if loss.prototype != "off":
            prototypes = Prototypes(
                loss.prototype, dataset.num_classes, width, loss.prototype_momentum
            )
        distillation = None
        if targets is not None:
            distillation = Distillation(distill, targets, student_width)
        modality_distillation = None
        if in_model:
            modality_distillation = ModalityDistillation(
                distill, config.data.modalities, dataset.num_classes, config.model, teacher_width
            )
    keep_encoder = (loss.representation == "encoder" and uses_rep) or in_model
    representations = Representations(model, encoder=keep_encoder, head=needs_head)
    memory = None
    if loss.supcon_weight > 0 and loss.supcon_memory > 0:
        memory = ContrastMemory(loss.supcon_memory, width)
    objective = Objective(
        loss,
        cross_entropy,
        representations,
        prototypes,
        distillation,
        modality_distillation,
        memory,
    )
    return objective.to(device)
