"""The one configuration object of corect.

A run is described by a :class:`Config` made of three dataclasses (``data``, ``model``,
``train``). It is loaded from YAML (:func:`load_config`), optionally changed by
``--set section.key=value`` overrides, validated with messages that name the offending
key, and passed down whole: no module reads command-line flags of its own.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from corect.common.errors import InputError
from corect.common.files import read_yaml, write_atomic
from corect.models.registry import FUSION_NAMES, MODEL_NAMES

MODALITIES = ("t", "a", "v")
ENCODER_KINDS = ("mlp", "transformer", "lstm")
EDGE_TYPES = ("temp", "multi", "temp_multi")
MODES = ("offline", "causal")  # model.causal false / true
REPRESENTATIONS = ("head", "encoder")  # train.loss.representation
PROTOTYPES = ("off", "running", "learned")  # train.loss.prototype
CLASSIFIERS = ("linear", "prototype")  # model.classifier
FEATURE_LOSSES = ("mse", "cosine")  # train.distill.feature_loss


class ConfigError(InputError):
    """A configuration value is missing, unknown or out of range."""


@dataclass
class SyntheticConfig:
    """Size and difficulty of the embedded synthetic dataset (see corect.data.synthetic)."""

    seed: int = 0
    train_dialogues: int = 108
    dev_dialogues: int = 12
    test_dialogues: int = 31
    min_length: int = 20
    max_length: int = 76
    dims: dict[str, int] = field(default_factory=lambda: {"t": 384, "a": 100, "v": 512})
    noise: float = 1.6


@dataclass
class DataConfig:
    """Which dataset to read and which modalities to use."""

    # Dataset directory in the corect format; empty = the embedded synthetic dataset,
    # generated (once) under `cache_dir`.
    path: str = ""
    modalities: str = "tav"
    cache_dir: str = "runs/.cache"
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class ModelConfig:
    """Architecture. Defaults are CORECT's published sizes."""

    name: str = "corect"
    hidden_size: int = 100
    # Standardise each input dimension with train-split statistics (saved with the
    # checkpoint) and clip to +-input_clip: any feature scale works. See docs/data.md.
    input_norm: bool = True
    input_clip: float = 5.0
    # Unimodal encoder per modality: mlp | transformer | lstm.
    encoders: dict[str, str] = field(
        default_factory=lambda: {"t": "transformer", "a": "mlp", "v": "mlp"}
    )
    encoder_layers: int = 2
    encoder_heads: int = 2
    dropout: float = 0.5  # encoders and classifier head
    attention_dropout: float = 0.1  # residual dropout inside every attention block (MulT)
    # 0 = as many speaker slots as the dataset's largest dialogue has parties.
    num_speakers: int = 0
    use_speaker: bool = True
    # Causal mode: no prediction depends on a later utterance (edges, attention, recurrence).
    causal: bool = False
    # CORECT parts and ablations.
    use_rtgcn: bool = True
    use_pcm: bool = True
    edge_types: str = "temp_multi"
    # Small-data switches (docs/parts.md): off in the published model.
    # The head also sees the encoder outputs, so RT-GCN and P-CM can only add to them.
    encoder_skip: bool = False
    gnn_dropout: float = 0.0  # on RT-GCN's attention coefficients and its output
    # Training: drop RT-GCN's or P-CM's whole output of an utterance with this probability
    # (kept ones scaled by 1/(1-p)), so the head learns to use each part alone and both.
    part_dropout: float = 0.0
    input_noise: float = 0.0  # std of Gaussian noise on standardised inputs (training)
    wp: int = 11  # past window (-1 = unbounded)
    wf: int = 5  # future window (-1 = unbounded); forced to 0 in causal mode
    gnn_heads: int = 7
    pcm_layers: int = 2
    pcm_heads: int = 2
    pcm_self_layers: int = 3
    # The classifier's last layer, shared by every model: linear logits, or distance-based
    # logits against learned class prototypes, cos(u, c_k) / classifier_temperature.
    classifier: str = "linear"  # linear | prototype
    classifier_temperature: float = 0.1
    # Fusion baselines.
    fusion: str = "early"  # the fusion used inside `context`
    gate_bias_modality: str = "t"  # `gated`: the gate starts biased toward this modality
    gate_bias: float = 1.0
    lowrank_rank: int = 4
    moe_experts_hidden: int = 100
    late_learned_weights: bool = False
    context_layers: int = 1


