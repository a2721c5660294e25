"""Training end to end on tiny synthetic data: outputs, reproducibility, evaluation."""

from __future__ import annotations

import json

import pytest
import torch

from corect.config import ConfigError, load_config
from corect.evaluate import evaluate_run
from corect.train import main, train
from tests.conftest import tiny_config


def test_train_writes_a_complete_run(tmp_path):
    run = train(tiny_config(tmp_path))
    assert run.parent.name == "tav--emotion--corect" and run.name.endswith("-seed24")
    assert run.parent.parent.name == "synthetic"
    metrics = json.loads((run / "metrics.json").read_text())
    for split in ("dev", "test"):
        for key in ("accuracy", "weighted_f1", "macro_f1", "per_class_f1", "confusion"):
            assert key in metrics[split]
    assert 1 <= metrics["best_epoch"] <= 2 and metrics["seconds_per_epoch"] > 0
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    assert checkpoint["labels"] == metrics["labels"] and "state_dict" in checkpoint
    assert (run / "config.yaml").is_file()
    assert not (run / "training_state.pt").exists()  # written every epoch, removed on completion
    assert any(p.name.startswith("events.out.tfevents") for p in run.iterdir())
    # corect.evaluate reproduces metrics.json exactly.
    reproduced = evaluate_run(run, "test", device="cpu")
    for key in ("accuracy", "weighted_f1", "macro_f1", "per_class_f1", "confusion"):
        assert reproduced[key] == metrics["test"][key]


def test_same_seed_same_result(tmp_path):
    first = json.loads((train(tiny_config(tmp_path)) / "metrics.json").read_text())
    second = json.loads((train(tiny_config(tmp_path)) / "metrics.json").read_text())
    assert first["test"] == second["test"] and first["dev"] == second["dev"]


@pytest.mark.parametrize(
    "overrides",
    [
        ["model.name=early", "data.modalities=ta"],
        ["model.causal=true", "train.class_weights=true", "train.optimizer=adamw"],
        ["train.modality_dropout=0.3", "train.scheduler_patience=-1", "train.early_stopping=1"],
    ],
)
def test_train_options(tmp_path, overrides):
    config = tiny_config(tmp_path)
    config = load_config(None, [f"{k}={v}" for k, v in _flatten(config.to_dict())] + overrides)
    run = train(config)
    assert (run / "metrics.json").is_file()


def _flatten(values, prefix=""):
    for key, value in values.items():
        if isinstance(value, dict) and key not in ("encoders", "dims"):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", json.dumps(value)


def test_cli_prints_run_directory_last(tmp_path, capsys):
    config = tiny_config(tmp_path)
    path = tmp_path / "c.yaml"
    import yaml

    path.write_text(yaml.safe_dump(config.to_dict()))
    main(["--config", str(path), "--set", "train.epochs=1", "--quiet"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert (tmp_path / "runs").resolve() in [
        p.resolve() for p in __import__("pathlib").Path(last).parents
    ]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.name=nope"], "model.name='nope'"),
        (["data.modalities=tx"], "data.modalities"),
        (["train.epochs=zero"], "train.epochs: expected an integer"),
        (["model.hiden_size=3"], "unknown key.*model.hiden_size"),
        (["model.encoders.t=gru"], "model.encoders.t='gru'"),
        (["model.wp=-3"], "model.wp=-3"),
    ],
)
def test_config_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


@pytest.mark.parametrize("name, cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_optimizer_is_the_fused_kernel_with_the_configured_settings(name, cls):
    from corect.engine.training import build_optimizer

    config = load_config(None, [f"train.optimizer={name}", "train.lr=0.001"])
    model = torch.nn.Linear(3, 2)
    optimizer = build_optimizer(config, model)
    assert type(optimizer) is cls and optimizer.defaults["fused"] is True
    assert optimizer.defaults["lr"] == 0.001
    assert optimizer.defaults["weight_decay"] == config.train.weight_decay
    # The fused update is Adam's: one step matches the reference implementation.
    reference = torch.nn.Linear(3, 2)
    reference.load_state_dict(model.state_dict())
    slow = cls(reference.parameters(), lr=0.001, weight_decay=config.train.weight_decay)
    x = torch.randn(4, 3)
    for net, opt in ((model, optimizer), (reference, slow)):
        net(x).square().sum().backward()
        opt.step()
    torch.testing.assert_close(model.weight, reference.weight)
