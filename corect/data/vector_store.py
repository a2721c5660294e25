"""An on-disk cache of vectors keyed by sha256 digests (text features, audio features),
and the digest of a file's bytes that such keys (and model identities) are made of."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from corect.common.errors import InputError
from corect.common.files import atomic_target


def hash_file(path: Path, digest: hashlib._Hash | None = None) -> hashlib._Hash:
    """`digest` (a new sha256 when None) updated with the bytes of `path`, read in 1 MiB
    blocks."""
    digest = hashlib.sha256() if digest is None else digest
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest


class VectorCache:
    """Vectors keyed by sha256 hex digests, stored in one safetensors file.

    ``keys`` [N, 32] uint8 and ``vectors`` [N, D] float32; saved atomically, merging what
    another process may have written meanwhile. A damaged file is treated as empty.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.vectors: dict[str, np.ndarray] = {}
        self._dirty = False
        self._merge_from_disk()

    def _merge_from_disk(self) -> None:
        if not self.path.is_file():
            return
        try:
            tensors = load_file(self.path)
            keys, vectors = tensors["keys"].numpy(), tensors["vectors"].numpy()
        except Exception:  # a damaged cache is only a cache
            return
        for key_bytes, vector in zip(keys, vectors, strict=True):
            self.vectors.setdefault(key_bytes.tobytes().hex(), vector)

    def __len__(self) -> int:
        return len(self.vectors)

    def get(self, key: str) -> np.ndarray | None:
        return self.vectors.get(key)

    def update(self, items: Mapping[str, np.ndarray]) -> None:
        self.vectors.update({k: np.asarray(v, dtype=np.float32) for k, v in items.items()})
        self._dirty = self._dirty or bool(items)

    def save(self) -> None:
        if not self._dirty:
            return
        self._merge_from_disk()
        dims = {v.shape for v in self.vectors.values()}
        if len(dims) != 1:  # another writer used the same file for other vectors
            raise InputError(
                f"{self.path}: cache holds vectors of shapes {sorted(dims)}; delete the file"
            )
        keys = sorted(self.vectors)
        key_array = np.frombuffer(bytes.fromhex("".join(keys)), dtype=np.uint8).reshape(-1, 32)
        vectors = np.stack([self.vectors[k] for k in keys]).astype(np.float32)
        with atomic_target(self.path) as tmp:
            save_file(
                {"keys": torch.from_numpy(key_array.copy()), "vectors": torch.from_numpy(vectors)},
                str(tmp),
            )
        self._dirty = False