@dataclass
class LossConfig:
    """Training objective: cross-entropy plus optional auxiliary terms (docs/objectives.md).

    Every term is off by default; with all off the loss is the plain (class-weighted)
    cross-entropy. ``representation`` is the utterance vector the contrastive and
    prototype terms use: ``head`` (the classifier's input) or ``encoder`` (the shared
    encoders' outputs, speaker embedding added, modalities concatenated)."""

    label_smoothing: float = 0.0  # of the cross-entropy, in [0, 1)
    supcon_weight: float = 0.0  # supervised contrastive term; 0 = off
    supcon_temperature: float = 0.1
    # Representations of earlier batches kept (detached, FIFO) as extra positives and
    # negatives of the contrastive term; 0 = the batch alone.
    supcon_memory: int = 0
    representation: str = "head"  # head | encoder
    prototype: str = "off"  # off | running (class means, EMA) | learned (parameters)
    prototype_weight: float = 0.5
    prototype_temperature: float = 0.1
    prototype_momentum: float = 0.9  # EMA of the running prototypes


@dataclass
class DistillConfig:
    """Distillation (docs/objectives.md), off while ``teacher_run`` and
    ``teacher_modality`` are empty. From a trained teacher run: its logits (and head
    inputs) on the train split are computed once and cached under ``data.cache_dir``.
    Inside the model: every modality's encoder gets a classifier head of its own, and
    the teacher's (one modality's head, or ``all``: the model's own output) teaches the
    other modalities' heads, all students in one run."""

    teacher_run: str = ""  # a run directory trained on the same dataset and labels
    teacher_modality: str = ""  # in-model teacher: a modality of data.modalities, or "all"
    student_weight: float = 1.0  # in-model: cross-entropy of each modality head on labels
    temperature: float = 2.0
    logit_weight: float = 1.0  # KL(teacher || student) of the softened logits, times T^2
    feature_weight: float = 0.0  # student head input, projected, onto the teacher's
    feature_loss: str = "mse"  # mse | cosine


@dataclass
class TrainConfig:
    """Optimisation, selection and bookkeeping."""

    epochs: int = 50
    batch_size: int = 10
    optimizer: str = "adam"  # adam | adamw
    lr: float = 2.5e-4
    weight_decay: float = 1e-8
    grad_clip: float = 5.0  # 0 = off
    class_weights: bool = False
    scheduler_patience: int = 5  # ReduceLROnPlateau on dev loss; -1 = no scheduler
    scheduler_factor: float = 0.5
    early_stopping: int = 15  # epochs without dev weighted-F1 gain; 0 = off
    bucket_by_length: bool = True  # batch dialogues of similar length (less padding)
    modality_dropout: float = 0.0  # probability to blank one modality of a dialogue in training
    # Probability to blank every modality of an utterance in training (its label is kept,
    # so it must be told from the context: docs/parts.md).
    utterance_dropout: float = 0.0
    seed: int = 24
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # mixed precision on CUDA
    runs_dir: str = "runs"
    run_name: str = ""  # empty = <date-time>-seed<seed>
    progress: bool = True
    figures: bool = True  # confusion-matrix figures (PNG + TensorBoard) for dev and test
    loss: LossConfig = field(default_factory=LossConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)


