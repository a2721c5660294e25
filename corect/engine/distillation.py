r"""Distillation (``train.distill``; docs/objectives.md): from trained teacher runs, or
from a teacher modality inside the model (:class:`ModalityDistillation`).

A teacher is any completed run (any model, any modalities the dataset has: a t+a+v
CORECT for an audio-only student, a text model for a video one), or several (an
ensemble). Before training, :func:`teacher_targets`, for each teacher run,

- refuses an offline teacher for a causal student (:func:`check_causal`: its logits
  carry the future);
- loads the student's dataset with the teacher's modalities and checks it is the data
  the teacher was trained on, exactly as ``corect.evaluate`` checks a run (labels in
  order, dims, fingerprint: :func:`corect.engine.checkpoints.check_run_data`);
- reads the teacher's logits and head inputs on the train split from the cache
  ``<data.cache_dir>/teachers/<key>.safetensors``, or computes them once (eval mode,
  float32, no autocast) and writes the cache atomically. The key hashes the teacher's
  checkpoint file and that dataset fingerprint: a retrained teacher or changed data gets
  a new entry, never a stale one.

:class:`Distillation` is the loss term, on the labelled utterances of a batch:

.. math::
    \mathcal L_{kd} = \lambda_{kd}\, T^2\, \frac{1}{|\mathcal V|} \sum_{i \in \mathcal V}
        \mathrm{KL}\big(\mathrm{softmax}(t_i / T) \,\Vert\, \mathrm{softmax}(s_i / T)\big)
    \qquad
    \mathcal L_{feat} = \lambda_f\, d(W h^S_i + b,\ h^T_i)

with :math:`t, s` the teacher's and student's logits, :math:`h` the head inputs, and
:math:`d` the mean squared error (``mse``, averaged over dimensions) or
:math:`1 - \cos` (``cosine``). The projection W is learned with the student (it joins the
optimizer and the training state).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from corect.common.errors import InputError
from corect.common.files import atomic_target, recover
from corect.common.metrics import classification_metrics
from corect.config import Config, ConfigError, DistillConfig, ModelConfig, config_from_dict
from corect.data.batching import Batch, iterate_batches
from corect.data.dataset import Dataset, SplitData
from corect.data.format import DatasetError
from corect.engine.checkpoints import (
    CHECKPOINT,
    CheckpointError,
    check_run_data,
    load_checkpoint,
    load_data,
    load_run,
)
from corect.engine.scoring import predict
from corect.models.encoders import classifier_head

CACHE_FORMAT = "1"
CACHE_FOLDER = "teachers"
log = logging.getLogger("corect")


class DistillError(InputError):
    """A teacher run that cannot teach this student (missing, other data, offline)."""


@dataclass
class TeacherTargets:
    """The teacher's outputs on the train split, in split order, and where they came from."""

    logits: torch.Tensor  # [N, classes] float32
    features: torch.Tensor  # [N, F] float32: the teacher's head inputs
    offsets: torch.Tensor  # [D + 1] the train split's dialogue offsets
    paths: list[Path]  # the cache files, one per teacher
    from_cache: bool  # all were read from the cache


def teacher_targets(config: Config, dataset: Dataset, device: torch.device) -> TeacherTargets:
    r"""The checked teachers' train-split outputs for the student `config` on `dataset`
    (see the module docstring). ``train.distill.teacher_run`` names one run directory, or
    several separated by commas: an ensemble, whose logits are the log of the teachers'
    mean probability, :math:`\log \frac1K \sum_k \mathrm{softmax}(t_k)`, and whose
    features are their head inputs concatenated. Each teacher is checked, and its outputs
    cached, on its own. :class:`DistillError` naming the key when one cannot teach."""
    runs = [Path(r.strip()) for r in config.train.distill.teacher_run.split(",") if r.strip()]
    each = [one_teacher(config, dataset, device, run_dir) for run_dir in runs]
    if len(each) == 1:
        return each[0]
    probabilities = torch.stack([F.softmax(t.logits, dim=-1) for t in each]).mean(0)
    return TeacherTargets(
        probabilities.log(),
        torch.cat([t.features for t in each], dim=-1),
        each[0].offsets,
        [p for t in each for p in t.paths],
        all(t.from_cache for t in each),
    )


