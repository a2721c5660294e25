"""Your own dialogues, one JSON object per line, to the corect format.

    python -m data_prep.jsonl dialogues.jsonl --modalities t --out runs/data/mydata

Each line::

    {"id": "d1", "split": "train",
     "utterances": [{"speaker": "Ann", "text": "Hi!", "label": "joy",
                     "features": {"audio": [0.1, 0.2], "visual": [0.3]}}, ...]}

``features`` is optional, keyed by modality name ("text", "audio", "visual"; the letters
"t", "a", "v" are accepted too). Text features are computed from ``text`` with our text
encoder, unless the input gives ``features.text`` (then for every utterance; with
``--encode-text`` they are ignored and computed all the same). The reader
(:func:`~corect.data.jsonl.read_jsonl`, :func:`~corect.data.jsonl.dialogue_records`) lives
in :mod:`corect.data.jsonl`, shared with ``corect.predict`` and ``corect.stream``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from corect.data.dataset import DialogueRecord
from corect.data.format import SPLITS
from corect.data.jsonl import (
    JsonlDialogue,
    JsonlError,
    collect_label_names,
    dialogue_records,
    encodes_text,
    read_jsonl,
)
from data_prep.options import (
    add_output_argument,
    add_quiet_argument,
    add_text_model_arguments,
    make_parser,
    parse_label_list,
    parse_modalities,
    run_main,
    text_encoder_from_args,
)
from data_prep.output import check_out_folder, feature_dims, write_and_summarize

DESCRIPTION = """\
Convert your own dialogues, one JSON object per line, to a corect dataset directory.

  {"id": "d1", "split": "train",
   "utterances": [{"speaker": "Ann", "text": "Hi!", "label": "joy",
                   "features": {"audio": [0.1, 0.2], "visual": [0.3]}}, ...]}

split: train, dev or test. features: optional, keyed by text, audio, visual (or t, a, v);
one list of numbers per utterance, the same length throughout. Text features (modality
t) are computed from "text" with the text encoder unless the input gives features.text
(then for every utterance). Labels: --labels gives their order, otherwise the sorted set
of labels found. Every error names the file, line, dialogue and field.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser("python -m data_prep.jsonl", DESCRIPTION)
    parser.add_argument("inputs", nargs="+", type=Path, help="JSONL file(s), one dialogue a line")
    parser.add_argument(
        "--modalities",
        type=parse_modalities,
        default="t",
        metavar="MODS",
        help="modalities to write: letters t, a, v or names, e.g. 't,a' or 'text,audio'",
    )
    parser.add_argument(
        "--labels",
        type=parse_label_list,
        default=None,
        metavar="A,B,C",
        help="ordered label names (default: every label found, sorted)",
    )
    parser.add_argument(
        "--allow-unlabeled",
        action="store_true",
        help="utterances may omit 'label' (or give null); they are ignored by loss and metrics",
    )
    parser.add_argument("--name", default=None, help="dataset name (default: first file's stem)")
    parser.add_argument("--task", default="emotion", help="task name recorded in the manifest")
    add_output_argument(parser, "runs/data/<name>")
    parser.add_argument(
        "--encode-text",
        action="store_true",
        help="compute text features from 'text' with the text encoder even where the input "
        "gives features.text (those are ignored): e.g. CMU-MOSI, whose released text "
        "features were fitted on its training videos",
    )
    add_text_model_arguments(parser)
    add_quiet_argument(parser)
    return parser


def convert(argv: Sequence[str] | None = None) -> Path:
    """Parse `argv`, convert, print the summary; return the dataset directory."""
    args = build_parser().parse_args(argv)
    name = args.name or args.inputs[0].stem
    out = args.out or Path(f"runs/data/{name}")
    check_out_folder(out, args)
    dialogues = read_inputs(args.inputs, args.labels, require_labels=not args.allow_unlabeled)
    labels = args.labels or collect_label_names(dialogues)
    if not labels:
        raise JsonlError(f"{args.inputs[0]}: no labels found; give --labels a,b,c")
    needs_encoder = encodes_text(dialogues, args.modalities, args.encode_text)
    encoder = text_encoder_from_args(args) if needs_encoder else None
    records = dialogue_records(
        dialogues, labels, args.modalities, encoder, encode_text=args.encode_text
    )
    splits: dict[str, list[DialogueRecord]] = {split: [] for split in SPLITS}
    for dialogue, record in zip(dialogues, records, strict=True):
        splits[dialogue.split].append(record)
    extra: dict[str, object] = {
        "source": {"format": "jsonl", "files": [str(p) for p in args.inputs]},
    }
    if encoder is not None:
        extra["text_features"] = encoder.description
    return write_and_summarize(
        out,
        name=name,
        task=args.task,
        labels=labels,
        dims=feature_dims(records, args.modalities),
        splits=splits,
        extra=extra,
    )


def read_inputs(
    paths: Sequence[Path], labels: Sequence[str] | None, require_labels: bool
) -> list[JsonlDialogue]:
    """The dialogues of every file, in order; a dialogue id may appear once in all of them."""
    dialogues: list[JsonlDialogue] = []
    seen: dict[str, str] = {}
    for path in paths:
        for dialogue in read_jsonl(path, labels, require_labels=require_labels):
            if dialogue.id in seen:
                raise JsonlError(
                    f"{dialogue.source}, dialogue {dialogue.id!r}: field 'id' repeats "
                    f"{seen[dialogue.id]}"
                )
            seen[dialogue.id] = dialogue.source
            dialogues.append(dialogue)
    return dialogues


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(convert, argv)


if __name__ == "__main__":
    sys.exit(main())
