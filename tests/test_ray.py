"""Runs on a local Ray (one session for the module, 2 CPUs): the Ray backend gives what
the sequential path gives (same files, same numbers, reuse, failures), and
``corect.tune`` searches end to end without ever scoring test, and continues an
interrupted search from its trials' checkpoints."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

import corect
import corect.experiments.trials
from corect.config import Config, load_config
from corect.engine.training import EpochCallback, train
from corect.experiments.backends import RayBackend, start_ray
from corect.experiments.benchmark import run_benchmark, run_config
from corect.experiments.compare import compare
from corect.experiments.runner import experiment_log
from corect.experiments.space import load_space
from corect.experiments.trials import Trial, TrialSetup, search
from corect.experiments.tuning import run_tune
from tests.conftest import TINY_DIMS
from tests.test_benchmark import fake_train

ray = pytest.importorskip("ray")
# Tasks unpickle this module's functions by value: workers need not import the tests.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
ray.cloudpickle.register_pickle_by_value(sys.modules["tests.test_benchmark"])

TINY = [
    "data.synthetic.train_dialogues=6",
    "data.synthetic.dev_dialogues=2",
    "data.synthetic.test_dialogues=2",
    "data.synthetic.min_length=4",
    "data.synthetic.max_length=8",
    f"data.synthetic.dims={json.dumps(TINY_DIMS)}",
    "train.epochs=2",
    "train.device=cpu",
    "train.figures=false",
    "model.hidden_size=16",
    "model.gnn_heads=2",
    "model.pcm_layers=1",
    "model.pcm_self_layers=1",
    "model.encoder_layers=1",
]


def tiny(tmp_path: Path) -> list[str]:
    return [*TINY, f"data.cache_dir={tmp_path / 'cache'}"]


@pytest.fixture(scope="module")
def backend() -> Iterator[RayBackend]:
    """A local Ray for the whole module: 2 CPUs, a small object store, no dashboard."""
    started = start_ray(num_cpus=2, object_store_memory=100 * 2**20)
    yield RayBackend(cpus_per_run=1)
    if started:
        ray.shutdown()


def test_tune_end_to_end(tmp_path: Path, backend: RayBackend) -> None:
    """First in the module: its final runs start the task workers the tests below reuse."""
    space = tmp_path / "space.yaml"
    space.write_text(
        yaml.safe_dump(
            {"space": {"train.lr": {"loguniform": [1e-4, 1e-2]}, "model.wp": {"choice": [2, 11]}}}
        )
    )
    overrides = [*tiny(tmp_path), "train.epochs=3"]
    final = run_tune(
        None,
        space,
        3,
        overrides,
        seeds=[1, 2],
        out_dir=tmp_path / "t",
        backend=backend,
        grace_epochs=1,
    )
    out = tmp_path / "t"
    trials = json.loads((out / "trials.json").read_text())["trials"]
    assert len(trials) == 3 and (out / "trials.csv").is_file() and (out / "trials.md").is_file()
    failed = [(t["trial"], t["ended"]) for t in trials if t["best_dev_weighted_f1"] is None]
    assert not failed, f"trials that failed (their errors are in the log above): {failed}"
    scores = [t["best_dev_weighted_f1"] for t in trials]
    assert scores == sorted(scores, reverse=True)
    # The config's own values (the defaults' lr 2.5e-4 and wp 11) were the first trial.
    assert any(t["train.lr"] == 2.5e-4 and t["model.wp"] == 11 for t in trials)
    assert all(len(t["history"]) == t["epochs"] >= 1 for t in trials)
    for metrics in (out / "trials").glob("**/metrics.json"):
        assert "test" not in json.loads(metrics.read_text())  # test never scored
    best = load_config(out / "best.yaml")
    assert best.train.lr == pytest.approx(trials[0]["train.lr"])
    assert best.model.wp == trials[0]["model.wp"] and best.train.epochs == 3
    summary = json.loads((out / "results.json").read_text())
    assert summary["complete"] and summary["search"]["best_trial"] == trials[0]["trial"]
    for label, runs in summary["configs"].items():
        assert runs["seeds"] == [1, 2] and 0 <= runs["weighted_f1"]["mean"] <= 100, label
    assert "Test weighted_f1 (%)" in final.markdown()


def worker_facts(item: int) -> tuple[str, int, str]:
    return corect.__file__, torch.get_num_threads(), os.getcwd()


def test_workers_import_this_corect(backend: RayBackend) -> None:
    outputs = dict(backend.run(worker_facts, [0, 1, 2]))
    assert sorted(outputs) == [0, 1, 2]
    for corect_file, threads, cwd in outputs.values():
        assert (corect_file, threads, cwd) == (corect.__file__, 1, os.getcwd())


def stop_after_epoch_1(figures: dict[str, float]) -> None:
    if figures["epoch"] == 1:
        raise KeyboardInterrupt  # as Ctrl-C: the run is marked stopped, resumable


def test_benchmark_on_ray_equals_sequential(tmp_path: Path, backend: RayBackend) -> None:
    args = (None, ["corect", "early"], [1, 2], tiny(tmp_path))
    here = run_benchmark(*args, tmp_path / "sequential")
    # An earlier benchmark in the same output was stopped after epoch 1 of early seed 2.
    stopped = run_config(None, tiny(tmp_path), "early", 2, tmp_path / "ray" / "runs")
    with pytest.raises(KeyboardInterrupt):
        train(stopped, on_epoch=stop_after_epoch_1)
    there = run_benchmark(*args, tmp_path / "ray", backend=backend)
    assert [r.run_dir for r in there.results] == [r.run_dir for r in here.results]
    for mine, theirs in zip(here.results, there.results, strict=True):
        for split in ("dev", "test"):  # identical numbers, whatever ran the run
            assert mine.metrics[split] == theirs.metrics[split]
    data = [json.loads((tmp_path / d / "results.json").read_text()) for d in ("sequential", "ray")]
    assert data[0]["complete"] and data[1]["complete"]
    for model in ("corect", "early"):
        assert (
            data[0]["models"][model]["summary"]["weighted_f1"]
            == (data[1]["models"][model]["summary"]["weighted_f1"])
        )
    log = (tmp_path / "ray" / "benchmark.log").read_text()
    assert log.count("epoch   2") == 4 and log.count("epoch   1") == 3  # one run resumed
    assert "resuming the unfinished run" in log and "early-seed2 (stopped" in log


def must_not_train(config: Config) -> Path:
    raise AssertionError(f"retrained {config.train.run_name}")


def boom_for_late(config: Config) -> Path:
    if config.model.name == "late":
        raise ValueError("boom")
    return fake_train(config)


def test_reuse_and_failure_on_ray(tmp_path: Path, backend: RayBackend) -> None:
    models = ["early", "late"]
    first = run_benchmark(None, models, [1, 2], [], tmp_path, train_fn=fake_train, backend=backend)
    again = run_benchmark(
        None, models, [1, 2], [], tmp_path, train_fn=must_not_train, backend=backend
    )
    assert again.table() == first.table()  # every run reused, none retrained

    out = tmp_path / "failing"
    with pytest.raises(RuntimeError, match="model 'late' \\(seed 1\\) failed: boom"):
        run_benchmark(None, models, [1], [], out, train_fn=boom_for_late, backend=backend)
    data = json.loads((out / "results.json").read_text())
    assert data["complete"] is False and not data["models"]["late"]["runs"]


def test_compare_modes_on_ray_equals_sequential(tmp_path: Path, backend: RayBackend) -> None:
    rows = []
    for place, on in (("sequential", None), ("ray", backend)):
        overrides = [*tiny(tmp_path), f"train.runs_dir={tmp_path / place}"]
        result = compare(None, [1], overrides, out_dir=tmp_path / place / "c", backend=on)
        assert [r.mode for r in result.runs] == ["offline", "causal"]
        rows.append(json.loads((result.out_dir / "results.json").read_text())["rows"])
    assert rows[0]["weighted_f1"] == rows[1]["weighted_f1"]


BASE_LR = load_config().train.lr  # the first trial's: the config's own values


class FailingSetup(TrialSetup):
    """Trials whose first trial fails in epoch 2 while ``<out>/fail`` exists (a worker
    lost again and again, until Tune gives the trial up)."""

    def reporter(self, config: Config) -> EpochCallback:
        report, marker = super().reporter(config), Path(self.runs_dir).parent / "fail"

        def failing(figures: dict[str, float]) -> None:
            if figures["epoch"] == 2 and config.train.lr == BASE_LR and marker.exists():
                raise RuntimeError("injected: the worker was lost")
            report(figures)

        return failing


def test_a_search_run_again_continues_its_trials_from_their_checkpoints(
    tmp_path: Path, backend: RayBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first trial fails in epoch 2 (Tune does not retry it here, to keep the test
    short); the search run again with the same output is restored, and that trial
    continues from its epoch-1 checkpoint to the figures of an uninterrupted run."""
    monkeypatch.setattr(corect.experiments.trials, "TrialSetup", FailingSetup)
    monkeypatch.setattr(corect.experiments.trials, "TRIAL_RETRIES", 0)
    overrides, out = [*tiny(tmp_path), "train.epochs=3"], tmp_path / "t"
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"space": {"train.lr": {"loguniform": [1e-4, 1e-2]}}}))
    params = load_space(space, None, overrides)
    out.mkdir()
    (out / "fail").touch()

    def searched(trials: int = 2) -> dict[float, Trial]:
        with experiment_log(out / "tune.log"):
            found = search(None, params, trials, overrides, out, backend, grace_epochs=3)
        return {t.values["train.lr"]: t for t in found}

    first = searched()
    assert [h["epoch"] for h in first[BASE_LR].history] == [1]
    assert first[BASE_LR].ended == "error: RuntimeError: injected: the worker was lost"
    (out / "fail").unlink()
    with pytest.raises(ValueError, match="other settings \\(trials differ"):
        searched(3)
    again = searched()
    assert [h["epoch"] for h in again[BASE_LR].history] == [1, 2, 3]
    assert again[BASE_LR].ended == "completed"
    (other,) = set(again) - {BASE_LR}
    assert again[other] == first[other]  # finished: kept, not trained again
    log = (out / "tune.log").read_text()
    assert "search: continuing" in log and log.count("resuming trial") == 1

    (trial,) = (out / "trials").glob(f"*/*/trial-{again[BASE_LR].name}")
    config = load_config(trial / "config.yaml")
    config.train.runs_dir, config.train.run_name = str(tmp_path / "whole"), "whole"
    whole = train(config, test=False)
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (trial, whole)]
    assert metrics[0]["dev"] == metrics[1]["dev"]  # resumed: the same figures
