"""The corect dataset format on disk: a JSON manifest plus one safetensors file per split.

Layout of a dataset directory::

    manifest.json        name, task, labels, modalities and dims, splits, speakers
    train.safetensors    features.<m> [N, D_m] float32, labels [N] int64,
    dev.safetensors      speakers [N] int64 (index into manifest "speakers"),
    test.safetensors     offsets [D + 1] int64 (dialogue d = rows offsets[d]:offsets[d+1])
    <split>.texts.json   optional: the utterance texts, one list per dialogue

The manifest lists each split's dialogue ids in the order of the offsets. Labels index
into the manifest's ordered ``labels``; -1 marks an unlabeled utterance (ignored by the
loss and metrics). Everything loads without pickle, and :func:`load_dataset` validates
it: a bad file fails with an error that names the file, the dialogue and the field.

Writers build :class:`~corect.data.dataset.DialogueRecord` objects and call
:func:`write_dataset`, which writes into a temporary directory and renames it into place,
so a failed conversion never leaves a half-written dataset or destroys a previous one; it
replaces only a dataset of ours (:func:`~corect.data.manifest.dataset_refusal`). A
dialogue id may be in one split only, checked on write and on load.
:attr:`~corect.data.dataset.Dataset.fingerprint` identifies what a model learns from, so
a checkpoint can tell whether it is given its own data. The in-memory types are in
:mod:`corect.data.dataset`, the manifest's checks in :mod:`corect.data.manifest`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from corect.common.files import atomic_directory, read_json, recover
from corect.data.dataset import Dataset, DialogueRecord, SplitData, party_indices
from corect.data.manifest import (
    MANIFEST,
    DatasetError,
    check_unique_dialogues,
    dataset_refusal,
    read_manifest,
)

__all__ = ["FORMAT_VERSION", "SPLITS", "DatasetError", "load_dataset", "write_dataset"]

FORMAT_VERSION = 1
SPLITS = ("train", "dev", "test")
INDEX_FIELDS = ("labels", "speakers", "offsets")  # every split file has these tensors


# --------------------------------------------------------------------------- writing


@dataclass
class _PackedSplit:
    """One split ready to write: its tensors, manifest entry and texts (None = none kept)."""

    tensors: dict[str, torch.Tensor]
    manifest: dict[str, object]
    texts: list[list[str]] | None


def write_dataset(
    directory: str | Path,
    *,
    name: str,
    task: str,
    labels: Sequence[str],
    dims: Mapping[str, int],
    splits: Mapping[str, Sequence[DialogueRecord]],
    extra: Mapping[str, object] | None = None,
    keep_existing: bool = False,
) -> Path:
    """Write a dataset atomically: into a temporary sibling directory, then renamed.

    Raises :class:`DatasetError` (naming the dialogue and field) on inconsistent records.
    ``keep_existing``: a cache's write, where a dataset another process finished at the
    same path first is kept (see :func:`corect.common.files.atomic_directory`).
    """
    directory = Path(directory)
    check_unique_dialogues(
        ((split, [str(d.id) for d in dialogues]) for split, dialogues in splits.items()),
        f"dataset {directory}",
    )
    speaker_index: dict[str, int] = {}  # name -> index, in order of first appearance
    packed = {
        split: _pack_split(split, dialogues, dims, speaker_index)
        for split, dialogues in splits.items()
    }
    manifest = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "task": task,
        "labels": list(labels),
        "modalities": {m: int(d) for m, d in dims.items()},
        "speakers": list(speaker_index),
        "splits": {split: data.manifest for split, data in packed.items()},
        **(dict(extra) if extra else {}),
    }
    with atomic_directory(directory, dataset_refusal, keep_existing=keep_existing) as tmp:
        _write_files(tmp, packed, manifest)
        # Validate what we wrote before it replaces anything.
        load_dataset(tmp)
    return directory


def _pack_split(
    split: str,
    dialogues: Sequence[DialogueRecord],
    dims: Mapping[str, int],
    speaker_index: dict[str, int],
) -> _PackedSplit:
    """The dialogues of one split concatenated into its tensors; new speaker names are
    added to `speaker_index`."""
    feats: dict[str, list[np.ndarray]] = {m: [] for m in dims}
    all_labels: list[int] = []
    all_speakers: list[int] = []
    offsets = [0]
    ids: list[str] = []
    texts: list[list[str]] = []
    for dialogue in dialogues:
        for m, array in _checked_record(split, dialogue, dims).items():
            feats[m].append(array)
        for s in dialogue.speakers:
            all_speakers.append(speaker_index.setdefault(s, len(speaker_index)))
        all_labels.extend(int(x) for x in dialogue.labels)
        offsets.append(offsets[-1] + len(dialogue.speakers))
        ids.append(str(dialogue.id))
        if dialogue.texts is not None:
            texts.append(list(dialogue.texts))
    tensors = {
        f"features.{m}": torch.from_numpy(
            np.concatenate(parts) if parts else np.zeros((0, dims[m]), np.float32)
        )
        for m, parts in feats.items()
    }
    tensors["labels"] = torch.tensor(all_labels, dtype=torch.long)
    tensors["speakers"] = torch.tensor(all_speakers, dtype=torch.long)
    tensors["offsets"] = torch.tensor(offsets, dtype=torch.long)
    kept_texts = texts if texts and len(texts) == len(ids) else None
    return _PackedSplit(tensors, {"dialogues": ids, "utterances": offsets[-1]}, kept_texts)


def _checked_record(
    split: str, dialogue: DialogueRecord, dims: Mapping[str, int]
) -> dict[str, np.ndarray]:
    """The features of `dialogue` as float32 arrays, after checking that its speakers,
    labels and features agree in length and dims."""
    where = f"split {split!r}, dialogue {dialogue.id!r}"
    length = len(dialogue.speakers)
    if length == 0:
        raise DatasetError(f"{where}: field 'speakers' is empty (empty dialogue)")
    if len(dialogue.labels) != length:
        raise DatasetError(
            f"{where}: field 'labels' has {len(dialogue.labels)} entries, 'speakers' has {length}"
        )
    arrays = {}
    for m, dim in dims.items():
        if m not in dialogue.features:
            raise DatasetError(f"{where}: field 'features.{m}' is missing")
        array = np.asarray(dialogue.features[m], dtype=np.float32)
        if array.shape != (length, dim):
            raise DatasetError(
                f"{where}: field 'features.{m}' has shape {tuple(array.shape)}, "
                f"expected ({length}, {dim})"
            )
        arrays[m] = array
    return arrays


def _write_files(
    tmp: Path, packed: Mapping[str, _PackedSplit], manifest: Mapping[str, Any]
) -> None:
    """Every file of the dataset into the (temporary) directory `tmp`."""
    for split, data in packed.items():
        tensors = {k: v.contiguous() for k, v in data.tensors.items()}
        save_file(tensors, tmp / f"{split}.safetensors")
    for split, data in packed.items():
        if data.texts is not None:
            (tmp / f"{split}.texts.json").write_text(json.dumps(data.texts, ensure_ascii=False))
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False))


# --------------------------------------------------------------------------- reading


def load_dataset(
    directory: str | Path,
    modalities: str | None = None,
    splits: Sequence[str] | None = None,
) -> Dataset:
    """Load and validate a dataset directory; optionally keep only `modalities`.

    `splits`: read only these splits (the others' files are not opened); a split the
    manifest does not list fails. None reads every split."""
    directory = Path(directory)
    if not (directory / MANIFEST).exists():
        recover(directory)  # a writer killed while replacing it left the old one aside
    manifest = read_manifest(directory)
    text_features = manifest.get("text_features")
    dataset = Dataset(
        manifest["name"],
        manifest["task"],
        list(manifest["labels"]),
        {str(m): int(d) for m, d in manifest["modalities"].items()},
        list(manifest["speakers"]),
        path=directory,
        text_features=text_features if isinstance(text_features, dict) else None,
    )
    if splits is not None:
        unknown = [s for s in splits if s not in manifest["splits"]]
        if unknown:
            raise DatasetError(
                f"{directory / MANIFEST}: split {unknown[0]!r} is not listed (field 'splits' "
                f"has {', '.join(manifest['splits'])})"
            )
    for split, info in manifest["splits"].items():
        if splits is None or split in splits:
            ids = [str(i) for i in info.get("dialogues", [])]
            dataset.splits[split] = _read_split(directory, split, ids, dataset)
    if modalities is not None:
        dataset = dataset.select_modalities(modalities)
    return dataset


def _read_split(directory: Path, split: str, ids: list[str], dataset: Dataset) -> SplitData:
    """One split's tensors (and texts, when stored), every field checked against the
    manifest's `ids`, labels, speakers and dims."""
    file = directory / f"{split}.safetensors"
    tensors = _read_tensors(file, split)
    offsets = _checked_offsets(file, tensors["offsets"], ids)
    labels = _checked_index(file, tensors["labels"], ids, offsets, len(dataset.labels), "labels")
    speakers = _checked_index(
        file, tensors["speakers"], ids, offsets, len(dataset.speaker_names), "speakers"
    )
    features = {
        m: _checked_features(file, tensors, m, dim, ids, offsets) for m, dim in dataset.dims.items()
    }
    texts = None
    text_file = directory / f"{split}.texts.json"
    if text_file.is_file():
        texts = _read_texts(text_file, ids, (offsets[1:] - offsets[:-1]).tolist())
    return SplitData(
        ids,
        offsets,
        features,
        labels.long(),
        speakers.long(),
        party_indices(speakers.long(), offsets),
        texts,
    )


def _read_tensors(file: Path, split: str) -> dict[str, torch.Tensor]:
    """The tensors of a split file, which must exist, be readable and hold the index fields."""
    if not file.is_file():
        raise DatasetError(f"{file}: missing, but manifest lists split {split!r}")
    try:
        tensors = load_file(file)
    except Exception as err:  # safetensors raises its own error type for bad files
        raise DatasetError(
            f"{file}: not a readable safetensors file ({err}); is it truncated? "
            "Convert the dataset again"
        ) from None
    for key in INDEX_FIELDS:
        if key not in tensors:
            raise DatasetError(f"{file}: field {key!r} is missing")
    return tensors


def _checked_offsets(file: Path, offsets: torch.Tensor, ids: list[str]) -> torch.Tensor:
    """`offsets`, checked: one more than the dialogues, from 0, no dialogue empty."""
    if offsets.numel() != len(ids) + 1 or int(offsets[0]) != 0:
        raise DatasetError(
            f"{file}: field 'offsets' has {offsets.numel()} entries for {len(ids)} "
            "dialogues listed in the manifest (expected one more, starting at 0)"
        )
    lengths = offsets[1:] - offsets[:-1]
    if (lengths <= 0).any():
        bad = int(torch.nonzero(lengths <= 0)[0])
        raise DatasetError(f"{file}: dialogue {ids[bad]!r} is empty (field 'offsets')")
    return offsets


def _checked_index(
    file: Path, values: torch.Tensor, ids: list[str], offsets: torch.Tensor, size: int, key: str
) -> torch.Tensor:
    """Field `key` ('labels': -1 or a class index; 'speakers': an index into the
    manifest's speakers), one per utterance; the first bad row is named."""
    n = int(offsets[-1])
    if values.numel() != n:
        missing = " (speakers missing)" if key == "speakers" else ""
        raise DatasetError(
            f"{file}: field {key!r} has {values.numel()} rows, expected {n}{missing}"
        )
    lowest = -1 if key == "labels" else 0
    bad = (values < lowest) | (values >= size)
    if bad.any():
        row = int(torch.nonzero(bad)[0])
        problem = (
            f"out of range for {size} classes"
            if key == "labels"
            else f"is not in the manifest's {size} speakers"
        )
        raise DatasetError(
            f"{file}: {_dialogue_at(ids, offsets, row)}: field {key!r} "
            f"value {int(values[row])} {problem}"
        )
    return values


def _checked_features(
    file: Path,
    tensors: Mapping[str, torch.Tensor],
    modality: str,
    dim: int,
    ids: list[str],
    offsets: torch.Tensor,
) -> torch.Tensor:
    """The features of `modality`, checked: [N, dim] as the manifest says, all finite."""
    key = f"features.{modality}"
    if key not in tensors:
        raise DatasetError(f"{file}: field {key!r} is missing (modality {modality})")
    x = tensors[key]
    n = int(offsets[-1])
    if x.dim() != 2 or x.shape[0] != n or x.shape[1] != dim:
        raise DatasetError(
            f"{file}: field {key!r} has shape {tuple(x.shape)}, manifest says [{n}, {dim}]"
        )
    finite = torch.isfinite(x).all(dim=1)
    if not finite.all():
        row = int(torch.nonzero(~finite)[0])
        raise DatasetError(
            f"{file}: {_dialogue_at(ids, offsets, row)}: field {key!r} has NaN or inf"
        )
    return x.float()


def _dialogue_at(ids: list[str], offsets: torch.Tensor, row: int) -> str:
    """'dialogue <id>, utterance <k>' for a row of a split."""
    d = max(
        0, min(int(torch.searchsorted(offsets, torch.tensor(row), right=True)) - 1, len(ids) - 1)
    )
    return f"dialogue {ids[d]!r}, utterance {row - int(offsets[d])}" if ids else f"row {row}"


def _read_texts(path: Path, ids: list[str], lengths: list[int]) -> list[list[str]]:
    """A split's utterance texts: one list of strings per dialogue, checked."""
    texts: Any = read_json(path, DatasetError)
    if not isinstance(texts, list) or len(texts) != len(ids):
        size = len(texts) if isinstance(texts, list) else type(texts).__name__
        raise DatasetError(
            f"{path}: expected one list of texts per dialogue ({len(ids)}), got {size}"
        )
    for dialogue, utterances, length in zip(ids, texts, lengths, strict=True):
        if not isinstance(utterances, list) or not all(isinstance(t, str) for t in utterances):
            raise DatasetError(f"{path}: dialogue {dialogue!r}: expected a list of strings")
        if len(utterances) != length:
            raise DatasetError(
                f"{path}: dialogue {dialogue!r} has {len(utterances)} texts, expected {length}"
            )
    return texts
