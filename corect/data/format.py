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

Writers build :class:`DialogueRecord` objects and call :func:`write_dataset`, which
writes into a temporary directory and renames it into place, so a failed conversion
never leaves a half-written dataset or destroys a previous one; it replaces only a
dataset of ours (:func:`~corect.data.manifest.dataset_refusal`). A dialogue id may be in
one split only, checked on write and on load. :attr:`Dataset.fingerprint` identifies what
a model learns from, so a checkpoint can tell whether it is given its own data.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from corect.common.files import atomic_directory, read_json, recover
from corect.data.manifest import (
    DatasetError,
    check_unique_dialogues,
    dataset_refusal,
    read_manifest,
)

__all__ = ["DatasetError", "Dataset", "DialogueRecord", "SplitData", "load_dataset"]
__all__ += ["write_dataset", "label_index", "party_indices"]

FORMAT_VERSION = 1
SPLITS = ("train", "dev", "test")


@dataclass
class DialogueRecord:
    """One dialogue as converters produce it.

    `labels` are indices into the dataset's label list (-1 = unlabeled); `features` maps a
    modality letter to an array of shape [len(speakers), dim].
    """

    id: str
    speakers: list[str]
    labels: list[int]
    features: dict[str, np.ndarray]
    texts: list[str] | None = None