@dataclass
class Config:
    """A whole run: data, model and training."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> Config:
        """Check every value; raise :class:`ConfigError` naming the key at fault."""
        mods = self.data.modalities
        if not mods or any(m not in MODALITIES for m in mods) or len(set(mods)) != len(mods):
            raise ConfigError(
                f"data.modalities={mods!r}: use distinct letters from {''.join(MODALITIES)}, "
                "for example 'tav', 'ta' or 't'"
            )
        m, t = self.model, self.train
        if m.name not in MODEL_NAMES:
            raise ConfigError(f"model.name={m.name!r}: choose one of {', '.join(MODEL_NAMES)}")
        if m.fusion not in FUSION_NAMES:
            raise ConfigError(f"model.fusion={m.fusion!r}: choose a fusion baseline name")
        if m.classifier not in CLASSIFIERS:
            raise ConfigError(
                f"model.classifier={m.classifier!r}: choose one of {', '.join(CLASSIFIERS)}"
            )
        for mod, kind in m.encoders.items():
            _check_modality_key("model.encoders", mod)
            if kind not in ENCODER_KINDS:
                raise ConfigError(
                    f"model.encoders.{mod}={kind!r}: choose one of {', '.join(ENCODER_KINDS)}"
                )
        for mod in mods:
            if mod not in m.encoders:
                raise ConfigError(f"model.encoders.{mod} is missing (data.modalities={mods!r})")
        if m.edge_types not in EDGE_TYPES:
            raise ConfigError(f"model.edge_types={m.edge_types!r}: one of {', '.join(EDGE_TYPES)}")
        if m.gate_bias_modality not in MODALITIES:
            raise ConfigError(f"model.gate_bias_modality={m.gate_bias_modality!r}: t, a or v")
        self._check_synthetic()
        for key, value in _flat_values(self):
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{key}={value}: must be a finite number")
        values = dict(_flat_values(self))
        for key, ok, requirement in _range_checks(self):
            if not ok:
                raise ConfigError(f"{key}={values[key]}: {requirement}")
        for heads in ("encoder_heads", "pcm_heads"):
            if m.hidden_size % getattr(m, heads):
                raise ConfigError(
                    f"model.hidden_size={m.hidden_size} must be divisible by "
                    f"model.{heads}={getattr(m, heads)}"
                )
        if t.optimizer not in ("adam", "adamw"):
            raise ConfigError(f"train.optimizer={t.optimizer!r}: adam or adamw")
        if not (t.device in ("auto", "cpu", "cuda") or t.device.startswith("cuda:")):
            raise ConfigError(f"train.device={t.device!r}: auto, cpu, cuda or cuda:N")
        self._check_objectives()
        return self

    def _check_objectives(self) -> None:
        """``train.loss`` and ``train.distill``: known choices, a teacher that teaches."""
        loss, distill = self.train.loss, self.train.distill
        for key, value, choices in (
            ("train.loss.representation", loss.representation, REPRESENTATIONS),
            ("train.loss.prototype", loss.prototype, PROTOTYPES),
            ("train.distill.feature_loss", distill.feature_loss, FEATURE_LOSSES),
        ):
            if value not in choices:
                raise ConfigError(f"{key}={value!r}: choose one of {', '.join(choices)}")
        if distill.teacher_run and distill.logit_weight == 0 and distill.feature_weight == 0:
            raise ConfigError(
                f"train.distill.teacher_run={distill.teacher_run!r} teaches nothing: "
                "train.distill.logit_weight and train.distill.feature_weight are both 0"
            )
        self._check_teacher_modality()

    def _check_teacher_modality(self) -> None:
        """``train.distill.teacher_modality``: a modality of the data (or ``all``) with at
        least one other modality to teach, and not together with a teacher run."""
        distill, modalities = self.train.distill, self.data.modalities
        teacher = distill.teacher_modality
        if not teacher:
            return
        key = f"train.distill.teacher_modality={teacher!r}"
        if distill.teacher_run:
            raise ConfigError(
                f"{key} and train.distill.teacher_run={distill.teacher_run!r}: choose one "
                "teacher (a modality inside the model, or a trained run)"
            )
        if teacher != "all" and teacher not in modalities:
            raise ConfigError(
                f"{key}: choose 'all' (the model's own output) or one of "
                f"data.modalities={modalities!r}"
            )
        if teacher != "all" and len(modalities) < 2:
            raise ConfigError(
                f"{key}: data.modalities={modalities!r} leaves no other modality to teach; "
                "use 'all' or add modalities"
            )
        if teacher != "all" and distill.student_weight == 0:
            raise ConfigError(
                f"{key} with train.distill.student_weight=0: the teacher modality's head "
                "learns from the labels through student_weight; make it positive"
            )

    def _check_synthetic(self) -> None:
        """The synthetic dataset's dims: known modalities, positive sizes, every used one."""
        dims = self.data.synthetic.dims
        for mod, dim in dims.items():
            _check_modality_key("data.synthetic.dims", mod)
            if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
                raise ConfigError(f"data.synthetic.dims.{mod}={dim!r}: must be an integer >= 1")
        if not self.data.path:
            for mod in self.data.modalities:
                if mod not in dims:
                    raise ConfigError(
                        f"data.synthetic.dims has no {mod!r} (data.modalities="
                        f"{self.data.modalities!r})"
                    )


def _check_modality_key(where: str, key: Any) -> None:
    if key not in MODALITIES:
        raise ConfigError(
            f"unknown key {where}.{key}; known keys under {where}: {', '.join(MODALITIES)}"
        )


