"""compare_modes: trains both modes with the same config and seed, tabulates, reloads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from corect.compare_modes import main
from corect.experiments.compare import compare
from tests.conftest import TINY_DIMS


def tiny_yaml(tmp_path: Path) -> Path:
    values = {
        "data": {
            "cache_dir": str(tmp_path / "cache"),
            "synthetic": {
                "train_dialogues": 4,
                "dev_dialogues": 2,
                "test_dialogues": 3,
                "min_length": 3,
                "max_length": 24,
                "dims": dict(TINY_DIMS),
            },
        },
        "model": {"hidden_size": 16, "gnn_heads": 2, "pcm_layers": 1, "pcm_self_layers": 1},
        "train": {"epochs": 1, "batch_size": 4, "runs_dir": str(tmp_path / "runs")},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_compare_trains_both_modes_and_reloads(tmp_path: Path, capsys) -> None:
    config = tiny_yaml(tmp_path)
    result = compare(str(config), seeds=[1], overrides=["model.encoder_layers=1"])
    modes = {(r.mode, r.seed) for r in result.runs}
    assert modes == {("offline", 1), ("causal", 1)}
    offline, causal = (Path(r.run_dir) for r in result.runs)
    # Side by side in the usual runs dir, same run name, the causal one with -causal.
    assert offline.parent.name.endswith("--corect")
    assert causal.parent.name.endswith("--corect-causal")
    assert offline.name == causal.name
    assert result.out_dir.parent == tmp_path / "runs" / "compare"
    data = json.loads((result.out_dir / "results.json").read_text())
    assert data["complete"] and set(data["rows"]) >= {"accuracy", "weighted_f1", "macro_f1"}
    assert {"position/1-5", "position/21+"} <= set(data["rows"])
    row = data["rows"]["weighted_f1"]
    assert row["difference"]["mean"] == pytest.approx(
        row["causal"]["mean"] - row["offline"]["mean"]
    )
    # The scores equal the ones train() wrote (same checkpoint, same predict path).
    trained = json.loads((offline / "metrics.json").read_text())["test"]
    assert data["runs"][0]["metrics"]["weighted_f1"] == pytest.approx(trained["weighted_f1"])
    table = (result.out_dir / "results.md").read_text()
    assert "Δ causal − offline" in table and "F1 sad" in table and "21+" in table
    assert (result.out_dir / "results.png").read_bytes().startswith(b"\x89PNG")

    # --runs / --causal-runs: scores them without training; the path is printed last.
    code = main(
        ["--runs", str(offline), "--causal-runs", str(causal), "--out", str(tmp_path / "c")]
    )
    assert code == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(tmp_path / "c")
    again = json.loads((tmp_path / "c" / "results.json").read_text())
    assert again["rows"]["weighted_f1"] == data["rows"]["weighted_f1"]


def test_runs_in_the_wrong_mode_are_refused(tmp_path: Path, capsys) -> None:
    config = tiny_yaml(tmp_path)
    result = compare(str(config), seeds=[2], overrides=["model.encoder_layers=1"])
    offline, causal = result.runs[0].run_dir, result.runs[1].run_dir
    code = main(["--runs", causal, "--causal-runs", offline, "--out", str(tmp_path / "c")])
    assert code == 2
    assert "model.causal=True" in capsys.readouterr().err
    # The same run given twice is refused (it is not a second seed).
    code = main(["--runs", offline, "--causal-runs", offline, "--out", str(tmp_path / "c")])
    assert code == 2
    assert "given twice" in capsys.readouterr().err
    assert main(["--runs", offline]) == 2
