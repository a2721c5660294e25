"""Convert the official MELD CSVs (plus optional audio/visual features) to the corect format.

python -m data_prep.meld --csv-dir /path/to/MELD --task emotion --out runs/data/meld_emotion
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from corect.data.dataset import DialogueRecord, label_index
from corect.data.format import SPLITS
from data_prep.options import (
    ConversionError,
    add_output_argument,
    add_quiet_argument,
    add_text_model_arguments,
    make_parser,
    run_main,
    text_encoder_from_args,
)
from data_prep.output import check_out_folder, write_and_summarize

TASK_LABELS = {
    "emotion": ["neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"],
    "sentiment": ["negative", "neutral", "positive"],
}
TASK_COLUMNS = {"emotion": "Emotion", "sentiment": "Sentiment"}
CSV_FILES = {"train": "train_sent_emo.csv", "dev": "dev_sent_emo.csv", "test": "test_sent_emo.csv"}
REQUIRED_COLUMNS = ("Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID")
FEATURE_SUFFIXES = (".npy", ".safetensors")

DESCRIPTION = """\
Convert MELD (Poria et al., ACL 2019) from its official CSVs to a corect dataset directory.

Reads <csv-dir>/{train,dev,test}_sent_emo.csv (columns Utterance, Speaker, Emotion,
Sentiment, Dialogue_ID, Utterance_ID, ...). Utterances are ordered by Utterance_ID inside a
dialogue (ids may skip numbers), dialogues by Dialogue_ID and named <split>/dia<D>
(MELD's dialogue ids repeat across splits). Speakers are kept by name. Text features
come from our text encoder (see corect.data.text_encoder).

Optional per-utterance features, in MELD's own per-split layout (dialogue ids repeat
across splits):
  --audio-dir / --visual-dir DIR   DIR/{train,dev,test}/dia<D>_utt<U>.npy or .safetensors
                                   (a vector; a .safetensors file with one tensor, or one
                                   named 'features')
  --audio-root DIR                 DIR/{train,dev,test}/dia<D>_utt<U>.wav or .flac (or
                                   DIR/audios/...): openSMILE functionals (pip install -e .[audio])
