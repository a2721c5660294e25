"""The dataset format: round trip, party indices, and clear errors on bad files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from corect.data.dataset import DialogueRecord, party_indices
from corect.data.format import DatasetError, load_dataset, write_dataset


def records(rng, n_dialogues=3, dims=None, prefix="d"):
    dims = dims or {"t": 4, "a": 3}
    out = []
    for d in range(n_dialogues):
        length = 2 + d
        out.append(
            DialogueRecord(
                id=f"{prefix}{d}",
                speakers=[["Ann", "Bob", "Cy"][i % (2 + d % 2)] for i in range(length)],
                labels=[int(x) for x in rng.integers(0, 3, length)],
                features={
                    m: rng.standard_normal((length, k)).astype(np.float32) for m, k in dims.items()
                },
                texts=[f"utterance {i}" for i in range(length)],
            )
        )
    return out


def write_small(path, rng):
    splits = {s: records(rng, prefix=s) for s in ("train", "dev", "test")}
    write_dataset(
        path,
        name="toy",
        task="emotion",
        labels=["a", "b", "c"],
        dims={"t": 4, "a": 3},
        splits=splits,
    )
    return splits


def test_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    splits = write_small(tmp_path / "ds", rng)
    ds = load_dataset(tmp_path / "ds")
    assert ds.labels == ["a", "b", "c"] and ds.dims == {"t": 4, "a": 3}
    train = ds.splits["train"]
    assert train.dialogue_ids == ["train0", "train1", "train2"]
    for d, rec in enumerate(splits["train"]):
        s, e = int(train.offsets[d]), int(train.offsets[d + 1])
        np.testing.assert_array_equal(train.features["t"][s:e].numpy(), rec.features["t"])
        assert train.labels[s:e].tolist() == rec.labels
        assert [ds.speaker_names[i] for i in train.speakers[s:e]] == rec.speakers
        assert train.texts[d] == rec.texts
    assert ds.select_modalities("a").dims == {"a": 3}


def test_party_indices_by_first_appearance():
    speakers = torch.tensor([5, 2, 5, 7, 2, 9, 9, 1])
    offsets = torch.tensor([0, 5, 8])
    assert party_indices(speakers, offsets).tolist() == [0, 1, 0, 2, 1, 0, 0, 1]


def test_rewrite_is_atomic_on_error(tmp_path):
    rng = np.random.default_rng(1)
    write_small(tmp_path / "ds", rng)
    bad = records(rng)
    bad[1].features["t"] = bad[1].features["t"][:, :2]
    with pytest.raises(DatasetError, match=r"dialogue 'd1'.*features.t.*shape"):
        write_dataset(
            tmp_path / "ds",
            name="toy",
            task="e",
            labels=["a", "b", "c"],
            dims={"t": 4, "a": 3},
            splits={"train": bad},
        )
    assert load_dataset(tmp_path / "ds").name == "toy"  # the old dataset is intact
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # no temp dir left


@pytest.mark.parametrize(
    ("field", "change", "message"),
    [
        ("features.t", lambda x: x.fill_(float("nan")), r"dialogue 'test0'.*features.t.*NaN"),
        ("labels", lambda x: x.fill_(7), r"dialogue 'test0'.*'labels'.*out of range"),
        ("features.a", None, r"features.a.*missing"),
        ("speakers", None, r"'speakers' is missing"),
        ("offsets", lambda x: x.copy_(torch.tensor([0, 2, 2, 9])), r"dialogue 'test1' is empty"),
    ],
)
def test_bad_split_file_names_file_dialogue_and_field(tmp_path, field, change, message):
    rng = np.random.default_rng(2)
    write_small(tmp_path / "ds", rng)
    file = tmp_path / "ds" / "test.safetensors"
    tensors = load_file(file)
    if change is None:
        del tensors[field]
    else:
        change(tensors[field])
    save_file(tensors, file)
    with pytest.raises(DatasetError, match=message) as info:
        load_dataset(tmp_path / "ds")
    assert "test.safetensors" in str(info.value)


def test_bad_manifest(tmp_path):
    rng = np.random.default_rng(3)
    write_small(tmp_path / "ds", rng)
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    manifest["modalities"]["t"] = 5
    (tmp_path / "ds" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match=r"features.t.*manifest says"):
        load_dataset(tmp_path / "ds")
    manifest["modalities"]["t"] = 4
    (tmp_path / "ds" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match="modality v requested"):
        load_dataset(tmp_path / "ds", "tv")


def test_empty_dialogue_rejected_on_write(tmp_path):
    rec = DialogueRecord("x", [], [], {"t": np.zeros((0, 4), np.float32)})
    with pytest.raises(DatasetError, match=r"dialogue 'x'.*empty"):
        write_dataset(
            tmp_path / "ds",
            name="n",
            task="t",
            labels=["a"],
            dims={"t": 4},
            splits={"train": [rec]},
        )


def test_written_files_are_not_private(tmp_path):
    """tempfile makes 0600/0700 entries; what we write gets the usual umask-based modes."""
    import os

    from corect.common.files import write_atomic

    mask = os.umask(0o022)
    try:
        write_atomic(tmp_path / "r" / "results.md", "x")
        assert (tmp_path / "r" / "results.md").stat().st_mode & 0o777 == 0o644
        write_small(tmp_path / "ds", np.random.default_rng(0))
        assert (tmp_path / "ds").stat().st_mode & 0o777 == 0o755
        for path in (tmp_path / "ds").iterdir():
            assert path.stat().st_mode & 0o777 == 0o644, path
    finally:
        os.umask(mask)


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    from corect.common.files import atomic_target, write_atomic

    target = tmp_path / "checkpoint.pt"
    write_atomic(target, "old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_target(target) as tmp:
            tmp.write_text("half of the new")
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
