"""Convert the CMU-MOSEI feature release used by COGMEN/CORECT (a 9-tuple pickle).

python -m data_prep.mosei mosei_features.pkl --task 2class --out runs/data/mosei_2class
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from data_prep.options import make_parser, run_main
from data_prep.release import PICKLE_WARNING, add_release_arguments, convert_release

# Class ids of the release, in order. 7class: sentiment -3..3 as ids 0..6.
TASK_LABELS = {
    "2class": ["negative", "positive"],
    "7class": [
        "strongly negative",
        "negative",
        "weakly negative",
        "neutral",
        "weakly positive",
        "positive",
        "strongly positive",
    ],
}

DESCRIPTION = f"""\
Convert a CMU-MOSEI feature release to a corect dataset directory.

The input is the pickle used by COGMEN/CORECT: a 9-tuple (video_ids, speakers, labels, text,
audio, visual, sentences, train_ids, test_ids), each of speakers ... sentences a dict from
video id to a per-utterance list. Labels are class ids: 2class = negative, positive;
7class = 0..6 for sentiment -3..3 (a release that stores -3..3 itself needs
--label-offset 3). dev = the first 10% of train_ids in file order; test = test_ids.

{PICKLE_WARNING}
"""


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser("python -m data_prep.mosei", DESCRIPTION)
    add_release_arguments(parser, "mosei", TASK_LABELS)
    parser.add_argument(
        "--label-offset",
        type=int,
        default=0,
        metavar="K",
        help="added to every label id (3 maps sentiment -3..3 to 0..6)",
    )
    return parser


def convert(argv: Sequence[str] | None = None) -> Path:
    """Parse `argv`, convert, print the summary; return the dataset directory."""
    args = build_parser().parse_args(argv)
    hint = (
        "; if the release stores sentiment -3..3, add --label-offset 3"
        if args.task == "7class" and args.label_offset == 0
        else ""
    )
    return convert_release(
        args,
        dataset="mosei",
        labels=TASK_LABELS[args.task],
        label_offset=args.label_offset,
        label_hint=hint,
    )


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(convert, argv)


if __name__ == "__main__":
    sys.exit(main())
