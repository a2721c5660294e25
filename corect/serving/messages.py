"""The utterance messages of the live service, checked field by field.

A message is one JSON object per utterance::

    {"speaker": "Ann", "text": "Hi!", "features": {"audio": [...], "visual": [...]}}

``speaker`` (a non-empty string) is required; ``text`` is needed when the run reads text
and ``features.text`` (its vector) is not given; ``features`` holds a vector (a list of
finite numbers of the run's size) for each of the run's other modalities, named by
letter (``t``, ``a``, ``v``) or name (``text``, ``audio``, ``visual``). Anything else (bad
JSON, a missing, unknown or mistyped field, a wrong length, NaN or infinity, a message
over the size limit) raises :class:`MessageError`, whose ``field`` names the field at
fault (``"features.audio"``) and whose ``reply()`` is the error message the client gets.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from corect.common.errors import InputError
from corect.inference.recognizer import FEATURE_KEYS

NAMES = {"t": "text", "a": "audio", "v": "visual"}
FIELDS = ("speaker", "text", "features")
MAX_SPEAKER_CHARS = 200


class MessageError(InputError):
    """A message the service cannot take; `field` names the part at fault (``message``:
    the message as a whole) and `status` is the HTTP status of the reply."""

    def __init__(self, message: str, field: str = "message", status: int = 400) -> None:
        super().__init__(message)
        self.field = field
        self.status = status

    def reply(self) -> dict[str, Any]:
        """The error reply: ``{"error": ..., "field": ...}``."""
        return {"error": str(self), "field": self.field}


@dataclass
class Utterance:
    """A checked message: the speaker, the text (or None), and a float32 vector per
    modality given (letter -> ``[D]``)."""

    speaker: str
    text: str | None
    features: dict[str, np.ndarray] = field(default_factory=dict)


def parse_message(raw: str | bytes, dims: Mapping[str, int], max_bytes: int) -> Utterance:
    """The utterance of a raw message for a run with modality sizes `dims`."""
    size = len(raw.encode("utf-8") if isinstance(raw, str) else raw)
    if size > max_bytes:
        raise MessageError(
            f"the message has {size} bytes, more than the limit of {max_bytes}", status=413
        )
    try:  # NaN and Infinity parse, to be refused by the vector they are in
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise MessageError(f"not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise MessageError(f"expected a JSON object, got {type(value).__name__}")
    return check_message(value, dims)


def check_message(value: Mapping[str, Any], dims: Mapping[str, int]) -> Utterance:
    """The utterance of a decoded message (see the module docstring for its fields)."""
    for key in value:
        if key not in FIELDS:
            raise MessageError(
                f"unknown field {key!r}; a message has {', '.join(FIELDS)}", field=str(key)
            )
    speaker = value.get("speaker")
    if not isinstance(speaker, str) or not speaker.strip():
        what = "missing" if speaker is None else f"a {type(speaker).__name__}"
        raise MessageError(f"speaker: a non-empty string is required, got {what}", "speaker")
    if len(speaker) > MAX_SPEAKER_CHARS:
        raise MessageError(f"speaker: at most {MAX_SPEAKER_CHARS} characters", "speaker")
    text = value.get("text")
    if text is not None and not isinstance(text, str):
        raise MessageError(f"text: a string is required, got {type(text).__name__}", "text")
    features = check_features(value.get("features"), dims)
    if "t" in dims and "t" not in features and text is None:
        raise MessageError(
            "text: the run reads text, so give the utterance's text (or its vector as "
            "features.text)",
            "text",
        )
    for m, dim in dims.items():
        if m != "t" and m not in features:
            raise MessageError(
                f"features.{NAMES[m]}: missing; the run needs {NAMES[m]} features "
                f"({dim} numbers) for every utterance",
                f"features.{NAMES[m]}",
            )
    return Utterance(speaker, text, features)


def check_features(given: Any, dims: Mapping[str, int]) -> dict[str, np.ndarray]:
    """Letter -> float32 vector of each modality in `given` (a JSON object of lists)."""
    if given is None:
        return {}
    if not isinstance(given, dict):
        raise MessageError(
            f"features: a JSON object of vectors is required, got {type(given).__name__}",
            "features",
        )
    out: dict[str, np.ndarray] = {}
    for key, vector in given.items():
        name = f"features.{key}"
        m = FEATURE_KEYS.get(key)
        if m is None:
            raise MessageError(f"{name}: unknown modality; use text, audio or visual", name)
        if m not in dims:
            uses = ", ".join(NAMES[k] for k in dims)
            raise MessageError(f"{name}: the run does not read {NAMES[m]} (it reads {uses})", name)
        if m in out:
            raise MessageError(f"{name}: {NAMES[m]} is given twice", name)
        out[m] = check_vector(vector, dims[m], name)
    return out


def check_vector(vector: Any, dim: int, name: str) -> np.ndarray:
    """A list of `dim` finite numbers as a float32 array, or a :class:`MessageError`."""
    if not isinstance(vector, list):
        raise MessageError(f"{name}: a list of numbers is required", name)
    if len(vector) != dim:
        raise MessageError(f"{name}: {len(vector)} numbers, the run expects {dim}", name)
    for k, x in enumerate(vector):
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            raise MessageError(f"{name}[{k}]: a number is required, got {x!r:.40}", name)
        if not math.isfinite(x):
            raise MessageError(f"{name}[{k}]: {x} is not finite", name)
    with np.errstate(over="ignore"):  # refused below, with the index
        array = np.asarray(vector, dtype=np.float32)
    if not np.isfinite(array).all():  # finite doubles beyond float32's range
        k = int(np.flatnonzero(~np.isfinite(array))[0])
        raise MessageError(f"{name}[{k}]: {vector[k]} is out of float32 range", name)
    return array
