"""Labels for new dialogues from a trained run, the batch path (offline or causal runs):
what ``python -m corect.predict`` prints or writes. For utterance-by-utterance use see
:mod:`corect.inference.recognizer`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from corect.common.metrics import classification_metrics
from corect.common.runtime import DEFAULT_DEVICE, select_device
from corect.data.jsonl import JsonlDialogue, dialogue_records, read_jsonl
from corect.engine.checkpoints import load_run
from corect.engine.scoring import predict
from corect.inference.inputs import check_speakers, split_from_records, text_encoder_for_run


def predict_file(
    run_dir: str | Path,
    input_path: str | Path,
    *,
    device: str = DEFAULT_DEVICE,
    text_model: str | Path | None = None,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """Predictions for every dialogue of a JSONL file.

    Returns ``{"run", "labels", "causal", "dialogues": [{"id", "utterances": [{"index",
    "speaker", "text", "label", "probabilities", "true_label"}]}], "metrics"}`` (metrics
    only when the input has labels)."""
    torch_device = select_device(device)
    config, model, checkpoint = load_run(run_dir, str(torch_device))
    labels, dims = list(checkpoint["labels"]), dict(checkpoint["dims"])
    dialogues = read_jsonl(input_path, labels, require_labels=False, default_split="test")
    needs_text = "t" in dims and not any("t" in f for d in dialogues for f in d.features)
    encoder = None
    if needs_text:
        recorded = checkpoint.get("text_features")
        encoder = text_encoder_for_run(config, dims["t"], text_model, recorded=recorded)
    records = dialogue_records(dialogues, labels, "".join(dims), encoder)
    split = split_from_records(records, dims)
    check_speakers(split, checkpoint["num_speakers"], config.model.use_speaker)
    logits = predict(
        model, split, batch_size or config.train.batch_size, torch_device, config.train.amp
    )
    probabilities = logits.softmax(-1).numpy()
    result: dict[str, Any] = {
        "run": str(run_dir),
        "labels": labels,
        "causal": config.model.causal,
        "dialogues": [],
    }
    for d, dialogue in enumerate(dialogues):
        rows = probabilities[int(split.offsets[d]) : int(split.offsets[d]) + len(dialogue)]
        utterances = utterance_results(dialogue, rows, labels)
        result["dialogues"].append({"id": dialogue.id, "utterances": utterances})
    if bool((split.labels >= 0).any()):
        metrics = classification_metrics(split.labels.numpy(), logits.argmax(1).numpy(), labels)
        result["metrics"] = {k: v for k, v in metrics.items() if k != "confusion"}
    return result


def utterance_results(
    dialogue: JsonlDialogue, probabilities: np.ndarray, labels: list[str]
) -> list[dict[str, Any]]:
    """One result per utterance of `dialogue`: its predicted label and probabilities (and
    the true label where the input gives one)."""
    utterances = []
    for k, p in enumerate(probabilities):
        utterance = {
            "index": k,
            "speaker": dialogue.speakers[k],
            "text": dialogue.texts[k],
            "label": labels[int(p.argmax())],
            "probabilities": {c: round(float(x), 6) for c, x in zip(labels, p, strict=True)},
        }
        if dialogue.labels[k] is not None:
            utterance["true_label"] = dialogue.labels[k]
        utterances.append(utterance)
    return utterances


def format_predictions(result: dict[str, Any]) -> str:
    """A readable table: one line per utterance."""
    lines = []
    for dialogue in result["dialogues"]:
        lines.append(f"dialogue {dialogue['id']} ({len(dialogue['utterances'])} utterances)")
        for u in dialogue["utterances"]:
            truth = f" (true: {u['true_label']})" if "true_label" in u else ""
            text = f"  {u['text'][:60]!r}" if u["text"] else ""
            p = u["probabilities"][u["label"]]
            lines.append(
                f"  {u['index']:4d}  {u['speaker'][:16]:<16} {u['label']:<12} {p:5.2f}{truth}{text}"
            )
    if "metrics" in result:
        lines.append(metrics_line(result["metrics"]))
    return "\n".join(lines)


def metrics_line(m: dict[str, Any]) -> str:
    """Accuracy, weighted and macro F1 of the labelled utterances, on one line."""
    return (
        f"{m['num_utterances']} labelled utterances: accuracy {100 * m['accuracy']:.2f}, "
        f"weighted F1 {100 * m['weighted_f1']:.2f}, macro F1 {100 * m['macro_f1']:.2f}"
    )