@dataclass
class SplitData:
    """All utterances of one split, concatenated dialogue after dialogue."""

    dialogue_ids: list[str]
    offsets: torch.Tensor  # [D + 1] int64
    features: dict[str, torch.Tensor]  # modality -> [N, dim] float32
    labels: torch.Tensor  # [N] int64, -1 = unlabeled
    speakers: torch.Tensor  # [N] int64, index into Dataset.speaker_names
    parties: torch.Tensor  # [N] int64, per-dialogue party index (0, 1, ... by first turn)
    texts: list[list[str]] | None = None

    @property
    def num_dialogues(self) -> int:
        return len(self.dialogue_ids)

    @property
    def num_utterances(self) -> int:
        return int(self.offsets[-1])

    @property
    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def feature_statistics(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per-modality, per-dimension (mean, std) over the split's utterances (float64
        accumulation, so features of any scale give exact statistics)."""
        stats = {}
        for m, x in self.features.items():
            x64 = x.double()
            stats[m] = (x64.mean(0).float(), x64.std(0, correction=0).float())
        return stats

    def select_modalities(self, modalities: str) -> SplitData:
        return SplitData(
            self.dialogue_ids,
            self.offsets,
            {m: self.features[m] for m in modalities},
            self.labels,
            self.speakers,
            self.parties,
            self.texts,
        )


@dataclass
class Dataset:
    """A loaded, validated dataset."""

    name: str
    task: str
    labels: list[str]
    dims: dict[str, int]
    speaker_names: list[str]
    splits: dict[str, SplitData] = field(default_factory=dict)
    path: Path | None = None
    text_features: dict[str, Any] | None = None  # the manifest's record of the text encoder

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def max_parties(self) -> int:
        return max(int(s.parties.max()) + 1 for s in self.splits.values() if s.num_utterances)

    @cached_property
    def fingerprint(self) -> str:
        """A hash of what a model learns from: the labels in order, the modalities and
        dims, and per loaded split the dialogue ids, labels, parties and features."""
        digest = hashlib.sha256(json.dumps([self.labels, self.dims], sort_keys=True).encode())
        for name in sorted(self.splits):
            split = self.splits[name]
            digest.update(json.dumps([name, split.dialogue_ids]).encode())
            features = [split.features[m] for m in sorted(split.features)]
            for tensor in (split.offsets, split.labels, split.parties, *features):
                array = np.ascontiguousarray(tensor.numpy())
                digest.update(f"{array.dtype.str}{array.shape}".encode())
                digest.update(array.data)
        return digest.hexdigest()[:32]

    def select_modalities(self, modalities: str) -> Dataset:
        """The same dataset restricted to `modalities` (letters); missing ones fail clearly."""
        missing = [m for m in modalities if m not in self.dims]
        if missing:
            raise DatasetError(
                f"{self.path}: modality {', '.join(missing)} requested but the dataset has "
                f"only {''.join(self.dims)} (manifest field 'modalities')"
            )
        return Dataset(
            self.name,
            self.task,
            self.labels,
            {m: self.dims[m] for m in modalities},
            self.speaker_names,
            {k: s.select_modalities(modalities) for k, s in self.splits.items()},
            self.path,
            self.text_features,
        )


def label_index(names: Sequence[str]) -> dict[str, int]:
    """Name -> index in the ordered label list."""
    return {name: i for i, name in enumerate(names)}


def party_indices(speakers: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Per-dialogue party index of each utterance: 0 for the first speaker to talk, 1 for
    the next new one, and so on. Vectorized over the whole split."""
    n = speakers.numel()
    if n == 0:
        return speakers.clone()
    lengths = offsets[1:] - offsets[:-1]
    dialogue = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
    position = torch.arange(n) - offsets[:-1][dialogue]
    # Key (dialogue, speaker); the first turn of each key gives its order of appearance.
    key = dialogue * (int(speakers.max()) + 1) + speakers
    uniq, inverse = torch.unique(key, return_inverse=True)
    first = torch.full((uniq.numel(),), n, dtype=torch.long).scatter_reduce(
        0, inverse, position, reduce="amin"
    )
    key_dialogue = torch.zeros_like(uniq).scatter(0, inverse, dialogue)
    # Rank each key's first position among keys of the same dialogue.
    order = torch.argsort(key_dialogue * (n + 1) + first)
    rank_in_sorted = torch.arange(uniq.numel())
    sorted_dialogue = key_dialogue[order]
    start_of_dialogue = torch.searchsorted(sorted_dialogue, sorted_dialogue, right=False)
    rank = torch.empty_like(rank_in_sorted)
    rank[order] = rank_in_sorted - start_of_dialogue
    return rank[inverse]


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
    speaker_names: list[str] = []
    speaker_index: dict[str, int] = {}
    manifest_splits: dict[str, dict[str, object]] = {}
    tensors_by_split: dict[str, dict[str, torch.Tensor]] = {}
    texts_by_split: dict[str, list[list[str]]] = {}
    for split, dialogues in splits.items():
        feats: dict[str, list[np.ndarray]] = {m: [] for m in dims}
        all_labels: list[int] = []
        all_speakers: list[int] = []
        offsets = [0]
        ids: list[str] = []
        texts: list[list[str]] = []
        for dialogue in dialogues:
            where = f"split {split!r}, dialogue {dialogue.id!r}"
            length = len(dialogue.speakers)
            if length == 0:
                raise DatasetError(f"{where}: field 'speakers' is empty (empty dialogue)")
            if len(dialogue.labels) != length:
                raise DatasetError(
                    f"{where}: field 'labels' has {len(dialogue.labels)} entries, "
                    f"'speakers' has {length}"
                )
            for m, dim in dims.items():
                if m not in dialogue.features:
                    raise DatasetError(f"{where}: field 'features.{m}' is missing")
                array = np.asarray(dialogue.features[m], dtype=np.float32)
                if array.shape != (length, dim):
                    raise DatasetError(
                        f"{where}: field 'features.{m}' has shape {tuple(array.shape)}, "
                        f"expected ({length}, {dim})"
                    )
                feats[m].append(array)
            for s in dialogue.speakers:
                if s not in speaker_index:
                    speaker_index[s] = len(speaker_names)
                    speaker_names.append(s)
                all_speakers.append(speaker_index[s])
            all_labels.extend(int(x) for x in dialogue.labels)
            offsets.append(offsets[-1] + length)
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
        tensors_by_split[split] = tensors
        manifest_splits[split] = {"dialogues": ids, "utterances": offsets[-1]}
        if texts and len(texts) == len(ids):
            texts_by_split[split] = texts
    manifest = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "task": task,
        "labels": list(labels),
        "modalities": {m: int(d) for m, d in dims.items()},
        "speakers": speaker_names,
        "splits": manifest_splits,
        **(dict(extra) if extra else {}),
    }
    with atomic_directory(directory, dataset_refusal, keep_existing=keep_existing) as tmp:
        for split, tensors in tensors_by_split.items():
            save_file({k: v.contiguous() for k, v in tensors.items()}, tmp / f"{split}.safetensors")
        for split, texts in texts_by_split.items():
            (tmp / f"{split}.texts.json").write_text(json.dumps(texts, ensure_ascii=False))
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False))
        # Validate what we wrote before it replaces anything.
        load_dataset(tmp)
    return directory


def _dialogue_at(ids: list[str], offsets: torch.Tensor, row: int) -> str:
    """'dialogue <id>, utterance <k>' for a row of a split."""
    d = max(
        0, min(int(torch.searchsorted(offsets, torch.tensor(row), right=True)) - 1, len(ids) - 1)
    )
    return f"dialogue {ids[d]!r}, utterance {row - int(offsets[d])}" if ids else f"row {row}"