def _flat_values(config: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) of every leaf of a config dataclass."""
    out = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            out += _flat_values(value, f"{prefix}{f.name}.")
        else:
            out.append((f"{prefix}{f.name}", value))
    return out


POSITIVE_INTS = (
    "model.hidden_size model.encoder_layers model.encoder_heads model.gnn_heads "
    "model.pcm_layers model.pcm_heads model.pcm_self_layers model.lowrank_rank "
    "model.moe_experts_hidden model.context_layers train.epochs train.batch_size "
    "data.synthetic.train_dialogues data.synthetic.dev_dialogues "
    "data.synthetic.test_dialogues data.synthetic.min_length"
).split()

NON_NEGATIVE = (
    "train.weight_decay train.grad_clip model.input_noise train.loss.supcon_weight "
    "train.loss.prototype_weight train.distill.logit_weight train.distill.feature_weight "
    "train.distill.student_weight train.loss.supcon_memory"
).split()


def _range_checks(config: Config) -> list[tuple[str, bool, str]]:
    """(key, whether its value is in range, the requirement) for every numeric key."""
    v = dict(_flat_values(config))
    checks = [(key, v[key] >= 1, "must be at least 1") for key in POSITIVE_INTS]
    checks += [(k, v[k] >= -1, "use -1 (unbounded) or >= 0") for k in ("model.wp", "model.wf")]
    for key in (
        "model.dropout",
        "model.attention_dropout",
        "model.gnn_dropout",
        "model.part_dropout",
        "train.modality_dropout",
        "train.utterance_dropout",
        "train.loss.label_smoothing",
        "train.loss.prototype_momentum",
    ):
        checks.append((key, 0 <= v[key] < 1, "must be in [0, 1)"))
    for key in NON_NEGATIVE:
        checks.append((key, v[key] >= 0, "must be >= 0 (0 = off)"))
    for key in ("loss.supcon_temperature", "loss.prototype_temperature", "distill.temperature"):
        checks.append((f"train.{key}", v[f"train.{key}"] > 0, "must be positive"))
    checks.append(("model.num_speakers", v["model.num_speakers"] >= 0, "0 (from the data) or more"))
    for key in ("train.seed", "data.synthetic.seed"):
        checks.append((key, 0 <= v[key] < 2**32, "must be in 0 .. 2**32 - 1"))
    min_length = v["data.synthetic.min_length"]
    return checks + [
        ("model.input_clip", v["model.input_clip"] > 0, "must be positive"),
        ("model.classifier_temperature", v["model.classifier_temperature"] > 0, "must be positive"),
        ("train.lr", v["train.lr"] > 0, "must be positive"),
        (
            "train.scheduler_factor",
            0 < v["train.scheduler_factor"] < 1,
            "must be in (0, 1): the learning rate is multiplied by it on a plateau",
        ),
        ("train.scheduler_patience", v["train.scheduler_patience"] >= -1, "-1 (off) or >= 0"),
        ("train.early_stopping", v["train.early_stopping"] >= 0, "use 0 (off) or >= 1"),
        ("data.synthetic.noise", v["data.synthetic.noise"] >= 0, "must be >= 0"),
        (
            "data.synthetic.max_length",
            v["data.synthetic.max_length"] >= min_length,
            f"must be at least data.synthetic.min_length={min_length}",
        ),
    ]


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    """Build dataclass `cls` from a dict, rejecting unknown keys with their full path."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {values!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(where + k for k in unknown)}; "
            f"known keys under {where or 'the top level'}: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, f"{where}{name}.")
        else:
            kwargs[name] = _coerce(value, hint, f"{where}{name}")
    obj = cls()
    for name, value in kwargs.items():
        current = getattr(obj, name)
        if isinstance(current, dict) and isinstance(value, dict):
            value = {**current, **value}  # partial dict overrides keep the other entries
        setattr(obj, name, value)
    return obj


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = getattr(hint, "__origin__", None)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def config_from_dict(values: dict[str, Any]) -> Config:
    """Build and validate a :class:`Config` from a (possibly partial) nested dict."""
    return _build(Config, values or {}, "").validate()


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings (values parsed as YAML) to a nested dict."""
    values = dict(values)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.epochs=5")
        dotted, raw = item.split("=", 1)
        parts = dotted.strip().split(".")
        node = values
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part} is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return values


def add_overrides_argument(parser: argparse.ArgumentParser, help_text: str) -> None:
    """The ``--set KEY=VALUE ...`` option of every command (repeatable; YAML values)."""
    parser.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help=help_text,
    )


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults when `path` is None) and apply overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        values = read_yaml(path, ConfigError, "; give a YAML config") or {}
        if not isinstance(values, dict):
            raise ConfigError(
                f"{path}: expected a mapping of the sections data, model, train (for example "
                f"'train: {{epochs: 5}}'), got a {type(values).__name__}"
            )
    values = apply_overrides(values, overrides or [])
    try:
        return config_from_dict(values)
    except ConfigError as err:
        where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}{err}") from None


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically: a resumed run rewrites it)."""
    write_atomic(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


def mode_of(config: Config) -> str:
    """``offline`` or ``causal``: the :data:`MODES` entry of ``config.model.causal``."""
    return MODES[int(config.model.causal)]
