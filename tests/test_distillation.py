"""train.distill: a teacher run checked like evaluate checks a run, its outputs cached once
per (teacher, data), causal students refused an offline teacher, resuming exact; a teacher
modality inside the model teaching the other modalities' heads in one run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import corect.engine.distillation as distillation
from corect.config import Config, ConfigError, DistillConfig, load_config
from corect.data.batching import iterate_batches
from corect.engine.checkpoints import load_data, load_run, model_for
from corect.engine.distillation import (
    DistillError,
    ModalityDistillation,
    batch_rows,
    modality_head_metrics,
)
from corect.engine.scoring import evaluate_run, predict
from corect.engine.training import build_loss, build_optimizer, train, train_step
from corect.models.registry import MODEL_NAMES
from tests.conftest import tiny_config
from tests.test_resume import assert_same_run, run_dir_of, stop_at


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> dict[str, Path]:
    """A t+a+v CORECT teacher, offline and causal, on the tiny synthetic data."""
    folder = tmp_path_factory.mktemp("teachers")
    return {
        mode: train(tiny_config(folder, model={"causal": mode == "causal"}, train={"epochs": 2}))
        for mode in ("offline", "causal")
    }


def student(tmp_path: Path, teacher: Path | str, run_name: str = "s", **settings) -> Config:
    """An audio-only student of `teacher` (several: comma-separated; `causal`: a causal
    student), 2 epochs; its data cache is the (first) teacher's (the same data)."""
    model = {"causal": True} if settings.pop("causal", False) else {}
    distill = {"teacher_run": str(teacher), **settings.pop("distill", {})}
    config = tiny_config(
        tmp_path,
        data={"modalities": "a"},
        model=model,
        train={"distill": distill, "run_name": run_name, "epochs": 2, **settings},
    )
    first = Path(str(teacher).split(",")[0])
    config.data.cache_dir = load_config(first / "config.yaml").data.cache_dir
    return config


def counting(monkeypatch) -> list[Path]:
    """Record every computation of a teacher's outputs."""
    calls, compute = [], distillation.compute_teacher_outputs

    def counted(run_dir, dataset, device):
        calls.append(run_dir)
        return compute(run_dir, dataset, device)

    monkeypatch.setattr(distillation, "compute_teacher_outputs", counted)
    return calls


def test_the_teachers_outputs_are_computed_once_then_read_from_the_cache(
    tmp_path, teachers, monkeypatch
):
    calls = counting(monkeypatch)
    settings = {"distill": {"feature_weight": 0.5, "feature_loss": "cosine"}}
    first = train(student(tmp_path, teachers["offline"], "first", **settings))
    second = train(student(tmp_path, teachers["offline"], "second", **settings))
    assert len(calls) == 1  # the second run read the cache
    cache = Path(load_config(teachers["offline"] / "config.yaml").data.cache_dir)
    assert len(list((cache / "teachers").glob("*.safetensors"))) == 1
    figures = [json.loads((run / "metrics.json").read_text()) for run in (first, second)]
    assert figures[0]["test"] == figures[1]["test"] and figures[0]["dev"] == figures[1]["dev"]
    # The cache holds the teacher's own logits on the train split, in split order.
    config, model, _ = load_run(teachers["offline"])
    train_split = load_data(config).splits["train"]
    expected = predict(model, train_split, config.train.batch_size, torch.device("cpu"), False)
    audio = student(tmp_path, teachers["offline"])
    targets = distillation.teacher_targets(audio, load_data(audio), torch.device("cpu"))
    assert targets.from_cache and torch.equal(targets.logits, expected)
    batch = next(iterate_batches(train_split, 3, shuffle=True, generator=torch.Generator()))
    assert torch.equal(train_split.labels[batch_rows(batch, train_split.offsets)], batch.labels)


def test_an_offline_teacher_for_a_causal_student_is_refused(tmp_path, teachers):
    config = student(tmp_path, teachers["offline"], causal=True)
    with pytest.raises(DistillError, match="offline teacher.*carry the future"):
        train(config)
    assert not list((tmp_path / "runs").glob("**/metrics.json"))
    causal = train(student(tmp_path, teachers["causal"], "causal", causal=True))
    assert (causal / "metrics.json").is_file()