def _read_texts(path: Path, ids: list[str], lengths: list[int]) -> list[list[str]]:
    """A split's utterance texts: one list of strings per dialogue, checked."""
    texts = read_json(path, DatasetError)
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


def load_dataset(
    directory: str | Path,
    modalities: str | None = None,
    splits: Sequence[str] | None = None,
) -> Dataset:
    """Load and validate a dataset directory; optionally keep only `modalities`.

    `splits`: read only these splits (the others' files are not opened); a split the
    manifest does not list fails. None reads every split."""
    directory = Path(directory)
    if not (directory / "manifest.json").exists():
        recover(directory)  # a writer killed while replacing it left the old one aside
    manifest_path = directory / "manifest.json"
    manifest = read_manifest(directory)
    labels = list(manifest["labels"])
    dims = {str(m): int(d) for m, d in manifest["modalities"].items()}
    speaker_names = list(manifest["speakers"])
    text_features = manifest.get("text_features")
    dataset = Dataset(
        manifest["name"],
        manifest["task"],
        labels,
        dims,
        speaker_names,
        path=directory,
        text_features=text_features if isinstance(text_features, dict) else None,
    )
    if splits is not None:
        unknown = [s for s in splits if s not in manifest["splits"]]
        if unknown:
            raise DatasetError(
                f"{manifest_path}: split {unknown[0]!r} is not listed (field 'splits' has "
                f"{', '.join(manifest['splits'])})"
            )
    for split, info in manifest["splits"].items():
        if splits is not None and split not in splits:
            continue
        file = directory / f"{split}.safetensors"
        if not file.is_file():
            raise DatasetError(f"{file}: missing, but manifest lists split {split!r}")
        try:
            tensors = load_file(file)
        except Exception as err:  # safetensors raises its own error type for bad files
            raise DatasetError(
                f"{file}: not a readable safetensors file ({err}); is it truncated? "
                "Convert the dataset again"
            ) from None
        ids = [str(i) for i in info.get("dialogues", [])]
        for key in ("labels", "speakers", "offsets"):
            if key not in tensors:
                raise DatasetError(f"{file}: field {key!r} is missing")
        offsets, labels_t, speakers = tensors["offsets"], tensors["labels"], tensors["speakers"]
        if offsets.numel() != len(ids) + 1 or int(offsets[0]) != 0:
            raise DatasetError(
                f"{file}: field 'offsets' has {offsets.numel()} entries for {len(ids)} "
                "dialogues listed in the manifest (expected one more, starting at 0)"
            )
        lengths = offsets[1:] - offsets[:-1]
        if (lengths <= 0).any():
            bad = int(torch.nonzero(lengths <= 0)[0])
            raise DatasetError(f"{file}: dialogue {ids[bad]!r} is empty (field 'offsets')")
        n = int(offsets[-1])
        if labels_t.numel() != n:
            raise DatasetError(f"{file}: field 'labels' has {labels_t.numel()} rows, expected {n}")
        bad_label = (labels_t < -1) | (labels_t >= len(labels))
        if bad_label.any():
            row = int(torch.nonzero(bad_label)[0])
            raise DatasetError(
                f"{file}: {_dialogue_at(ids, offsets, row)}: field 'labels' "
                f"value {int(labels_t[row])} out of range for {len(labels)} classes"
            )
        if speakers.numel() != n:
            raise DatasetError(
                f"{file}: field 'speakers' has {speakers.numel()} rows, expected {n} "
                "(speakers missing)"
            )
        bad_speaker = (speakers < 0) | (speakers >= len(speaker_names))
        if bad_speaker.any():
            row = int(torch.nonzero(bad_speaker)[0])
            raise DatasetError(
                f"{file}: {_dialogue_at(ids, offsets, row)}: field 'speakers' "
                f"value {int(speakers[row])} is not in the manifest's {len(speaker_names)} "
                "speakers"
            )
        features = {}
        for m, dim in dims.items():
            key = f"features.{m}"
            if key not in tensors:
                raise DatasetError(f"{file}: field {key!r} is missing (modality {m})")
            x = tensors[key]
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
            features[m] = x.float()
        texts = None
        text_file = directory / f"{split}.texts.json"
        if text_file.is_file():
            texts = _read_texts(text_file, ids, lengths.tolist())
        dataset.splits[split] = SplitData(
            ids,
            offsets,
            features,
            labels_t.long(),
            speakers.long(),
            party_indices(speakers.long(), offsets),
            texts,
        )
    if modalities is not None:
        dataset = dataset.select_modalities(modalities)
    return dataset
