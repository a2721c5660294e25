"""train.distill: a teacher run checked like evaluate checks a run, its outputs cached once
per (teacher, data), causal students refused an offline teacher, resuming exact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import corect.engine.distillation as distillation
from corect.config import Config, ConfigError, load_config
from corect.data.batching import iterate_batches
from corect.engine.checkpoints import load_data, load_run
from corect.engine.distillation import DistillError, batch_rows
from corect.engine.scoring import predict
from corect.engine.training import train
from tests.conftest import tiny_config
from tests.test_resume import assert_same_run, stop_at


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> dict[str, Path]:
    """A t+a+v CORECT teacher, offline and causal, on the tiny synthetic data."""
    folder = tmp_path_factory.mktemp("teachers")
    return {
        mode: train(tiny_config(folder, model={"causal": mode == "causal"}, train={"epochs": 2}))
        for mode in ("offline", "causal")
    }


def student(tmp_path: Path, teacher: Path, run_name: str = "s", **settings) -> Config:
    """An audio-only student of `teacher` (`causal`: a causal one), 2 epochs; its data
    cache is the teacher's (the same data)."""
    model = {"causal": True} if settings.pop("causal", False) else {}
    distill = {"teacher_run": str(teacher), **settings.pop("distill", {})}
    config = tiny_config(
        tmp_path,
        data={"modalities": "a"},
        model=model,
        train={"distill": distill, "run_name": run_name, "epochs": 2, **settings},
    )
    config.data.cache_dir = load_config(teacher / "config.yaml").data.cache_dir
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
