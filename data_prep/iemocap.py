"""Convert the public IEMOCAP feature release (a 9-tuple pickle) to the corect format.

python -m data_prep.iemocap IEMOCAP_features.pkl --task 6way --out runs/data/iemocap_6way
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from data_prep.options import make_parser, run_main
from data_prep.release import PICKLE_WARNING, add_release_arguments, convert_release

# Class ids of the release, in order: 0 = hap, 1 = sad, ...
TASK_LABELS = {
    "6way": ["hap", "sad", "neu", "ang", "exc", "fru"],
    "4way": ["hap", "sad", "neu", "ang"],
}

DESCRIPTION = f"""\
Convert an IEMOCAP feature release to a corect dataset directory.

The input is the pickle used by DialogueRNN/COGMEN/CORECT: a 9-tuple (video_ids, speakers,
labels, text, audio, visual, sentences, train_ids, test_ids), each of speakers ... sentences
a dict from dialogue id to a per-utterance list. Speakers are 'M'/'F'. Labels are class ids:
6way = {", ".join(TASK_LABELS["6way"])}; 4way = {", ".join(TASK_LABELS["4way"])} (the 4-way
release has the same layout). dev = the first 10% of train_ids in file order; test = test_ids.

{PICKLE_WARNING}
"""


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser("python -m data_prep.iemocap", DESCRIPTION)
    add_release_arguments(parser, "iemocap", TASK_LABELS)
    return parser


def convert(argv: Sequence[str] | None = None) -> Path:
    """Parse `argv`, convert, print the summary; return the dataset directory."""
    args = build_parser().parse_args(argv)
    hint = "; is this the 6-way release? use --task 6way" if args.task == "4way" else ""
    return convert_release(args, dataset="iemocap", labels=TASK_LABELS[args.task], label_hint=hint)


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(convert, argv)


if __name__ == "__main__":
    sys.exit(main())
