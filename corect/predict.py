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
use see :mod:`corect.inference.recognizer`).

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

from corect.common.errors import INPUT_ERRORS, report
from corect.common.files import check_output, write_atomic
from corect.common.runtime import DEFAULT_DEVICE, keep_freed_memory
from corect.inference.predictions import format_predictions, metrics_line, predict_file


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
    keep_freed_memory()
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
