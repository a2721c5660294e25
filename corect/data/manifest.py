"""A dataset directory's manifest (``manifest.json``): reading it with every field
checked, the rule that a dialogue belongs to one split only, and which folders a dataset
writer may replace (only our own datasets)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from corect.common.errors import InputError
from corect.common.files import read_json

MANIFEST = "manifest.json"
# The files a dataset directory holds; a folder with anything else is not replaced.
DATASET_FILE = re.compile(r"^(manifest\.json|[^/]+\.safetensors|[^/]+\.texts\.json)$")
LEAK_HINT = (
    "a dialogue may be in one split only (in train and test it would leak test data into "
    "training). If these are different dialogues that share an id, give them distinct ids "
    "(MELD: convert again with data_prep.meld, whose ids now name their split)"
)


class DatasetError(InputError):
    """A dataset file is missing or inconsistent; the message names file, dialogue, field."""


def check_unique_dialogues(splits: Iterable[tuple[str, Iterable[str]]], where: str) -> None:
    """Raise :class:`DatasetError` naming the first dialogue id listed twice, and its
    split(s)."""
    seen: dict[str, str] = {}
    for split, ids in splits:
        for dialogue in ids:
            if dialogue in seen:
                place = (
                    f"twice in split {split!r}"
                    if seen[dialogue] == split
                    else f"in splits {seen[dialogue]!r} and {split!r}"
                )
                raise DatasetError(f"{where}: dialogue {dialogue!r} is listed {place}; {LEAK_HINT}")
            seen[dialogue] = split


def _field_error(path: Path, key: str, expected: str, value: Any) -> DatasetError:
    return DatasetError(f"{path}: field {key!r} must be {expected}, got {value!r:.80}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of a dataset directory, with every field's type checked and dialogue
    ids unique across splits; raises :class:`DatasetError` naming the file and field."""
    path = directory / MANIFEST
    if not path.is_file():
        raise DatasetError(f"{path}: not found; is {directory} a corect dataset?")
    manifest = read_json(path, DatasetError)
    if not isinstance(manifest, dict):
        raise DatasetError(f"{path}: expected a JSON object, got {type(manifest).__name__}")
    for key in ("name", "task", "labels", "modalities", "speakers", "splits"):
        if key not in manifest:
            raise DatasetError(f"{path}: field {key!r} is missing")
    for key in ("name", "task"):
        if not isinstance(manifest[key], str):
            raise _field_error(path, key, "a string", manifest[key])
    labels = manifest["labels"]
    if (
        not isinstance(labels, list)
        or not labels
        or not all(isinstance(x, str) for x in labels)
        or len(set(labels)) != len(labels)
    ):
        raise _field_error(path, "labels", "a list of distinct names", labels)
    dims = manifest["modalities"]
    if not isinstance(dims, dict) or not all(_is_int(d) and d >= 1 for d in dims.values()):
        raise _field_error(path, "modalities", 'an object like {"t": 384}', dims)
    speakers = manifest["speakers"]
    if not isinstance(speakers, list) or not all(isinstance(s, str) for s in speakers):
        raise _field_error(path, "speakers", "a list of names", speakers)
    splits = manifest["splits"]
    if not isinstance(splits, dict) or not all(
        isinstance(info, dict)
        and isinstance(info.get("dialogues", []), list)
        and all(isinstance(i, (str, int)) for i in info.get("dialogues", []))
        for info in splits.values()
    ):
        raise _field_error(path, "splits", 'an object like {"train": {"dialogues": [...]}}', splits)
    check_unique_dialogues(
        ((split, [str(i) for i in info.get("dialogues", [])]) for split, info in splits.items()),
        f"{path}: field 'splits'",
    )
    return manifest


def dataset_refusal(path: Path) -> str | None:
    """Why a dataset writer must not replace folder `path`, or None when it may: the
    folder is empty, or a corect dataset holding only dataset files."""
    entries = sorted(path.iterdir())
    if not entries:
        return None
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = None
    if not isinstance(manifest, dict) or "format_version" not in manifest:
        return "is not a corect dataset (it has no readable manifest.json of ours)"
    for entry in entries:
        if not (entry.is_file() and DATASET_FILE.match(entry.name)):
            return f"holds {entry.name!r}, which is not part of a corect dataset"
    return None
