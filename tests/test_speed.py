"""corect.speed: the speed benchmark runs end to end on tiny data and writes its JSON."""

from __future__ import annotations

import json

from corect import speed

TINY = [
    "data.synthetic.train_dialogues=4",
    "data.synthetic.dev_dialogues=2",
    "data.synthetic.test_dialogues=2",
    "data.synthetic.min_length=3",
    "data.synthetic.max_length=6",
    "data.synthetic.dims={t: 8, a: 6, v: 5}",
    "model.hidden_size=16",
    "model.gnn_heads=2",
    "train.batch_size=2",
]


def test_speed_writes_a_result_per_modality_set(tmp_path, capsys):
    out = tmp_path / "speed"
    args = ["--modalities", "tav,t", "--epochs", "1", "--device", "cpu", "--out", str(out)]
    overrides = [*TINY, f"data.cache_dir={tmp_path / 'cache'}"]
    assert speed.main([*args, "--set", *overrides]) == 0
    (path,) = out.glob("*.json")
    results = json.loads(path.read_text())["results"]
    assert [r["modalities"] for r in results] == ["tav", "t"]
    for row in results:
        assert row["train_dialogues"] == 4
        assert row["batches_per_epoch"] == 2
        assert row["seconds_per_epoch"] > 0 and row["train_utterances_per_s"] > 0
        assert 0 < row["state_write_share"] < 10 and row["state_write_seconds"] > 0
        assert row["graph_ms_per_batch_max"] >= row["graph_ms_per_batch_mean"] > 0
    assert results[0]["parameters"] > results[1]["parameters"]  # three encoders vs one
    printed = capsys.readouterr().out
    assert "| tav |" in printed and "| t |" in printed and str(path) in printed


def test_speed_reports_a_bad_override(tmp_path, capsys):
    assert speed.main(["--out", str(tmp_path), "--set", "model.hidden_size=-3"]) == 2
    assert "model.hidden_size" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.json"))


def test_speed_writes_under_the_runs_dir_by_default(tmp_path, capsys):
    overrides = [*TINY, f"data.cache_dir={tmp_path / 'cache'}", f"train.runs_dir={tmp_path}"]
    args = ["--modalities", "t", "--epochs", "1", "--device", "cpu", "--set", *overrides]
    assert speed.main(args) == 0
    (path,) = (tmp_path / "speed").glob("*.json")
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(path)
