"""Dialogues as JSON lines: the reader that ``data_prep.jsonl`` (the converter),
``corect.predict`` and ``corect.stream`` share.

Each line::

    {"id": "d1", "split": "train",
     "utterances": [{"speaker": "Ann", "text": "Hi!", "label": "joy",
                     "features": {"audio": [0.1, 0.2], "visual": [0.3]}}, ...]}

:func:`read_jsonl` checks every field; :func:`dialogue_records` turns dialogues into
:class:`~corect.data.dataset.DialogueRecord` (``require_labels=False`` gives label -1 where
none is given).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from corect.common.errors import InputError
from corect.data.dataset import DialogueRecord, label_index
from corect.data.format import SPLITS

if TYPE_CHECKING:
    from corect.data.text_encoder import TextEncoder

FEATURE_KEYS = {
    "text": "t",
    "audio": "a",
    "visual": "v",
    "t": "t",
    "a": "a",
    "v": "v",
}
MODALITY_FIELD = {"t": "features.text", "a": "features.audio", "v": "features.visual"}


class JsonlError(InputError):
    """Bad JSONL input; the message names file, line, dialogue and field."""


@dataclass
class JsonlDialogue:
    """One parsed line. Labels are names (None = unlabeled); features are per utterance."""

    id: str
    split: str
    speakers: list[str]
    texts: list[str | None]
    labels: list[str | None]
    features: list[dict[str, np.ndarray]] = field(default_factory=list)
    source: str = ""  # "file, line N"

    def __len__(self) -> int:
        return len(self.speakers)


def _parse_features(value: Any, where: str, dims: dict[str, tuple[int, str]]) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise JsonlError(f"{where}: field 'features' must be an object, got {value!r:.60}")
    out: dict[str, np.ndarray] = {}
    for key, vector in value.items():
        letter = FEATURE_KEYS.get(key)
        if letter is None:
            raise JsonlError(
                f"{where}: field 'features.{key}' is not a modality; use text, audio or visual"
            )
        if letter in out:
            raise JsonlError(f"{where}: field 'features' gives modality {key!r} twice")
        name = f"features.{key}"
        if (
            not isinstance(vector, list)
            or not vector
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in vector)
        ):
            raise JsonlError(f"{where}: field {name!r} must be a non-empty list of numbers")
        array = _float32(vector, f"{where}: field {name!r}")
        seen = dims.setdefault(letter, (len(vector), where))
        if seen[0] != len(vector):
            raise JsonlError(
                f"{where}: field {name!r} has {len(vector)} numbers, but {seen[1]} has {seen[0]}"
            )
        out[letter] = array
    return out


def _float32(vector: list[int | float], where: str) -> np.ndarray:
    """`vector` as float32; NaN, inf and numbers beyond float32's range fail."""
    try:
        array = np.asarray(vector, dtype=np.float64)
    except OverflowError:  # an integer beyond float64
        array = np.array([float(x) if abs(x) < 2**1023 else np.inf for x in vector])
    with np.errstate(over="ignore", invalid="ignore"):
        array = array.astype(np.float32)
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise JsonlError(
            f"{where} has NaN or inf, or a number beyond float32's range (about ±3.4e38): "
            f"entry {int(bad[0])} is {str(vector[int(bad[0])])[:40]}"
        )
    return array


def _string(value: Any, where: str, name: str, required: bool) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        problem = "missing" if value is None else f"{value!r:.60} is not a non-empty string"
        raise JsonlError(f"{where}: field {name!r} {problem}")
    return value


def _parse_line(
    obj: Any,
    where: str,
    *,
    labels: dict[str, int] | None,
    require_labels: bool,
    default_split: str | None,
    dims: dict[str, tuple[int, str]],
) -> JsonlDialogue:
    source = where
    if not isinstance(obj, dict):
        raise JsonlError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    raw_id = obj.get("id")
    if isinstance(raw_id, int) and not isinstance(raw_id, bool):
        raw_id = str(raw_id)
    dialogue_id = _string(raw_id, where, "id", required=True)
    where = f"{where}, dialogue {dialogue_id!r}"
    split = obj.get("split", default_split)
    if split not in SPLITS:
        problem = "missing" if split is None else f"{split!r} is not one of {', '.join(SPLITS)}"
        raise JsonlError(f"{where}: field 'split' {problem}")
    utterances = obj.get("utterances")
    if not isinstance(utterances, list) or not utterances:
        raise JsonlError(f"{where}: field 'utterances' must be a non-empty list")
    dialogue = JsonlDialogue(str(dialogue_id), split, [], [], [], [], source)
    for k, utterance in enumerate(utterances):
        at = f"{where}, utterance {k}"
        if not isinstance(utterance, dict):
            raise JsonlError(f"{at}: expected an object, got {utterance!r:.60}")
        speaker = utterance.get("speaker")
        if isinstance(speaker, int) and not isinstance(speaker, bool):
            speaker = str(speaker)
        dialogue.speakers.append(_string(speaker, at, "speaker", required=True) or "")
        dialogue.texts.append(_string(utterance.get("text"), at, "text", required=False))
        label = _string(utterance.get("label"), at, "label", required=require_labels)
        if label is not None and labels is not None and label not in labels:
            raise JsonlError(f"{at}: field 'label' is {label!r}, not one of {', '.join(labels)}")
        dialogue.labels.append(label)
        dialogue.features.append(_parse_features(utterance.get("features"), at, dims))
    return dialogue


