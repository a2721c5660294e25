"""What a converter writes and prints: the check of ``--out`` (before any work), the dev
split carved from train, feature dims, the dataset and its summary (dialogues,
utterances and labels per split)."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from corect.common.files import inside
from corect.data.dataset import DialogueRecord
from corect.data.format import SPLITS, load_dataset, write_dataset
from corect.data.manifest import dataset_refusal
from data_prep.options import MODALITY_NAMES, ConversionError


def check_out_folder(out: Path, args: argparse.Namespace) -> None:
    """Refuse, before any work, a converter's output folder whose replacement would destroy
    what it did not write (see :func:`check_output_folder`; the inputs are every path
    option of `args`)."""
    inputs = [
        given
        for key, value in vars(args).items()
        if key != "out"
        for given in (value if isinstance(value, list) else [value])
        if isinstance(given, Path)
    ]
    check_output_folder(out, inputs, dataset_refusal)


def check_output_folder(
    out: Path, inputs: Iterable[Path], refusal: Callable[[Path], str | None]
) -> None:
    """Refuse, before any work, an output folder whose replacement would destroy what the
    command did not write: the current folder (or one holding it), one that is or holds an
    input, or an existing folder for which ``refusal`` says why it is not ours."""
    where = f"--out {out}"
    if inside(Path.cwd(), out):
        raise ConversionError(
            f"{where}: is the current folder or holds it; give a new folder, e.g. runs/data/NAME"
        )
    for given in inputs:
        if inside(given, out):
            raise ConversionError(
                f"{where}: is or holds the input {given}; give another output folder"
            )
    reason = None
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        reason = "is not a folder"
    elif out.is_dir():
        reason = refusal(out)
    if reason:
        raise ConversionError(
            f"{where} exists and {reason}; nothing was written. Give a new folder, or move "
            "that one away yourself"
        )


def dev_from_train(train_ids: Sequence[str], fraction: float = 0.1) -> tuple[list, list]:
    """(train, dev): dev is the first int(fraction * n) ids, in the given order."""
    n_dev = int(len(train_ids) * fraction)
    return list(train_ids[n_dev:]), list(train_ids[:n_dev])


def summary_text(directory: str | Path) -> str:
    """Dialogues, utterances and label counts per split, and the modality dims."""
    dataset = load_dataset(directory)
    dims = ", ".join(f"{m} ({MODALITY_NAMES.get(m, m)}) {d}" for m, d in dataset.dims.items())
    lines = [
        f"dataset {dataset.name!r}, task {dataset.task!r} -> {directory}",
        f"modalities: {dims}",
        f"speakers: {len(dataset.speaker_names)}, most parties in one dialogue: "
        f"{dataset.max_parties if any(s.num_utterances for s in dataset.splits.values()) else 0}",
    ]
    width = max(len(n) for n in [*dataset.labels, "unlabeled"])
    header = f"{'':<{width}}" + "".join(f"{s:>10}" for s in dataset.splits)
    rows = [header]
    counts = {
        split: Counter(int(x) for x in data.labels.tolist())
        for split, data in dataset.splits.items()
    }
    rows.append(
        f"{'dialogues':<{width}}"
        + "".join(f"{d.num_dialogues:>10}" for d in dataset.splits.values())
    )
    rows.append(
        f"{'utterances':<{width}}"
        + "".join(f"{d.num_utterances:>10}" for d in dataset.splits.values())
    )
    for index, name in [*enumerate(dataset.labels), (-1, "unlabeled")]:
        if index == -1 and not any(c[-1] for c in counts.values()):
            continue
        rows.append(f"{name:<{width}}" + "".join(f"{c[index]:>10}" for c in counts.values()))
    return "\n".join(lines + rows)


def write_and_summarize(
    out: Path,
    *,
    name: str,
    task: str,
    labels: Sequence[str],
    dims: Mapping[str, int],
    splits: Mapping[str, Sequence[DialogueRecord]],
    extra: Mapping[str, object] | None = None,
) -> Path:
    """write_dataset, warn about empty splits, then print the summary."""
    for split in SPLITS:
        if not splits.get(split):
            print(f"warning: split {split!r} has no dialogues", file=sys.stderr)
    write_dataset(out, name=name, task=task, labels=labels, dims=dims, splits=splits, extra=extra)
    print(summary_text(out))
    return out


def feature_dims(records: Iterable[DialogueRecord], modalities: str) -> dict[str, int]:
    """Dims of `modalities` from the first record that has them (write_dataset checks the rest)."""
    dims: dict[str, int] = {}
    for record in records:
        for m in modalities:
            if m not in dims and m in record.features:
                dims[m] = int(np.asarray(record.features[m]).shape[-1])
        if len(dims) == len(modalities):
            break
    return {m: dims[m] for m in modalities if m in dims}