def test_a_teacher_of_other_data_or_no_run_is_refused_naming_the_key(tmp_path, teachers):
    other = student(tmp_path, teachers["offline"])
    other.data.synthetic.seed = 5  # other dialogues
    other.data.cache_dir = str(tmp_path / "other-cache")
    with pytest.raises(DistillError, match="train.distill.teacher_run=.*is not the data"):
        train(other)
    missing = student(tmp_path, teachers["offline"])
    missing.train.distill.teacher_run = str(tmp_path / "nowhere")
    with pytest.raises(DistillError, match="train.distill.teacher_run=.*not a trained run"):
        train(missing)
    with pytest.raises(ConfigError, match="teaches nothing"):
        load_config(None, ["train.distill.teacher_run=x", "train.distill.logit_weight=0"])


def test_several_teacher_runs_teach_as_an_ensemble(tmp_path, teachers):
    both = f"{teachers['offline']},{teachers['causal']}"
    config = student(tmp_path, both, "ensemble", distill={"feature_weight": 0.3})
    dataset = load_data(config)
    cpu = torch.device("cpu")
    targets = distillation.teacher_targets(config, dataset, cpu)
    alone = [
        distillation.teacher_targets(student(tmp_path, teachers[mode]), dataset, cpu)
        for mode in ("offline", "causal")
    ]
    mean = (alone[0].logits.softmax(-1) + alone[1].logits.softmax(-1)) / 2
    torch.testing.assert_close(targets.logits, mean.log())
    assert torch.equal(targets.features, torch.cat([t.features for t in alone], -1))
    assert len(targets.paths) == 2 and targets.from_cache
    run = train(config)  # the projection fits the teachers' features side by side
    assert (run / "metrics.json").is_file()
    with pytest.raises(DistillError, match="offline teacher"):  # one offline teacher is enough
        train(student(tmp_path, both, "causal-ensemble", causal=True))


def test_a_distilled_run_resumes_to_the_same_figures(tmp_path, teachers):
    settings = {"distill": {"feature_weight": 0.2}, "epochs": 4}
    reference = train(student(tmp_path / "reference", teachers["offline"], "r", **settings))
    config = student(tmp_path, teachers["offline"], "r", **settings)
    with pytest.raises(KeyboardInterrupt):
        train(config, on_epoch=stop_at(2))
    run_dir = next((tmp_path / "runs").glob("**/r"))
    state = torch.load(run_dir / "training_state.pt", weights_only=True)
    assert "distillation.projection.weight" in state["objective"]  # learned, and kept
    assert not any("teacher" in key for key in state["objective"])  # read from the cache
    assert_same_run(train(config, resume=run_dir), reference)


def in_model(tmp_path: Path, run_name: str = "m", **distill) -> Config:
    """A t+a+v CORECT whose text head teaches the audio and video heads (3 epochs)."""
    settings = {"teacher_modality": "t", **distill}
    return tiny_config(
        tmp_path, train={"distill": settings, "run_name": run_name, "epochs": 3, "lr": 5e-3}
    )


def test_a_teacher_modality_teaches_the_other_modalities_heads_in_one_run(tmp_path):
    run = train(in_model(tmp_path, feature_weight=0.2))
    metrics = json.loads((run / "metrics.json").read_text())
    heads = metrics["modality_heads"]
    assert {m: h["role"] for m, h in heads.items()} == {
        "t": "teacher",
        "a": "student",
        "v": "student",
    }
    # The heads are kept with the best checkpoint and score each modality alone.
    config, model, checkpoint = load_run(run)
    module = ModalityDistillation(config.train.distill, "tav", 6, config.model, 16)
    module.heads.load_state_dict(checkpoint["modality_heads"])
    dataset = load_data(config)
    alone = modality_head_metrics(
        model, module.heads, dataset.splits["test"], dataset.labels, 4, torch.device("cpu")
    )
    for m in "tav":
        assert alone[m]["weighted_f1"] == heads[m]["test"]["weighted_f1"]
    # The model itself is the plain model: evaluate reproduces its figures.
    assert evaluate_run(run, "test", device="cpu")["weighted_f1"] == metrics["test"]["weighted_f1"]
    plain = train(tiny_config(tmp_path, train={"run_name": "plain", "epochs": 3, "lr": 5e-3}))
    assert "modality_heads" not in json.loads((plain / "metrics.json").read_text())