def one_teacher(
    config: Config, dataset: Dataset, device: torch.device, run_dir: Path
) -> TeacherTargets:
    """The train-split outputs of the teacher run `run_dir`, checked: from the cache, or
    computed on `device` and cached."""
    key = f"train.distill.teacher_run={str(run_dir)!r}"
    try:
        checkpoint = load_checkpoint(run_dir)
        teacher = config_from_dict(checkpoint["config"])
    except (FileNotFoundError, CheckpointError, ConfigError) as err:
        raise DistillError(f"{key}: not a trained run to distil from: {err}") from None
    check_causal(config, teacher, key)
    modalities = teacher.data.modalities
    try:
        view = dataset
        if modalities != config.data.modalities:
            data = dataclasses.replace(config.data, modalities=modalities)
            view = load_data(dataclasses.replace(config, data=data))
        check_run_data(run_dir, checkpoint, view)
    except DatasetError as err:
        raise DistillError(f"{key}: {err}") from None
    train = view.splits["train"]
    path = cache_path(config, run_dir / CHECKPOINT, view.fingerprint)
    cached = read_cache(path, train.num_utterances, len(view.labels))
    if cached is not None:
        log.info("teacher %s: outputs read from %s", run_dir, path)
        return TeacherTargets(*cached, train.offsets, [path], True)
    logits, features = compute_teacher_outputs(run_dir, view, device)
    metadata = {"format": CACHE_FORMAT, "teacher_run": str(run_dir.resolve())}
    with atomic_target(path) as tmp:
        save_file({"logits": logits, "features": features}, str(tmp), metadata=metadata)
    log.info("teacher %s: outputs computed and cached in %s", run_dir, path)
    return TeacherTargets(logits, features, train.offsets, [path], False)


def check_causal(student: Config, teacher: Config, key: str) -> None:
    """:class:`DistillError` for an offline teacher of a causal student: the teacher's
    logit of utterance i depends on utterances after i, which a causal model must not
    see, even through its training targets."""
    if student.model.causal and not teacher.model.causal:
        raise DistillError(
            f"{key}: an offline teacher (model.causal: false) cannot teach a causal student "
            "(model.causal: true): its logits carry the future (later utterances); "
            "distil from a causal teacher run"
        )


def cache_path(config: Config, checkpoint: Path, fingerprint: str) -> Path:
    """``<data.cache_dir>/teachers/<key>.safetensors``, the key a hash of the teacher's
    checkpoint file, the fingerprint of its view of the data and the cache format."""
    digest = hashlib.sha256(f"{CACHE_FORMAT}:{fingerprint}:".encode())
    with checkpoint.open("rb") as file:
        digest.update(hashlib.file_digest(file, "sha256").digest())
    return Path(config.data.cache_dir) / CACHE_FOLDER / f"{digest.hexdigest()[:32]}.safetensors"


