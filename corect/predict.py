"""Label your own dialogues: ``python -m corect.predict --run RUN_DIR --input dialogues.jsonl``.

Input: one dialogue a line, the format of :mod:`corect.data.jsonl` (``split`` and ``label``
optional here)::

    {"id": "d1", "utterances": [{"speaker": "Ann", "text": "Hi!",
                                 "features": {"audio": [...], "visual": [...]}}, ...]}

Every modality the run was trained on must be given as ``features`` (keys text, audio,
visual or t, a, v), except text: without ``features.text`` it is computed from ``text``
with the text encoder (:mod:`corect.data.text_encoder`), provided the run's dataset was
made with that encoder (its manifest records which model; the same model is used and
checked). Works for offline and causal runs (the batch path; for utterance-by-utterance
use see :mod:`corect.stream`).

Output: a label and class probabilities per utterance, printed as a table, or with
``--output out.jsonl`` written as JSONL (one line per dialogue, written atomically). When
the input has labels, accuracy and weighted F1 are reported too.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from corect.common.errors import INPUT_ERRORS, report
from corect.common.files import check_output, write_atomic
from corect.common.metrics import classification_metrics
from corect.common.runtime import DEFAULT_DEVICE, select_device
from corect.engine.runs import load_run, predict
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
    from corect.data.jsonl import dialogue_records, read_jsonl

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
        start = int(split.offsets[d])
        utterances = []
        for k in range(len(dialogue)):
            p = probabilities[start + k]
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
        result["dialogues"].append({"id": dialogue.id, "utterances": utterances})
    if bool((split.labels >= 0).any()):
        metrics = classification_metrics(split.labels.numpy(), logits.argmax(1).numpy(), labels)
        result["metrics"] = {k: v for k, v in metrics.items() if k != "confusion"}
    return result


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
    return (
        f"{m['num_utterances']} labelled utterances: accuracy {100 * m['accuracy']:.2f}, "
        f"weighted F1 {100 * m['weighted_f1']:.2f}, macro F1 {100 * m['macro_f1']:.2f}"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m corect.predict",
        description=(
            "Predict a label and class probabilities for every utterance of the dialogues in "
            "a JSONL file (the format of data_prep.jsonl; 'split' and 'label' optional) with a "
            "trained run, offline or causal. Modalities: as features (keys text/audio/visual "
            "or t/a/v); text may instead be given as 'text' when the run's dataset was made "
            "with the text encoder."
        ),
        epilog="Example: python -m corect.predict --run runs/meld/t--emotion--corect/RUN "
        "--input my_dialogues.jsonl --output predictions.jsonl",
    )
    parser.add_argument("--run", required=True, help="run directory printed by corect.train")
    parser.add_argument("--input", required=True, help="JSONL file, one dialogue a line")
    parser.add_argument(
        "--output", default=None, help="write JSONL here (one line per dialogue) instead of a table"
    )
    parser.add_argument("--device", default=DEFAULT_DEVICE, help="auto | cpu | cuda")
    parser.add_argument(
        "--text-model",
        default=None,
        metavar="DIR",
        help="local text model directory (default: the one recorded in the run's dataset)",
    )
    parser.add_argument("--batch-size", type=int, default=None, help="dialogues per batch")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_output(args.output, args.input)
        result = predict_file(
            args.run,
            args.input,
            device=args.device,
            text_model=args.text_model,
            batch_size=args.batch_size,
        )
    except INPUT_ERRORS as err:
        return report(err)
    if args.output:
        lines = [json.dumps(d, ensure_ascii=False) for d in result["dialogues"]]
        write_atomic(Path(args.output), "\n".join(lines) + "\n")
        count = sum(len(d["utterances"]) for d in result["dialogues"])
        print(f"{count} utterances of {len(lines)} dialogues -> {args.output}")
        if "metrics" in result:
            print(metrics_line(result["metrics"]))
    else:
        print(format_predictions(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
