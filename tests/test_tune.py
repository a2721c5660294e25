"""What tuning needs without Ray: search spaces, the epoch callback, a training run that
never scores test, and the Ray options' messages when Ray is missing."""

from __future__ import annotations

import ast
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import corect.engine.training
from corect import benchmark, compare_modes, tune
from corect.config import ConfigError, load_config
from corect.engine.training import train
from corect.experiments.runner import training_config
from corect.experiments.space import Param, config_value, load_space, overrides_of
from tests.conftest import tiny_config

ROOT = Path(__file__).resolve().parents[1]


def write_space(tmp_path: Path, space: object) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(json.dumps({"space": space}))  # JSON is YAML
    return path


def test_the_example_space_holds_the_hand_chosen_config() -> None:
    config = "configs/meld_text.yaml"
    params = load_space(ROOT / "configs/spaces/meld_text.yaml", str(ROOT / config), [])
    base = load_config(ROOT / config)
    assert {p.key for p in params} >= {"train.lr", "model.dropout", "model.hidden_size"}
    assert all(p.contains(config_value(base, p.key)) for p in params)


def test_space_errors_name_the_key(tmp_path: Path) -> None:
    cases = [
        ({"train.lr": {"normal": [0, 1]}}, "train.lr: give one of"),
        ({"train.lr": {"loguniform": [0, 1]}}, "loguniform needs"),
        ({"model.wp": {"randint": [4, 2.5]}}, "randint needs"),
        ({"model.choice": {"choice": []}}, "choice needs"),
        ({"model.hidden": {"choice": [1, 2]}}, "model.hidden is not a config key"),
        ({"model.name": {"choice": ["corect", "nope"]}}, "model.name='nope'"),
        ({"train.epochs": {"randint": [0, 3]}}, "train.epochs=0"),
    ]
    for space, message in cases:
        with pytest.raises(ConfigError, match=message):
            load_space(write_space(tmp_path, space), None, [])
    with pytest.raises(ConfigError, match="expected a mapping `space:`"):
        load_space(write_space(tmp_path, []), None, [])
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00space")
    with pytest.raises(ConfigError, match=r"binary\.yaml: not a text file \(not UTF-8\)"):
        load_space(binary, None, [])
    broken = tmp_path / "broken.yaml"
    broken.write_text("space: [unclosed")
    with pytest.raises(ConfigError, match=r"broken\.yaml: not valid YAML"):
        load_space(broken, None, [])


def test_params_and_overrides() -> None:
    randint = Param.parse("model.wp", {"randint": [4, 16]})
    assert randint.contains(4) and randint.contains(15) and not randint.contains(16)
    assert randint.extremes() == [4, 15]
    assert Param.parse("model.dropout", {"uniform": [0.2, 0.6]}).contains(0.5)
    assert Param.parse("train.lr", {"loguniform": ["1e-4", 1e-3]}).args == [1e-4, 1e-3]
    values = {"train.lr": np.float64(1e-4), "model.wp": np.int64(3), "model.encoders": {"t": "mlp"}}
    config = load_config(None, overrides_of(values))
    assert (config.train.lr, config.model.wp, config.model.encoders["t"]) == (1e-4, 3, "mlp")


def test_names_that_look_like_numbers_stay_strings(tmp_path: Path) -> None:
    config = training_config(None, [], [], 1, "91584_00000", tmp_path / "1e5")  # a Tune id
    assert config.train.run_name == "91584_00000"
    assert config.train.runs_dir == str(tmp_path / "1e5")


def test_epoch_callback_and_no_test(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scored = []
    evaluate = corect.engine.training.evaluate_split

    def spy(model, split, *args, **kwargs):
        scored.append(split.num_dialogues)
        return evaluate(model, split, *args, **kwargs)

    monkeypatch.setattr(corect.engine.training, "evaluate_split", spy)
    epochs: list[dict[str, float]] = []
    config = tiny_config(tmp_path)
    config.data.synthetic.test_dialogues = 5  # dev has 3: the sizes tell the splits apart
    run = train(config, on_epoch=epochs.append, test=False)
    assert [e["epoch"] for e in epochs] == [1, 2]
    best = epochs[-1]["best_dev_weighted_f1"]
    assert best == max(e["dev_weighted_f1"] for e in epochs)
    assert set(scored) == {3}  # dev only: the test split is never scored
    metrics = json.loads((run / "metrics.json").read_text())
    assert "test" not in metrics and metrics["dev"]["weighted_f1"] == best
    assert not (run / "confusion-test.png").exists()


@pytest.mark.parametrize("command", [benchmark, compare_modes])
def test_ray_options_say_what_to_install(
    command, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as if not installed
    assert command.main(["--backend", "ray", "--out", "/nonexistent/x"]) == 2
    assert 'needs Ray, which is not installed: pip install -e ".[ray]"' in capsys.readouterr().err
    assert command.main(["--cpus-per-run", "2", "--out", "/nonexistent/x"]) == 2
    assert "--cpus-per-run: only with --backend ray" in capsys.readouterr().err


def test_tune_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    space = str(ROOT / "configs/spaces/meld_text.yaml")
    assert tune.main(["--space", space, "--trials", "2"]) == 2
    assert "python -m corect.tune needs Ray" in capsys.readouterr().err


def eager_imports(node: ast.AST) -> Iterator[str]:
    """The modules a file imports when it is imported (function bodies left out)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if isinstance(child, ast.Import):
            yield from (alias.name for alias in child.names)
        elif isinstance(child, ast.ImportFrom) and child.module:
            yield child.module
        yield from eager_imports(child)


def test_ray_is_imported_only_inside_functions() -> None:
    """Importing any corect module never imports Ray or Optuna."""
    for path in sorted((ROOT / "corect").rglob("*.py")):
        names = set(eager_imports(ast.parse(path.read_text())))
        assert not {n for n in names if n.split(".")[0] in ("ray", "optuna")}, path
    assert "torch" in set(
        eager_imports(ast.parse((ROOT / "corect/experiments/backends.py").read_text()))
    )
