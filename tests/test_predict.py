"""corect.predict: JSONL dialogues in, a label and probabilities per utterance out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from corect.config import config_from_dict
from corect.data.batching import collate
from corect.data.dataset import DialogueRecord
from corect.engine.checkpoints import load_run
from corect.inference.inputs import PredictError, split_from_records
from corect.inference.predictions import predict_file
from corect.predict import main
from corect.train import train
from tests.conftest import TINY_DIMS

NAMES = {"t": "text", "a": "audio", "v": "visual"}


def tiny_run(root: Path, causal: bool, modalities: str = "tav") -> Path:
    config = config_from_dict(
        {
            "data": {
                "modalities": modalities,
                "cache_dir": str(root / "cache"),
                "synthetic": {
                    "train_dialogues": 4,
                    "dev_dialogues": 2,
                    "test_dialogues": 2,
                    "min_length": 3,
                    "max_length": 6,
                    "dims": dict(TINY_DIMS),
                },
            },
            "model": {"hidden_size": 16, "causal": causal, "gnn_heads": 2, "pcm_layers": 1},
            "train": {"epochs": 1, "runs_dir": str(root / "runs"), "progress": False},
        }
    )
    return train(config)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("predict")
    return {"offline": tiny_run(root, False), "causal": tiny_run(root, True)}


def write_jsonl(path: Path, labels: list[str], modalities: str = "tav") -> list[dict]:
    """Three dialogues (one multi-party), features given directly, some labels."""
    g = torch.Generator().manual_seed(5)
    casts = [["Ann", "Bob", "Ann", "Bob"], ["Cy", "Di", "Ed", "Cy", "Di", "Ed", "Cy"], ["Ann"]]
    lines = []
    for d, cast in enumerate(casts):
        utterances = []
        for k, speaker in enumerate(cast):
            features = {NAMES[m]: torch.randn(TINY_DIMS[m], generator=g).tolist() for m in "av"}
            if "t" in modalities:
                features["t"] = torch.randn(TINY_DIMS["t"], generator=g).tolist()
            utterance = {"speaker": speaker, "text": f"line {k}", "features": features}
            if d == 0:
                utterance["label"] = labels[k % len(labels)]
            utterances.append(utterance)
        lines.append({"id": f"dlg{d}", "utterances": utterances})
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return lines


@pytest.mark.parametrize("mode", ["offline", "causal"])
def test_predictions_equal_the_model_on_the_same_dialogues(runs, tmp_path, mode) -> None:
    run = runs[mode]
    config, model, checkpoint = load_run(run)
    labels = checkpoint["labels"]
    lines = write_jsonl(tmp_path / "in.jsonl", labels)
    result = predict_file(run, tmp_path / "in.jsonl", device="cpu")
    assert result["causal"] is (mode == "causal")
    assert [d["id"] for d in result["dialogues"]] == ["dlg0", "dlg1", "dlg2"]
    assert [len(d["utterances"]) for d in result["dialogues"]] == [4, 7, 1]
    # The same features through the model directly, one dialogue at a time.
    for line, out in zip(lines, result["dialogues"], strict=True):
        record = DialogueRecord(
            line["id"],
            [u["speaker"] for u in line["utterances"]],
            [-1] * len(line["utterances"]),
            {
                m: [u["features"][NAMES[m] if m != "t" else "t"] for u in line["utterances"]]
                for m in "tav"
            },
        )
        split = split_from_records([record], checkpoint["dims"])
        with torch.no_grad():
            expected = model(collate(split, [0])).softmax(-1)
        got = torch.tensor([[u["probabilities"][c] for c in labels] for u in out["utterances"]])
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
        assert [u["label"] for u in out["utterances"]] == [
            labels[i] for i in expected.argmax(1).tolist()
        ]
    first = result["dialogues"][0]["utterances"]
    assert [u["true_label"] for u in first] == [labels[k % len(labels)] for k in range(4)]
    assert result["metrics"]["num_utterances"] == 4


def test_cli_table_and_jsonl_output(runs, tmp_path, capsys) -> None:
    labels = load_run(runs["causal"])[2]["labels"]
    write_jsonl(tmp_path / "in.jsonl", labels)
    assert main(["--run", str(runs["causal"]), "--input", str(tmp_path / "in.jsonl")]) == 0
    table = capsys.readouterr().out
    assert "dialogue dlg1 (7 utterances)" in table and "labelled utterances" in table
    out = tmp_path / "out.jsonl"
    args = ["--run", str(runs["offline"]), "--input", str(tmp_path / "in.jsonl")]
    assert main([*args, "--output", str(out)]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 3 and set(rows[1]["utterances"][0]) >= {"label", "probabilities"}


def test_clear_errors(runs, tmp_path, capsys) -> None:
    labels = load_run(runs["offline"])[2]["labels"]
    # Text only (no features.text): the synthetic run's text features are not ours.
    path = tmp_path / "text.jsonl"
    lines = write_jsonl(path, labels, modalities="av")
    with pytest.raises(PredictError, match="features.text"):
        predict_file(runs["offline"], path, device="cpu")
    # A feature vector of the wrong size names the dialogue and modality.
    lines = write_jsonl(path, labels)
    for line in lines:
        for u in line["utterances"]:
            u["features"]["audio"] = [0.0] * 3
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    assert main(["--run", str(runs["offline"]), "--input", str(path)]) == 2
    assert "modality a needs" in capsys.readouterr().err
    # An unknown label is refused with the reader's message.
    path.write_text(json.dumps({"id": "x", "utterances": [{"speaker": "A", "label": "??"}]}))
    assert main(["--run", str(runs["offline"]), "--input", str(path)]) == 2
    assert "field 'label'" in capsys.readouterr().err