"""


@dataclass
class MeldUtterance:
    """One CSV row, with the file line it came from."""

    dialogue: int
    utterance: int
    speaker: str
    text: str
    emotion: str
    sentiment: str
    line: int


def _int_field(value: str, where: str, column: str) -> int:
    try:
        return int(value.strip())
    except (ValueError, AttributeError):
        raise ConversionError(f"{where}: column {column!r} is {value!r}, not an integer") from None


def read_meld_csv(path: str | Path) -> dict[int, list[MeldUtterance]]:
    """Dialogue id -> utterances sorted by Utterance_ID; dialogues in increasing id order.

    Text is kept as it is; bytes that are not UTF-8 become U+FFFD instead of failing.
    """
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: MELD CSV not found")
    dialogues: dict[int, dict[int, MeldUtterance]] = {}
    with path.open(encoding="utf-8-sig", errors="replace", newline="") as handle:
        try:
            _read_rows(path, csv.DictReader(handle), dialogues)
        except csv.Error as err:
            raise ConversionError(f"{path}: not a readable CSV file: {err}") from None
    return {d: [turns[u] for u in sorted(turns)] for d, turns in sorted(dialogues.items())}


def _read_rows(
    path: Path, reader: csv.DictReader, dialogues: dict[int, dict[int, MeldUtterance]]
) -> None:
    """Add every row of a MELD CSV to `dialogues` (dialogue id -> utterance id -> row)."""
    missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise ConversionError(
            f"{path}: column(s) {', '.join(missing)} missing; header is {reader.fieldnames}"
        )
    for row in reader:
        where = f"{path}, line {reader.line_num}"
        if None in row or any(row[c] is None for c in REQUIRED_COLUMNS):
            raise ConversionError(f"{where}: wrong number of fields")
        dialogue = _int_field(row["Dialogue_ID"], where, "Dialogue_ID")
        utterance_id = _int_field(row["Utterance_ID"], where, "Utterance_ID")
        speaker = row["Speaker"].strip()
        if not speaker:
            raise ConversionError(f"{where}: dialogue dia{dialogue}: column 'Speaker' empty")
        utterance = MeldUtterance(
            dialogue,
            utterance_id,
            speaker,
            row["Utterance"],
            row["Emotion"].strip().lower(),
            row["Sentiment"].strip().lower(),
            reader.line_num,
        )
        turns = dialogues.setdefault(dialogue, {})
        if utterance_id in turns:
            raise ConversionError(
                f"{where}: dialogue dia{dialogue}: Utterance_ID {utterance_id} repeats "
                f"line {turns[utterance_id].line}"
            )
        turns[utterance_id] = utterance


def load_vector_file(path: Path) -> np.ndarray:
    """A 1-D feature vector from a .npy or .safetensors file ([dim] or [1, dim])."""
    try:
        if path.suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        else:
            from safetensors.numpy import load_file

            tensors = load_file(path)
            if "features" in tensors:
                array = tensors["features"]
            elif len(tensors) == 1:
                array = next(iter(tensors.values()))
            else:
                raise ConversionError(
                    f"{path}: holds tensors {sorted(tensors)}; expected one, or one "
                    "named 'features'"
                )
    except ConversionError:
        raise
    except Exception as err:
        raise ConversionError(f"{path}: cannot read features: {err}") from err
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 1:
        raise ConversionError(f"{path}: features of shape {array.shape}, expected a vector")
    if not np.isfinite(array).all():
        raise ConversionError(f"{path}: features contain NaN or inf")
    return array


def utterance_stem(utterance: MeldUtterance) -> str:
    return f"dia{utterance.dialogue}_utt{utterance.utterance}"


def _split_folder(root: Path, split: str, option: str) -> Path:
    folder = root / split
    if not folder.is_dir():
        raise ConversionError(
            f"{option} {root}: folder {folder} not found (expected {root}/{{train,dev,test}}/"
            "dia<D>_utt<U>.*)"
        )
    return folder


def feature_dir_features(
    root: Path, split: str, dialogues: dict[int, list[MeldUtterance]], option: str
) -> dict[int, np.ndarray]:
    """Per-dialogue [T, dim] arrays from files root/split/dia<D>_utt<U>.npy|.safetensors."""
    folder = _split_folder(root, split, option)
    out: dict[int, np.ndarray] = {}
    dim: tuple[int, Path] | None = None
    for dialogue, utterances in dialogues.items():
        rows = []
        for utterance in utterances:
            stem = utterance_stem(utterance)
            path = next(
                (
                    folder / f"{stem}{s}"
                    for s in FEATURE_SUFFIXES
                    if (folder / f"{stem}{s}").is_file()
                ),
                None,
            )
            if path is None:
                raise ConversionError(
                    f"{option}: no feature file for split {split!r}, dialogue dia{dialogue}, "
                    f"utterance {utterance.utterance}: {folder / stem}.npy (or .safetensors) "
                    "not found"
                )
            vector = load_vector_file(path)
            if dim is None:
                dim = (vector.shape[0], path)
            elif vector.shape[0] != dim[0]:
                raise ConversionError(
                    f"{path}: {vector.shape[0]} features, but {dim[1]} has {dim[0]}"
                )
            rows.append(vector)
        out[dialogue] = np.stack(rows)
    return out


def opensmile_features(
    root: Path,
    split: str,
    dialogues: dict[int, list[MeldUtterance]],
    extractor: object,
) -> dict[int, np.ndarray]:
    """Per-dialogue openSMILE functionals of root/split/dia<D>_utt<U>.wav|.flac."""
    from data_prep.audio_features import find_audio_file

    if (root / "audios").is_dir():
        root = root / "audios"
    folder = _split_folder(root, split, "--audio-root")
    paths = []
    for dialogue, utterances in dialogues.items():
        for utterance in utterances:
            path = find_audio_file(folder, utterance_stem(utterance))
            if path is None:
                raise ConversionError(
                    f"--audio-root: no audio for split {split!r}, dialogue dia{dialogue}, "
                    f"utterance {utterance.utterance}: {folder / utterance_stem(utterance)}"
                    ".wav (or .flac) not found"
                )
            paths.append(path)
    vectors = extractor.extract(paths)  # type: ignore[attr-defined]
    out, start = {}, 0
    for dialogue, utterances in dialogues.items():
        out[dialogue] = vectors[start : start + len(utterances)]
        start += len(utterances)
    return out


def build_parser() -> argparse.ArgumentParser:
    from data_prep.audio_features import DEFAULT_CACHE_DIR, DEFAULT_FEATURE_SET, FEATURE_SETS

    parser = make_parser("python -m data_prep.meld", DESCRIPTION)
    parser.add_argument(
        "--csv-dir",
        type=Path,
        required=True,
        metavar="DIR",
        help="folder with train_sent_emo.csv, dev_sent_emo.csv, test_sent_emo.csv",
    )
    parser.add_argument(
        "--task", choices=list(TASK_LABELS), default="emotion", help="label column to use"
    )
    add_output_argument(parser, "runs/data/meld_<task>")
    features = parser.add_argument_group("audio and visual features (optional)")
    audio = features.add_mutually_exclusive_group()
    audio.add_argument(
        "--audio-dir", type=Path, metavar="DIR", help="per-utterance audio feature files"
    )
    audio.add_argument(
        "--audio-root", type=Path, metavar="DIR", help="MELD audio clips, for openSMILE"
    )
    features.add_argument(
        "--visual-dir", type=Path, metavar="DIR", help="per-utterance visual feature files"
    )
    features.add_argument(
        "--opensmile-set",
        choices=list(FEATURE_SETS),
        default=DEFAULT_FEATURE_SET,
        help="openSMILE functionals for --audio-root",
    )
    features.add_argument(
        "--audio-cache-dir",
        type=Path,
        default=DEFAULT_CACHE_DIR,
        metavar="DIR",
        help="cache of openSMILE features",
    )
    add_text_model_arguments(parser)
    add_quiet_argument(parser)
    return parser


def convert(argv: Sequence[str] | None = None) -> Path:
    """Parse `argv`, convert, print the summary; return the dataset directory."""
    args = build_parser().parse_args(argv)
    out = args.out or Path(f"runs/data/meld_{args.task}")
    check_out_folder(out, args)
    csvs = {split: read_meld_csv(args.csv_dir / CSV_FILES[split]) for split in SPLITS}
    records = meld_records(csvs, args.task, args.csv_dir)
    extra: dict[str, object] = {
        "source": {"format": "MELD official CSVs", "csv_dir": str(args.csv_dir)},
    }
    encoder = text_encoder_from_args(args)
    encoder.encode_records([r for split in SPLITS for r in records[split]])
    extra["text_features"] = encoder.description
    dims = {"t": encoder.dim}
    add_audio_visual(args, csvs, records, dims, extra)
    labels = TASK_LABELS[args.task]
    return write_and_summarize(
        out, name="meld", task=args.task, labels=labels, dims=dims, splits=records, extra=extra
    )


def meld_records(
    csvs: dict[str, dict[int, list[MeldUtterance]]], task: str, csv_dir: Path
) -> dict[str, list[DialogueRecord]]:
    """Per split, one record per dialogue (named ``<split>/dia<D>``) with the labels of
    `task`, speakers and texts; no features yet."""
    labels = TASK_LABELS[task]
    index = label_index(labels)
    column = TASK_COLUMNS[task]
    records: dict[str, list[DialogueRecord]] = {}
    for split, dialogues in csvs.items():
        records[split] = []
        for dialogue, utterances in dialogues.items():
            ids = []
            for u in utterances:
                value = getattr(u, column.lower())
                if value not in index:
                    raise ConversionError(
                        f"{csv_dir / CSV_FILES[split]}, line {u.line}: dialogue "
                        f"dia{dialogue}: column {column!r} is {value!r}, not one of "
                        f"{', '.join(labels)}"
                    )
                ids.append(index[value])
            records[split].append(
                DialogueRecord(
                    f"{split}/dia{dialogue}",  # MELD's ids repeat across splits
                    [u.speaker for u in utterances],
                    ids,
                    {},
                    [u.text for u in utterances],
                )
            )
    return records


def add_audio_visual(
    args: argparse.Namespace,
    csvs: dict[str, dict[int, list[MeldUtterance]]],
    records: dict[str, list[DialogueRecord]],
    dims: dict[str, int],
    extra: dict[str, object],
) -> None:
    """Add the audio and visual features the options ask for to every record, their dims
    to `dims` and their provenance to the manifest's `extra`."""
    extractor = None
    if args.audio_root is not None:
        from data_prep.audio_features import AudioFeatureExtractor

        extractor = AudioFeatureExtractor(
            args.opensmile_set, cache_dir=args.audio_cache_dir, progress=not args.quiet
        )
        extra["audio_features"] = extractor.description
    for letter, root, option in (
        ("a", args.audio_dir, "--audio-dir"),
        ("a", args.audio_root, "--audio-root"),
        ("v", args.visual_dir, "--visual-dir"),
    ):
        if root is None:
            continue
        for split in SPLITS:
            if option == "--audio-root":
                arrays = opensmile_features(root, split, csvs[split], extractor)
            else:
                arrays = feature_dir_features(root, split, csvs[split], option)
            for record, dialogue in zip(records[split], csvs[split], strict=True):
                record.features[letter] = arrays[dialogue]
        dims[letter] = next(r.features[letter].shape[1] for split in SPLITS for r in records[split])
        if option != "--audio-root":
            extra[f"{'audio' if letter == 'a' else 'visual'}_features"] = {"dir": str(root)}


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(convert, argv)


if __name__ == "__main__":
    sys.exit(main())