def read_jsonl(
    path: str | Path,
    label_names: Sequence[str] | None = None,
    require_labels: bool = True,
    default_split: str | None = None,
) -> list[JsonlDialogue]:
    """Parse a JSONL file of dialogues, checking every field.

    `label_names`: the allowed labels (None = any). `require_labels=False` lets utterances
    omit ``label`` (or give null): they become unlabeled. `default_split`: the split of
    lines that give none (None = the field is required).
    Raises :class:`JsonlError` naming the file, line, dialogue and field.
    """
    path = Path(path)
    if not path.is_file():
        raise JsonlError(f"{path}: file not found")
    labels = label_index(label_names) if label_names is not None else None
    dims: dict[str, tuple[int, str]] = {}
    dialogues: list[JsonlDialogue] = []
    seen: dict[str, str] = {}
    with path.open(encoding="utf-8", errors="strict") as handle:
        try:
            for number, line in enumerate(handle, start=1):
                where = f"{path}, line {number}"
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as err:
                    raise JsonlError(f"{where}: not valid JSON: {err}") from None
                dialogue = _parse_line(
                    obj,
                    where,
                    labels=labels,
                    require_labels=require_labels,
                    default_split=default_split,
                    dims=dims,
                )
                if dialogue.id in seen:
                    raise JsonlError(
                        f"{where}, dialogue {dialogue.id!r}: field 'id' repeats {seen[dialogue.id]}"
                    )
                seen[dialogue.id] = where
                dialogues.append(dialogue)
        except UnicodeDecodeError as err:
            raise JsonlError(f"{path}: not UTF-8 text: {err}") from None
    if not dialogues:
        raise JsonlError(f"{path}: no dialogues (the file is empty)")
    return dialogues


def collect_label_names(dialogues: Iterable[JsonlDialogue]) -> list[str]:
    """Every label used, sorted."""
    return sorted({label for d in dialogues for label in d.labels if label is not None})


def encodes_text(
    dialogues: Sequence[JsonlDialogue], modalities: str, encode_text: bool = False
) -> bool:
    """Whether the text features (modality t) come from the text encoder on ``text``:
    when asked (`encode_text`), or when the input gives no ``features.text`` at all (an
    input that gives some must give them for every utterance)."""
    return "t" in modalities and (
        encode_text or not any("t" in f for d in dialogues for f in d.features)
    )


def dialogue_records(
    dialogues: Sequence[JsonlDialogue],
    label_names: Sequence[str],
    modalities: str,
    text_encoder: TextEncoder | None = None,
    *,
    encode_text: bool = False,
) -> list[DialogueRecord]:
    """DialogueRecords with features for `modalities` (letters), labels as indices (-1 =
    unlabeled). Text features: the given ``features.text`` when the input has any (then
    every utterance must), else `text_encoder` on the texts; with `encode_text`, always
    `text_encoder` on the texts (given ``features.text`` are ignored)."""
    index = label_index(label_names)
    records = [_labelled_record(d, index, label_names) for d in dialogues]
    encode_text = encodes_text(dialogues, modalities, encode_text)
    for m in modalities:
        if not (m == "t" and encode_text):
            _add_given_features(dialogues, records, m)
    if encode_text:
        _add_encoded_texts(dialogues, records, text_encoder)
    return records


def _labelled_record(
    dialogue: JsonlDialogue, index: dict[str, int], label_names: Sequence[str]
) -> DialogueRecord:
    """The record of `dialogue` without features: labels as indices, texts when every
    utterance has one."""
    labels = []
    for k, label in enumerate(dialogue.labels):
        if label is not None and label not in index:
            raise JsonlError(
                f"{dialogue.source}, dialogue {dialogue.id!r}, utterance {k}: field 'label' "
                f"is {label!r}, not one of {', '.join(label_names)}"
            )
        labels.append(index[label] if label is not None else -1)
    record = DialogueRecord(dialogue.id, list(dialogue.speakers), labels, {}, None)
    if all(t is not None for t in dialogue.texts):
        record.texts = [t or "" for t in dialogue.texts]
    return record


def _add_given_features(
    dialogues: Sequence[JsonlDialogue], records: Sequence[DialogueRecord], modality: str
) -> None:
    """Set the features of `modality` of every record from the input, which must give
    them for every utterance."""
    for d, record in zip(dialogues, records, strict=True):
        for k, features in enumerate(d.features):
            if modality not in features:
                hint = (
                    "; give it for every utterance, or for none (then it is computed from 'text')"
                    if modality == "t"
                    else f"; modality {modality} was requested"
                )
                raise JsonlError(
                    f"{d.source}, dialogue {d.id!r}, utterance {k}: field "
                    f"{MODALITY_FIELD[modality]!r} is missing{hint}"
                )
        record.features[modality] = np.stack([f[modality] for f in d.features])


def _add_encoded_texts(
    dialogues: Sequence[JsonlDialogue],
    records: Sequence[DialogueRecord],
    text_encoder: TextEncoder | None,
) -> None:
    """Set the text features of every record from `text_encoder` on its texts (with the
    speakers, for a model fine-tuned with past context); every utterance needs a text."""
    for d in dialogues:
        for k, text in enumerate(d.texts):
            if text is None:
                raise JsonlError(
                    f"{d.source}, dialogue {d.id!r}, utterance {k}: field 'text' is "
                    "missing, needed for text features (modality t)"
                )
    if text_encoder is None:
        raise ValueError("dialogue_records: modality t needs a text_encoder")
    vectors = text_encoder.encode_dialogues(
        [[t or "" for t in d.texts] for d in dialogues], [d.speakers for d in dialogues]
    )
    for record, array in zip(records, vectors, strict=True):
        record.features["t"] = array