def test_the_in_model_term_is_its_formula_and_the_teacher_learns_nothing_from_students():
    torch.manual_seed(0)
    distill = DistillConfig(teacher_modality="t", temperature=2.0, logit_weight=0.7)
    config = tiny_config(Path("unused"), train={"distill": {"teacher_modality": "t"}})
    module = ModalityDistillation(distill, "tav", 4, config.model, 16).train()
    module.heads.eval()  # no dropout: the formula below is deterministic
    encoded = {m: torch.randn(5, 16, requires_grad=True) for m in "tav"}
    labels = torch.tensor([0, 1, 2, 3, 1])
    loss = module(torch.randn(5, 4), encoded, labels, None, None)
    scores = {m: module.heads[m](encoded[m]) for m in "tav"}
    expected = sum(F.cross_entropy(scores[m], labels) for m in "tav")
    teacher = F.softmax(scores["t"] / 2, dim=-1)
    for m in "av":
        kl = (teacher * (teacher.log() - F.log_softmax(scores[m] / 2, dim=-1))).sum(1).mean()
        expected = expected + 0.7 * 4 * kl
    torch.testing.assert_close(loss, expected)
    # Only the distillation term: the teacher's head and encoder output get no gradient.
    only_kd = ModalityDistillation(
        DistillConfig(teacher_modality="t", student_weight=0.0), "tav", 4, config.model, 16
    )
    only_kd(torch.randn(5, 4), encoded, labels, None, None).backward()
    assert encoded["t"].grad is None
    assert all(p.grad is None for p in only_kd.heads["t"].parameters())
    assert encoded["a"].grad.abs().sum() > 0 and encoded["v"].grad.abs().sum() > 0


def test_blanked_modalities_neither_learn_nor_teach():
    torch.manual_seed(0)
    config = tiny_config(Path("unused"), train={"distill": {"teacher_modality": "t"}})
    distill = DistillConfig(teacher_modality="t", feature_weight=0.5)
    module = ModalityDistillation(distill, "tav", 4, config.model, 16).eval()
    encoded = {m: torch.randn(5, 16) for m in "tav"}
    labels, logits = torch.tensor([0, 1, 2, 3, 1]), torch.randn(5, 4)
    present = {m: torch.ones(5, dtype=torch.bool) for m in "tav"}
    present["a"][0] = present["t"][2] = False  # blanked by modality or utterance dropout
    loss = module(logits, encoded, labels, None, None, present)
    changed = {m: h.clone() for m, h in encoded.items()}
    changed["a"][0], changed["t"][2] = torch.randn(16), torch.randn(16)
    torch.testing.assert_close(module(logits, changed, labels, None, None, present), loss)
    changed["a"][1] = torch.randn(16)  # a present row counts
    assert not torch.allclose(module(logits, changed, labels, None, None, present), loss)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_trains_with_an_in_model_teacher(tmp_path, name):
    distill = {"teacher_modality": "all", "feature_weight": 0.5, "feature_loss": "cosine"}
    config = tiny_config(tmp_path, model={"name": name}, train={"distill": distill})
    dataset = load_data(config)
    torch.manual_seed(0)
    model = model_for(config, dataset)
    objective = build_loss(config, dataset, torch.device("cpu"), model)
    optimizer = build_optimizer(config, model, objective.parameters())
    batch = next(iterate_batches(dataset.splits["train"], 4))
    model.train()
    generator = torch.Generator().manual_seed(0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    cpu = torch.device("cpu")
    step = train_step(model, batch, config, optimizer, scaler, objective, generator, cpu)
    assert torch.isfinite(step[0])
    for m in "tav":  # every modality is a student of the model's own output
        head = objective.modality_heads[m]
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["train.distill.teacher_modality=x"],
            "teacher_modality='x': choose 'all'.*or one of data.modalities",
        ),
        (["train.distill.teacher_modality=t", "data.modalities=t"], "leaves no other modality"),
        (
            ["train.distill.teacher_modality=t", "train.distill.teacher_run=r"],
            "choose one teacher",
        ),
        (
            ["train.distill.teacher_modality=a", "train.distill.student_weight=0"],
            "student_weight=0",
        ),
        (["train.distill.student_weight=-1"], "train.distill.student_weight=-1.0"),
    ],
)
def test_teacher_modality_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_an_in_model_distilled_run_resumes_to_the_same_figures(tmp_path):
    reference = train(in_model(tmp_path / "reference", "r", feature_weight=0.2))
    config = in_model(tmp_path, "r", feature_weight=0.2)
    with pytest.raises(KeyboardInterrupt):
        train(config, on_epoch=stop_at(2))
    state = torch.load(run_dir_of(config) / "training_state.pt", weights_only=True)
    assert "modality_distillation.heads.a.net.0.weight" in state["objective"]
    assert "modality_distillation.projections.v.weight" in state["objective"]
    assert_same_run(train(config, resume=run_dir_of(config)), reference)  # heads' figures too