def read_cache(path: Path, rows: int, classes: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(logits, features) of a cache file that fits `rows` utterances and `classes`;
    None when there is none, or it is unreadable or does not fit (it is then rewritten)."""
    recover(path)  # the temporaries of a killed write
    if not path.is_file():
        return None
    try:
        tensors = load_file(str(path))
        logits, features = tensors["logits"], tensors["features"]
    except Exception as err:  # a damaged file: computed again
        log.warning("warning: %s is unreadable (%s); computing it again", path, err)
        return None
    if logits.shape != (rows, classes) or features.shape[0] != rows:
        log.warning("warning: %s does not fit the train split; computing it again", path)
        return None
    return logits, features


@torch.no_grad()
def compute_teacher_outputs(
    run_dir: Path, dataset: Dataset, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's best checkpoint on `dataset`'s train split: logits ``[N, classes]``
    and head inputs ``[N, F]``, float32 on the CPU, in split order. The global random
    state is left as it was (building the teacher draws its initialisation), so a run
    that computes them trains as one that reads them from the cache."""
    with torch.random.fork_rng(devices=[]):
        teacher_config, model, _ = load_run(run_dir, str(device))
    inputs: list[torch.Tensor] = []
    hook = model.head.register_forward_pre_hook(lambda _, args: inputs.append(args[0].cpu()))
    try:
        split = dataset.splits["train"]
        logits = predict(model, split, teacher_config.train.batch_size, device, amp=False)
    finally:
        hook.remove()
    return logits.contiguous(), torch.cat(inputs).float().contiguous()


def batch_rows(batch: Batch, offsets: torch.Tensor) -> torch.Tensor:
    """Row in the split of each real utterance of `batch` ``[N]``, in the order of the
    model's logits (dialogue after dialogue)."""
    starts = offsets.to(batch.dialogue_index.device)[batch.dialogue_index]
    return (starts.unsqueeze(1) + batch.positions)[batch.mask]


def feature_distance(projected: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean over rows of the squared error per dimension (``mse``) or of 1 - cosine
    (``cosine``) between ``[V, F]`` projected student features and the teacher's."""
    if kind == "mse":
        return F.mse_loss(projected, target)
    return (1 - F.cosine_similarity(projected, target, dim=-1)).mean()


class Distillation(nn.Module):
    """The distillation term (module docstring): the teacher's cached train outputs, and
    the learned projection of the student's head input when ``feature_weight`` > 0."""

    def __init__(self, config: DistillConfig, targets: TeacherTargets, student_width: int) -> None:
        super().__init__()
        self.config = config
        # Not in the state dict: read from the cache again when a run resumes.
        self.register_buffer("teacher_logits", targets.logits, persistent=False)
        self.register_buffer("teacher_features", targets.features, persistent=False)
        self.register_buffer("offsets", targets.offsets.clone(), persistent=False)
        self.projection = None
        if config.feature_weight > 0:
            self.projection = nn.Linear(student_width, targets.features.shape[1])

    def forward(
        self,
        logits: torch.Tensor,
        batch: Batch,
        valid: torch.Tensor,
        head_input: torch.Tensor | None,
    ) -> torch.Tensor:
        """The term for the student's `logits` ``[V, classes]`` of the labelled (`valid`,
        ``[N]``) utterances of `batch`, and their head inputs ``[V, F_s]``."""
        cfg, t = self.config, self.config.temperature
        rows = batch_rows(batch, self.offsets)[valid]
        loss = logits.new_zeros(())
        if cfg.logit_weight > 0:
            teacher = F.log_softmax(self.teacher_logits[rows] / t, dim=-1)
            student = F.log_softmax(logits.float() / t, dim=-1)
            kl = F.kl_div(student, teacher, log_target=True, reduction="batchmean")
            loss = loss + cfg.logit_weight * t * t * kl
        if self.projection is not None and head_input is not None:
            projected, target = self.projection(head_input), self.teacher_features[rows]
            loss = loss + cfg.feature_weight * feature_distance(projected, target, cfg.feature_loss)
        return loss


class ModalityDistillation(nn.Module):
    r"""Distillation inside one model (``train.distill.teacher_modality``): a classifier
    head :math:`g_m` on each modality's encoder output :math:`h_m` (``model.encoder``:
    that modality alone, plus the speaker embedding), and the teacher's softened logits
    taught to the students, all in one run.

    .. math::
        \mathcal L = \lambda_s \sum_{m} \mathrm{CE}_w(g_m(h_m), y)
            + \lambda_{kd} T^2 \sum_{m \in S}
                \mathrm{KL}\big(\mathrm{softmax}(\bar t / T) \,\Vert\,
                                \mathrm{softmax}(g_m(h_m) / T)\big)
            + \lambda_f \sum_{m \in S} d(W_m h_m + b_m,\ \bar h_T)

    Teacher: a modality k (:math:`t = g_k(h_k)`, :math:`h_T = h_k`, students
    :math:`S` = the other modalities) or ``all`` (t = the model's own logits, h_T its
    head input, every modality a student). The bar is ``detach``: the students learn from
    the teacher, never the teacher from them. The heads are the shared
    :class:`~corect.models.encoders.ClassifierHead`; they are no part of the model's
    forward (its predictions are unchanged in kind), and are saved with the best
    checkpoint so :func:`score_modality_heads` scores each head alone on dev and test.
    """

    def __init__(
        self,
        config: DistillConfig,
        modalities: str,
        num_classes: int,
        model: ModelConfig,
        teacher_width: int,
    ) -> None:
        super().__init__()
        self.config = config
        self.teacher = config.teacher_modality
        self.students = [m for m in modalities if m != self.teacher]
        self.heads = nn.ModuleDict(
            {m: classifier_head(model.hidden_size, num_classes, model) for m in modalities}
        )
        self.projections = None
        if config.feature_weight > 0:
            self.projections = nn.ModuleDict(
                {m: nn.Linear(model.hidden_size, teacher_width) for m in self.students}
            )

    def forward(
        self,
        logits: torch.Tensor,
        encoded: dict[str, torch.Tensor],
        labels: torch.Tensor,
        weight: torch.Tensor | None,
        head_input: torch.Tensor | None,
        present: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The term for the labelled utterances: the model's `logits` ``[V, classes]``,
        each modality's encoder output ``[V, H]``, `labels` ``[V]``, the class `weight` of
        the cross-entropy, the model's head input ``[V, F]`` (teacher ``all`` with
        features only) and `present`: modality -> ``[V]`` whether the utterance had that
        modality in this batch (False where modality or utterance dropout blanked it).
        A head learns, and is taught, only where its modality is present (and, for a
        modality teacher, the teacher's too): a blank input carries nothing to learn
        from. Every term is a mean over its rows; a term without rows adds nothing."""
        cfg, t = self.config, self.config.temperature
        if present is None:
            present = {m: torch.ones_like(labels, dtype=torch.bool) for m in self.heads}
        scores = {m: head(encoded[m].float()) for m, head in self.heads.items()}
        loss = logits.new_zeros(())
        if cfg.student_weight > 0:
            for m, s in scores.items():
                rows = present[m]
                if bool(rows.any()):
                    ce = F.cross_entropy(s[rows], labels[rows], weight=weight)
                    loss = loss + cfg.student_weight * ce
        if self.teacher == "all":
            teacher_logits, teacher_features = logits, head_input
            taught = torch.ones_like(labels, dtype=torch.bool)
        else:
            teacher_logits, teacher_features = scores[self.teacher], encoded[self.teacher]
            taught = present[self.teacher]
        target = F.log_softmax(teacher_logits.detach().float() / t, dim=-1)
        for m in self.students:
            rows = present[m] & taught
            if not bool(rows.any()):
                continue
            if cfg.logit_weight > 0:
                student = F.log_softmax(scores[m][rows] / t, dim=-1)
                kl = F.kl_div(student, target[rows], log_target=True, reduction="batchmean")
                loss = loss + cfg.logit_weight * t * t * kl
            if self.projections is not None and teacher_features is not None:
                projected = self.projections[m](encoded[m][rows].float())
                aim = teacher_features[rows].detach().float()
                distance = feature_distance(projected, aim, cfg.feature_loss)
                loss = loss + cfg.feature_weight * distance
        return loss


@torch.no_grad()
def modality_head_metrics(
    model: nn.Module,
    heads: nn.ModuleDict,
    split: SplitData,
    labels: list[str],
    batch_size: int,
    device: torch.device,
) -> dict[str, dict[str, Any]]:
    """Modality -> the metrics of its head alone on `split` (eval mode, float32): each
    modality's encoder output through its head, as a single-modality model would."""
    model.eval()
    heads.eval()
    outputs: dict[str, list[torch.Tensor]] = {m: [] for m in heads}
    for batch in iterate_batches(split, batch_size):
        batch = batch.to(device)
        encoded = model.encoder(batch)
        for m, head in heads.items():
            outputs[m].append(head(encoded[m][batch.mask].float()).cpu())
    truth = split.labels.numpy()
    return {
        m: classification_metrics(truth, torch.cat(out).argmax(1).numpy(), labels)
        for m, out in outputs.items()
    }


def score_modality_heads(
    config: Config,
    dataset: Dataset,
    model: nn.Module,
    heads: nn.ModuleDict,
    device: torch.device,
    test: bool,
) -> dict[str, dict[str, Any]]:
    """Modality -> its role (teacher or student) and the metrics of its head alone on dev
    (and test), each logged."""
    teacher = config.train.distill.teacher_modality
    scored: dict[str, dict[str, Any]] = {
        m: {"role": "teacher" if m == teacher else "student"} for m in heads
    }
    for name in ("dev", "test") if test else ("dev",):
        split = dataset.splits[name]
        for m, metrics in modality_head_metrics(
            model, heads, split, dataset.labels, config.train.batch_size, device
        ).items():
            scored[m][name] = metrics
    for m, entry in scored.items():
        figures = " | ".join(
            f"{name} acc {entry[name]['accuracy']:.4f} wF1 {entry[name]['weighted_f1']:.4f}"
            for name in ("dev", "test")
            if name in entry
        )
        log.info("modality head %s (%s) alone: %s", m, entry["role"], figures)
    return scored
