"""Utterance-level acoustic features: openSMILE functionals of wav/flac files.

Needs the ``opensmile`` package (``pip install -e .[audio]``). Two feature sets:
eGeMAPSv02 (88 functionals, the default) and ComParE_2016 (6,373). Channels are mixed
down to mono. Results are cached by (feature set, openSMILE version, sha256 of the file's
bytes) in ``<cache_dir>/<feature set>-<version>.safetensors``, so a rerun reads no audio
twice. A clip too short for some functionals gets NaN from openSMILE; those values are
set to 0 and the file is named in a warning.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from corect.data.vector_store import VectorCache, hash_file
from data_prep.options import ConversionError

FEATURE_SETS = {"eGeMAPSv02": 88, "ComParE_2016": 6373}
DEFAULT_FEATURE_SET = "eGeMAPSv02"
DEFAULT_CACHE_DIR = Path("runs/.cache/audio_features")
AUDIO_SUFFIXES = (".wav", ".flac")


class AudioFeatureError(ConversionError):
    """openSMILE is missing or an audio file cannot be read."""


def _import_opensmile() -> Any:
    try:
        import opensmile
    except ImportError as err:
        raise AudioFeatureError(
            "audio features need the 'opensmile' package, which is not installed: run  "
            "pip install -e .[audio]"
        ) from err
    return opensmile


def file_digest(path: Path) -> str:
    """The hex sha256 of the file's bytes."""
    return hash_file(path).hexdigest()


class AudioFeatureExtractor:
    """openSMILE functionals of audio files, one vector per file."""

    def __init__(
        self,
        feature_set: str = DEFAULT_FEATURE_SET,
        *,
        cache_dir: str | Path | None = DEFAULT_CACHE_DIR,
        progress: bool = True,
    ) -> None:
        if feature_set not in FEATURE_SETS:
            raise AudioFeatureError(
                f"feature set {feature_set!r}: choose one of {', '.join(FEATURE_SETS)}"
            )
        opensmile = _import_opensmile()
        self.feature_set = feature_set
        self.version = str(getattr(opensmile, "__version__", "unknown"))
        self.smile = opensmile.Smile(
            feature_set=getattr(opensmile.FeatureSet, feature_set),
            feature_level=opensmile.FeatureLevel.Functionals,
            mixdown=True,
        )
        self.progress = progress
        self.cache = (
            VectorCache(Path(cache_dir) / f"{feature_set}-{self.version}.safetensors")
            if cache_dir is not None
            else None
        )
        self.files_processed = 0  # files openSMILE actually ran on (cache misses)

    @property
    def dim(self) -> int:
        return FEATURE_SETS[self.feature_set]

    @property
    def description(self) -> dict[str, object]:
        return {
            "extractor": "openSMILE functionals",
            "feature_set": self.feature_set,
            "opensmile": self.version,
            "dim": self.dim,
        }

    def _run(self, path: Path) -> np.ndarray:
        try:
            frame = self.smile.process_file(str(path))
        except Exception as err:  # audiofile/soundfile raise many kinds
            raise AudioFeatureError(f"{path}: openSMILE cannot process it: {err}") from err
        vector = np.asarray(frame.to_numpy(), dtype=np.float32).reshape(-1)
        if vector.shape != (self.dim,):
            raise AudioFeatureError(
                f"{path}: openSMILE returned {vector.shape} values, expected {self.dim}"
            )
        return vector

    def extract(self, paths: Sequence[str | Path]) -> np.ndarray:
        """Features [len(paths), dim] (float32)."""
        paths = [Path(p) for p in paths]
        for path in paths:
            if not path.is_file():
                raise AudioFeatureError(f"{path}: audio file not found")
        keys = [f"{self.feature_set}:{self.version}:{file_digest(p)}" for p in paths]
        keys = [hashlib.sha256(k.encode()).hexdigest() for k in keys]
        out = np.zeros((len(paths), self.dim), dtype=np.float32)
        todo = []
        for i, key in enumerate(keys):
            cached = self.cache.get(key) if self.cache is not None else None
            if cached is None:
                todo.append(i)
            else:
                out[i] = cached
        short: list[Path] = []
        new: dict[str, np.ndarray] = {}
        for i in tqdm(todo, desc="openSMILE", unit="file", disable=not self.progress):
            vector = self._run(paths[i])
            if not np.isfinite(vector).all():
                short.append(paths[i])
                vector = np.nan_to_num(vector, nan=0.0, posinf=0.0, neginf=0.0)
            out[i] = new[keys[i]] = vector
            self.files_processed += 1
        if short:
            names = ", ".join(str(p) for p in short[:5]) + (" ..." if len(short) > 5 else "")
            print(
                f"warning: {len(short)} audio file(s) too short for some functionals "
                f"(NaN set to 0): {names}",
                file=sys.stderr,
            )
        if self.cache is not None and new:
            self.cache.update(new)
            self.cache.save()
        return out


def find_audio_file(directory: Path, stem: str) -> Path | None:
    """``directory/stem.wav`` or ``.flac``, whichever exists (wav first)."""
    for suffix in AUDIO_SUFFIXES:
        path = directory / f"{stem}{suffix}"
        if path.is_file():
            return path
    return None
