"""The benchmark runner: planning, tables, JSON, failures, and one real end-to-end run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corect.benchmark import main
from corect.config import MODES, Config, ConfigError, save_config
from corect.experiments.benchmark import DEFAULT_MODELS, run_benchmark, run_config
from corect.experiments.runner import mean_std
from corect.models.registry import VARIANTS, is_reference


def fake_train(config: Config) -> Path:
    """Stands in for corect.train.train: writes a metrics.json that depends on the run."""
    run_dir, k = Path(config.train.runs_dir) / config.train.run_name, 1
    while run_dir.exists():  # as corect.train does: never overwrite a run
        run_dir, k = run_dir.with_name(f"{config.train.run_name}-{k}"), k + 1
    run_dir.mkdir(parents=True)
    score = 0.5 + 0.01 * config.train.seed + (0.1 if config.model.name == "corect" else 0.0)
    metrics = {
        "dev": {"accuracy": score, "weighted_f1": score, "macro_f1": score},
        "test": {"accuracy": score, "weighted_f1": score - 0.05, "macro_f1": score - 0.1},
        "best_epoch": 1,
        "seconds_per_epoch": 0.5,
        "num_parameters": 1234 if config.model.use_rtgcn else 999,
        "causal": config.model.causal,
        "dataset": "synthetic",
        "config": config.to_dict(),
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    save_config(config, run_dir / "config.yaml")
    return run_dir


def test_every_model_name_maps_to_a_valid_config(tmp_path: Path) -> None:
    for name in VARIANTS:
        config = run_config(None, ["train.epochs=1"], name, 3, tmp_path)
        assert config.train.seed == 3 and config.train.run_name == f"{name}-seed3"
    cf = run_config(None, [], "corect-context-free", 1, tmp_path).model
    assert (cf.name, cf.use_rtgcn, cf.use_pcm) == ("corect", False, False)
    assert set(cf.encoders.values()) == {"mlp"}
    assert run_config(None, [], "context-gated", 1, tmp_path).model.fusion == "gated"
    assert set(DEFAULT_MODELS) <= set(VARIANTS)


def test_table_and_json(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    bench = run_benchmark(
        None,
        ["corect", "corect-no-rtgcn", "early"],
        [1, 2],
        ["train.epochs=1"],
        out,
        command="python -m corect.benchmark ...",
        train_fn=fake_train,
    )
    data = json.loads((out / "results.json").read_text())
    assert data["complete"] is True and data["seeds"] == [1, 2]
    corect = data["models"]["corect"]["summary"]
    # Test accuracy 0.61 and 0.62 -> 61.5 ± 0.707 %.
    assert corect["accuracy"]["mean"] == pytest.approx(61.5)
    assert corect["accuracy"]["std"] == pytest.approx(0.7071, abs=1e-3)
    assert corect["weighted_f1"]["mean"] == pytest.approx(56.5)
    assert data["models"]["corect-no-rtgcn"]["summary"]["num_parameters"] == 999
    assert data["models"]["early"]["overrides"] == ["model.name=early"]
    assert len(data["models"]["early"]["runs"]) == 2
    for run in data["models"]["early"]["runs"]:
        assert (out / run["run_dir"] / "metrics.json").is_file()
    table = (out / "results.md").read_text()
    assert "| `corect` | 2 | 61.50 ± 0.71 | 56.50 ± 0.71 | 51.50 ± 0.71 |" in table
    assert "`corect-no-rtgcn`" in table and "`early`" in table and "1,234" in table
    assert "runs/early-seed1" in table
    assert bench.table() in table
    assert (out / "results.png").read_bytes().startswith(b"\x89PNG")
    assert not list(out.glob(".results*"))  # no temporary files left behind


def test_both_modes_side_by_side(tmp_path: Path) -> None:
    bench = run_benchmark(
        None,
        ["early", "corect-context-free"],
        [1, 2],
        [],
        tmp_path,
        train_fn=fake_train,
        modes=["offline", "causal"],
    )
    assert len(bench.results) == 8
    names = sorted(Path(r.run_dir).name for r in bench.results if r.model == "early")
    assert names == ["early-causal-seed1", "early-causal-seed2", "early-seed1", "early-seed2"]
    table = bench.table()
    assert "| `early` offline | 2 |" in table and "| `early` causal | 2 |" in table
    scores = {(s.model, s.mode): s for s in bench.scores()}
    assert set(scores) == {(m, mode) for m in ("early", "corect-context-free") for mode in MODES}
    assert scores["corect-context-free", "causal"].reference
    assert not scores["early", "offline"].reference
    assert scores["early", "causal"].weighted_f1 == pytest.approx([46.0, 47.0])
    data = json.loads((tmp_path / "results.json").read_text())
    early = data["models"]["early"]
    assert early["summary"] is None and set(early["by_mode"]) == set(MODES)
    assert {r["mode"] for r in early["runs"]} == set(MODES)
    assert (tmp_path / "results.png").read_bytes().startswith(b"\x89PNG")
    with pytest.raises(ConfigError, match="unknown mode 'online'"):
        run_benchmark(None, ["early"], [1], [], tmp_path, train_fn=fake_train, modes=["online"])


def test_default_output_is_a_new_folder_under_the_runs_dir(tmp_path: Path) -> None:
    runs = [f"train.runs_dir={tmp_path}"]
    first = run_benchmark(None, ["early"], [1], runs, train_fn=fake_train)
    second = run_benchmark(None, ["early"], [1], runs, train_fn=fake_train)
    assert first.out_dir.parent == second.out_dir.parent == tmp_path / "benchmarks"
    assert first.out_dir != second.out_dir  # never a second benchmark in a first one's folder
    assert first.out_dir.name.startswith("synthetic-")
    assert (first.out_dir / "runs" / "early-seed1" / "metrics.json").is_file()
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        run_benchmark(None, ["nope"], [1], runs, train_fn=fake_train)
    assert len(list((tmp_path / "benchmarks").iterdir())) == 2  # none made for a bad plan


def test_references() -> None:
    assert is_reference("corect-context-free") and is_reference("context")
    assert is_reference("context-gated") and not is_reference("corect")


def test_failure_names_the_model_and_keeps_finished_runs(tmp_path: Path) -> None:
    def train(config: Config) -> Path:
        if config.model.name == "late":
            raise ValueError("boom")
        return fake_train(config)

    with pytest.raises(RuntimeError, match="model 'late' \\(seed 1\\) failed: boom"):
        run_benchmark(None, ["early", "late"], [1], [], tmp_path, train_fn=train)
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["complete"] is False
    assert len(data["models"]["early"]["runs"]) == 1 and not data["models"]["late"]["runs"]


def test_rerun_with_the_same_out_reuses_finished_runs(tmp_path: Path) -> None:
    first = run_benchmark(None, ["early", "late"], [1, 2], [], tmp_path, train_fn=fake_train)

    def must_not_train(config: Config) -> Path:
        raise AssertionError(f"retrained {config.train.run_name}")

    again = run_benchmark(None, ["early", "late"], [1, 2], [], tmp_path, train_fn=must_not_train)
    assert again.table() == first.table()
    assert json.loads((tmp_path / "results.json").read_text())["complete"] is True

    trained: list[str] = []

    def counting_train(config: Config) -> Path:
        trained.append(config.train.run_name)
        return fake_train(config)

    # Another config is another run: nothing is reused, the new runs sit beside the old.
    run_benchmark(None, ["early"], [1, 2], ["train.lr=0.001"], tmp_path, train_fn=counting_train)
    assert trained == ["early-seed1", "early-seed2"]


def test_bad_names_fail_before_any_run(tmp_path: Path) -> None:
    def train(config: Config) -> Path:
        raise AssertionError("must not run")

    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        run_benchmark(None, ["early", "nope"], [1], [], tmp_path, train_fn=train)
    with pytest.raises(ConfigError, match="train.epochs"):
        run_benchmark(None, ["early"], [1], ["train.epochs=0"], tmp_path, train_fn=train)


def test_cli_errors_and_listing(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--models", "early,bogus", "--out", "/nonexistent/x"]) == 2
    assert "unknown model 'bogus'" in capsys.readouterr().err
    assert main(["--list-models"]) == 0
    assert "corect-context-free" in capsys.readouterr().out


def test_mean_std() -> None:
    assert mean_std([2.0]) == {"mean": 2.0, "std": 0.0}
    assert mean_std([1.0, 3.0]) == {"mean": 2.0, "std": pytest.approx(2**0.5)}


def test_in_model_distillations_heads_are_summarised_over_seeds(tmp_path: Path) -> None:
    def with_heads(config: Config) -> Path:
        run_dir = fake_train(config)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        audio = 0.4 + 0.02 * config.train.seed
        scores = {"accuracy": audio, "weighted_f1": audio, "macro_f1": audio}
        metrics["modality_heads"] = {
            "t": {"role": "teacher", "dev": metrics["dev"], "test": metrics["test"]},
            "a": {"role": "student", "dev": scores, "test": scores},
        }
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
        return run_dir

    out = tmp_path / "bench"
    overrides = ["train.distill.teacher_modality=t"]
    run_benchmark(None, ["corect"], [1, 2], overrides, out, train_fn=with_heads)
    summary = json.loads((out / "results.json").read_text())["models"]["corect"]["summary"]
    audio = summary["modality_heads"]["a"]
    assert audio["role"] == "student" and audio["accuracy"]["mean"] == pytest.approx(43.0)
    assert audio["dev_weighted_f1"]["std"] == pytest.approx(1.4142, abs=1e-3)
    table = (out / "results.md").read_text()
    assert "| `corect` | a | student | 43.00 ± 1.41 | 43.00 ± 1.41 | 43.00 ± 1.41 |" in table
    plain = tmp_path / "plain"
    run_benchmark(None, ["corect"], [1], [], plain, train_fn=fake_train)
    assert "head alone" not in (plain / "results.md").read_text()


def test_end_to_end_tiny_synthetic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench"
    code = main(
        [
            "--models",
            "corect,early",
            "--seeds",
            "1",
            "--out",
            str(out),
            "--set",
            "data.synthetic.train_dialogues=6",
            "data.synthetic.dev_dialogues=2",
            "data.synthetic.test_dialogues=2",
            "data.synthetic.min_length=4",
            "data.synthetic.max_length=8",
            "data.synthetic.dims={t: 8, a: 6, v: 5}",
            f"data.cache_dir={tmp_path / 'cache'}",
            "train.epochs=1",
            "train.device=cpu",
            "model.hidden_size=16",
            "model.encoder_heads=2",
            "model.pcm_heads=2",
            "model.gnn_heads=2",
            "model.moe_experts_hidden=16",
        ]
    )
    assert code == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)  # the folder last
    data = json.loads((out / "results.json").read_text())
    assert data["complete"] is True
    for model in ("corect", "early"):
        summary = data["models"][model]["summary"]
        for key in ("accuracy", "weighted_f1", "macro_f1"):
            assert 0.0 <= summary[key]["mean"] <= 100.0
        assert summary["num_parameters"] > 0
        (run,) = data["models"][model]["runs"]
        assert (out / run["run_dir"] / "metrics.json").is_file()
    table = (out / "results.md").read_text()
    assert "| `corect` | 1 |" in table and "| `early` | 1 |" in table
