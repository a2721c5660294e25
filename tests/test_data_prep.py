"""Converters: small fixtures in each exact public format, checked value by value."""

from __future__ import annotations

import csv
import io
import json
import pickle
import sys
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from corect.data.dataset import Dataset
from corect.data.format import load_dataset
from corect.data.jsonl import JsonlError, dialogue_records, read_jsonl
from corect.data.text_encoder import TextEncoder
from data_prep import iemocap, jsonl, meld, mosei
from data_prep.options import ConversionError, parse_modalities
from data_prep.output import dev_from_train, summary_text


@pytest.fixture(scope="session")
def text_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One text-feature cache for the whole session: each text runs the model once."""
    return tmp_path_factory.mktemp("text_cache")


@pytest.fixture(scope="session")
def encoder(text_cache: Path) -> TextEncoder:
    return TextEncoder(cache_dir=text_cache, progress=False)


def text_args(text_cache: Path) -> list[str]:
    return ["--text-cache-dir", str(text_cache), "--quiet"]


def dialogue(dataset: Dataset, split: str, dialogue_id: str) -> dict[str, Any]:
    """One dialogue of a loaded dataset, with names instead of indices."""
    data = dataset.splits[split]
    d = data.dialogue_ids.index(dialogue_id)
    rows = slice(int(data.offsets[d]), int(data.offsets[d + 1]))
    return {
        "speakers": [dataset.speaker_names[i] for i in data.speakers[rows].tolist()],
        "labels": [dataset.labels[i] if i >= 0 else None for i in data.labels[rows].tolist()],
        "features": {m: x[rows].numpy() for m, x in data.features.items()},
        "texts": data.texts[d] if data.texts is not None else None,
    }


# --------------------------------------------------------------------------- 9-tuple releases

DIMS = {"t": 6, "a": 4, "v": 3}


def make_release(
    path: Path, *, num_labels: int, label_shift: int = 0, ids_as_set: bool = False
) -> dict[str, Any]:
    """A release pickle like the public IEMOCAP/MOSEI ones (protocol 2, numpy arrays)."""
    rng = np.random.default_rng(0)
    # File order on purpose differs from sorted order: dev must follow file order.
    train_ids = [f"Ses0{i}_train" for i in (9, 3, 7, 1, 5, 0, 2, 4, 6, 8)]
    test_ids = ["Ses05_test_b", "Ses05_test_a"]
    speakers, labels, sentences = {}, {}, {}
    features: dict[str, dict[str, Any]] = {"t": {}, "a": {}, "v": {}}
    for k, vid in enumerate(train_ids + test_ids):
        length = 2 + k % 3
        speakers[vid] = ["M" if (i + k) % 2 else "F" for i in range(length)]
        labels[vid] = [int((i + k) % num_labels) - label_shift for i in range(length)]
        sentences[vid] = [f"sentence {i} of {vid}" for i in range(length)]
        for m, dim in DIMS.items():
            array = rng.normal(size=(length, dim)).astype(np.float32)
            # Some releases store a list of per-utterance vectors, others one array.
            features[m][vid] = list(array) if m == "a" else array
    video_ids = {vid: [f"{vid}_{i}" for i in range(len(s))] for vid, s in speakers.items()}
    tuple9 = (
        video_ids,
        speakers,
        labels,
        features["t"],
        features["a"],
        features["v"],
        sentences,
        set(train_ids) if ids_as_set else train_ids,
        set(test_ids) if ids_as_set else test_ids,
    )
    path.write_bytes(pickle.dumps(tuple9, protocol=2))
    return {
        "train_ids": train_ids,
        "test_ids": test_ids,
        "speakers": speakers,
        "labels": labels,
        "sentences": sentences,
        "features": features,
    }


def check_release(dataset: Dataset, release: dict[str, Any], labels: list[str], mods: str) -> None:
    train, dev = dev_from_train(release["train_ids"])
    assert dev == [release["train_ids"][0]]  # the first 10%, in file order
    expected_ids = {"train": train, "dev": dev, "test": release["test_ids"]}
    assert {s: d.dialogue_ids for s, d in dataset.splits.items()} == expected_ids
    assert dataset.labels == labels
    assert dataset.dims == {m: DIMS[m] for m in mods}
    for split, ids in expected_ids.items():
        for vid in ids:
            got = dialogue(dataset, split, vid)
            assert got["speakers"] == release["speakers"][vid]
            assert got["labels"] == [labels[i] for i in release["labels"][vid]]
            assert got["texts"] == release["sentences"][vid]
            for m in mods:
                np.testing.assert_array_equal(
                    got["features"][m], np.asarray(release["features"][m][vid])
                )


def test_iemocap_6way(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    release = make_release(tmp_path / "iemocap.pkl", num_labels=6)
    out = iemocap.convert(
        [str(tmp_path / "iemocap.pkl"), "--task", "6way", "--out", str(tmp_path / "o")]
    )
    labels = ["hap", "sad", "neu", "ang", "exc", "fru"]
    check_release(load_dataset(out), release, labels, "tav")
    printed = capsys.readouterr().out
    assert "dialogues" in printed and "fru" in printed and "a (audio) 4" in printed


def test_iemocap_4way_and_modalities(tmp_path: Path) -> None:
    release = make_release(tmp_path / "r.pkl", num_labels=4)
    out = iemocap.convert(
        [
            str(tmp_path / "r.pkl"),
            "--task",
            "4way",
            "--modalities",
            "t,v",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    check_release(load_dataset(out), release, ["hap", "sad", "neu", "ang"], "tv")


def test_iemocap_6way_release_with_4way_task_fails_clearly(tmp_path: Path) -> None:
    make_release(tmp_path / "r.pkl", num_labels=6)
    with pytest.raises(ConversionError, match=r"outside 0\.\.3.*--task 6way"):
        iemocap.convert([str(tmp_path / "r.pkl"), "--task", "4way", "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_iemocap_text_from_sentences(
    tmp_path: Path, text_cache: Path, encoder: TextEncoder
) -> None:
    release = make_release(tmp_path / "r.pkl", num_labels=6)
    out = iemocap.convert(
        [
            str(tmp_path / "r.pkl"),
            "--task",
            "6way",
            "--text-from-sentences",
            "--out",
            str(tmp_path / "o"),
        ]
        + text_args(text_cache)
    )
    dataset = load_dataset(out)
    assert dataset.dims == {"t": 384, "a": 4, "v": 3}
    vid = release["test_ids"][0]
    got = dialogue(dataset, "test", vid)
    np.testing.assert_allclose(
        got["features"]["t"], encoder.encode(release["sentences"][vid]), atol=1e-6
    )
    np.testing.assert_array_equal(got["features"]["a"], np.asarray(release["features"]["a"][vid]))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["text_features"]["dim"] == 384


@pytest.mark.parametrize("task,num_labels", [("2class", 2), ("7class", 7)])
def test_mosei(tmp_path: Path, task: str, num_labels: int) -> None:
    release = make_release(tmp_path / "m.pkl", num_labels=num_labels)
    out = mosei.convert([str(tmp_path / "m.pkl"), "--task", task, "--out", str(tmp_path / "o")])
    check_release(load_dataset(out), release, mosei.TASK_LABELS[task], "tav")


def test_mosei_7class_signed_labels_need_offset(tmp_path: Path) -> None:
    release = make_release(tmp_path / "m.pkl", num_labels=7, label_shift=3)  # -3..3
    with pytest.raises(ConversionError, match="--label-offset 3"):
        mosei.convert([str(tmp_path / "m.pkl"), "--task", "7class", "--out", str(tmp_path / "o")])
    out = mosei.convert(
        [
            str(tmp_path / "m.pkl"),
            "--task",
            "7class",
            "--label-offset",
            "3",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    dataset = load_dataset(out)
    vid = release["test_ids"][1]
    names = mosei.TASK_LABELS["7class"]
    assert dialogue(dataset, "test", vid)["labels"] == [
        names[x + 3] for x in release["labels"][vid]
    ]


def test_release_with_id_sets_is_sorted(tmp_path: Path) -> None:
    release = make_release(tmp_path / "r.pkl", num_labels=6, ids_as_set=True)
    dataset = load_dataset(
        iemocap.convert([str(tmp_path / "r.pkl"), "--task", "6way", "--out", str(tmp_path / "o")])
    )
    ordered = sorted(release["train_ids"])
    assert dataset.splits["dev"].dialogue_ids == ordered[:1]
    assert dataset.splits["train"].dialogue_ids == ordered[1:]


class NotAllowed:
    """Anything but plain data must be refused by the release unpickler."""


def test_release_refuses_foreign_objects(tmp_path: Path) -> None:
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps((NotAllowed(),) * 9))
    with pytest.raises(ConversionError, match="refusing to unpickle"):
        iemocap.convert(
            [str(tmp_path / "evil.pkl"), "--task", "6way", "--out", str(tmp_path / "o")]
        )
    (tmp_path / "short.pkl").write_bytes(pickle.dumps(({}, {})))
    with pytest.raises(ConversionError, match="expected the 9-tuple"):
        iemocap.convert(
            [str(tmp_path / "short.pkl"), "--task", "6way", "--out", str(tmp_path / "o")]
        )


def test_release_length_mismatch_names_dialogue(tmp_path: Path) -> None:
    make_release(tmp_path / "r.pkl", num_labels=6)
    data = list(pickle.loads((tmp_path / "r.pkl").read_bytes()))
    data[5]["Ses05_test_a"] = data[5]["Ses05_test_a"][:-1]  # visual one row short
    (tmp_path / "r.pkl").write_bytes(pickle.dumps(tuple(data)))
    with pytest.raises(ConversionError, match=r"dialogue 'Ses05_test_a': field 'visual' has shape"):
        iemocap.convert([str(tmp_path / "r.pkl"), "--task", "6way", "--out", str(tmp_path / "o")])


def test_main_reports_errors_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert iemocap.main([str(tmp_path / "missing.pkl"), "--task", "6way"]) == 2
    assert "missing.pkl: file not found" in capsys.readouterr().err


# --------------------------------------------------------------------------- MELD

MELD_HEADER = [
    "Sr No.",
    "Utterance",
    "Speaker",
    "Emotion",
    "Sentiment",
    "Dialogue_ID",
    "Utterance_ID",
    "Season",
    "Episode",
    "StartTime",
    "EndTime",
]
INVALID_BYTE = "<<0x92>>"  # replaced by a raw, non-UTF-8 byte when the file is written
MELD_ROWS = {
    "train": [
        # Dialogue 0: rows out of order, Utterance_ID 2 missing, three speakers.
        ("I don’t know.", "Chandler", "neutral", "neutral", 0, 0),
        (f"Hey{INVALID_BYTE}s fine", "Monica", "anger", "negative", 0, 3),
        ("donâ€™t worry, “really”", "The Interviewer", "joy", "positive", 0, 1),
        ('He said "hi", then left', "Chandler", "sadness", "negative", 2, 1),
        ("How you doin’?", "Joey", "surprise", "positive", 2, 0),
    ],
    "dev": [("Oh.", "Rachel", "fear", "negative", 0, 0)],
    "test": [
        ("No!", "Ross", "disgust", "negative", 5, 0),
        ("Yes.", "Phoebe", "neutral", "neutral", 5, 1),
    ],
}
# Expected order after conversion: split -> dialogue -> [(Utterance_ID, row index)].
MELD_ORDER = {
    "train": {"dia0": [0, 2, 1], "dia2": [4, 3]},
    "dev": {"dia0": [0]},
    "test": {"dia5": [0, 1]},
}


def write_meld(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for split, rows in MELD_ROWS.items():
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(MELD_HEADER)
        for n, (text, speaker, emotion, sentiment, d, u) in enumerate(rows, start=1):
            writer.writerow(
                [n, text, speaker, emotion, sentiment, d, u, 8, 21, "00:16:16,059", "00:16:21,731"]
            )
        raw = buffer.getvalue().encode("utf-8").replace(INVALID_BYTE.encode(), b"\x92")
        (directory / meld.CSV_FILES[split]).write_bytes(raw)
    return directory


def expected_text(text: str) -> str:
    return text.replace(INVALID_BYTE, "\ufffd")


@pytest.mark.parametrize("task", ["emotion", "sentiment"])
def test_meld(tmp_path: Path, text_cache: Path, encoder: TextEncoder, task: str) -> None:
    csv_dir = write_meld(tmp_path / "MELD")
    out = meld.convert(
        ["--csv-dir", str(csv_dir), "--task", task, "--out", str(tmp_path / "o")]
        + text_args(text_cache)
    )
    dataset = load_dataset(out)
    assert dataset.labels == meld.TASK_LABELS[task]
    assert dataset.dims == {"t": 384}
    column = 2 if task == "emotion" else 3
    for split, dialogues in MELD_ORDER.items():
        # MELD's dialogue ids repeat across splits: the converter names their split.
        assert dataset.splits[split].dialogue_ids == [f"{split}/{d}" for d in dialogues]
        for dialogue_id, rows in dialogues.items():
            got = dialogue(dataset, split, f"{split}/{dialogue_id}")
            source = [MELD_ROWS[split][r] for r in rows]
            texts = [expected_text(r[0]) for r in source]
            assert got["texts"] == texts
            assert got["speakers"] == [r[1] for r in source]
            assert got["labels"] == [r[column] for r in source]
            np.testing.assert_allclose(got["features"]["t"], encoder.encode(texts), atol=1e-6)
    assert dataset.max_parties == 3
    assert "\ufffd" in dialogue(dataset, "train", "train/dia0")["texts"][2]


def write_feature_files(
    root: Path, dim: int, offset: float
) -> dict[tuple[str, str, int], np.ndarray]:
    """Per-utterance vectors in MELD's per-split layout; one file as safetensors."""
    from safetensors.numpy import save_file

    vectors = {}
    for split, rows in MELD_ROWS.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        for k, (*_, d, u) in enumerate(rows):
            vector = np.arange(dim, dtype=np.float32) + offset + 10 * d + u + 100 * k
            vectors[(split, f"dia{d}", u)] = vector
            if (split, k) == ("train", 1):
                save_file(
                    {"features": vector[None]}, str(root / split / f"dia{d}_utt{u}.safetensors")
                )
            else:
                np.save(root / split / f"dia{d}_utt{u}.npy", vector)
    return vectors


def test_meld_audio_and_visual_files(tmp_path: Path, text_cache: Path) -> None:
    csv_dir = write_meld(tmp_path / "MELD")
    audio = write_feature_files(tmp_path / "audio", 5, 0.5)
    visual = write_feature_files(tmp_path / "visual", 3, -7.0)
    out = meld.convert(
        [
            "--csv-dir",
            str(csv_dir),
            "--out",
            str(tmp_path / "o"),
            "--audio-dir",
            str(tmp_path / "audio"),
            "--visual-dir",
            str(tmp_path / "visual"),
        ]
        + text_args(text_cache)
    )
    dataset = load_dataset(out)
    assert dataset.dims == {"t": 384, "a": 5, "v": 3}
    for split, dialogues in MELD_ORDER.items():
        for dialogue_id, rows in dialogues.items():
            got = dialogue(dataset, split, f"{split}/{dialogue_id}")
            ids = [MELD_ROWS[split][r][5] for r in rows]
            for m, vectors in (("a", audio), ("v", visual)):
                expected = np.stack([vectors[(split, dialogue_id, u)] for u in ids])
                np.testing.assert_array_equal(got["features"][m], expected)

    (tmp_path / "audio" / "train" / "dia2_utt1.npy").unlink()
    with pytest.raises(
        ConversionError, match=r"split 'train', dialogue dia2, utterance 1: .*dia2_utt1\.npy"
    ):
        meld.convert(
            [
                "--csv-dir",
                str(csv_dir),
                "--out",
                str(tmp_path / "o2"),
                "--audio-dir",
                str(tmp_path / "audio"),
            ]
            + text_args(text_cache)
        )


def test_meld_bad_label_names_line(tmp_path: Path, text_cache: Path) -> None:
    csv_dir = write_meld(tmp_path / "MELD")
    path = csv_dir / "dev_sent_emo.csv"
    path.write_text(path.read_text().replace("fear", "angst"))
    with pytest.raises(
        ConversionError,
        match=r"dev_sent_emo\.csv, line 2: dialogue dia0: column 'Emotion' is 'angst'",
    ):
        meld.convert(
            ["--csv-dir", str(csv_dir), "--out", str(tmp_path / "o")] + text_args(text_cache)
        )


def test_meld_missing_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert meld.main(["--csv-dir", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "train_sent_emo.csv: MELD CSV not found" in capsys.readouterr().err


# --------------------------------------------------------------------------- audio (openSMILE)


def write_sine(path: Path, frequency: float, seconds: float = 0.4, rate: int = 16000) -> None:
    t = np.arange(int(seconds * rate)) / rate
    samples = (0.4 * np.sin(2 * np.pi * frequency * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(samples.tobytes())


def test_opensmile_features(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from data_prep.audio_features import AudioFeatureError, AudioFeatureExtractor

    write_sine(tmp_path / "low.wav", 180.0)
    write_sine(tmp_path / "high.wav", 900.0)
    extractor = AudioFeatureExtractor(cache_dir=tmp_path / "cache", progress=False)
    features = extractor.extract(
        [tmp_path / "low.wav", tmp_path / "high.wav", tmp_path / "low.wav"]
    )
    assert features.shape == (3, 88) and np.isfinite(features).all()
    np.testing.assert_array_equal(features[0], features[2])
    assert not np.allclose(features[0], features[1])

    again = AudioFeatureExtractor(cache_dir=tmp_path / "cache", progress=False)
    monkeypatch.setattr(again, "_run", lambda path: pytest.fail(f"openSMILE ran on {path}"))
    np.testing.assert_array_equal(again.extract([tmp_path / "high.wav"])[0], features[1])

    with pytest.raises(AudioFeatureError, match="nope.wav: audio file not found"):
        extractor.extract([tmp_path / "nope.wav"])
    monkeypatch.setitem(sys.modules, "opensmile", None)
    with pytest.raises(AudioFeatureError, match=r"pip install -e \.\[audio\]"):
        AudioFeatureExtractor()


def test_meld_audio_root_opensmile(tmp_path: Path, text_cache: Path) -> None:
    csv_dir = write_meld(tmp_path / "MELD")
    for split, rows in MELD_ROWS.items():
        (tmp_path / "raw" / "audios" / split).mkdir(parents=True)
        for k, (*_, d, u) in enumerate(rows):
            write_sine(tmp_path / "raw" / "audios" / split / f"dia{d}_utt{u}.wav", 150.0 + 60 * k)
    out = meld.convert(
        [
            "--csv-dir",
            str(csv_dir),
            "--out",
            str(tmp_path / "o"),
            "--audio-root",
            str(tmp_path / "raw"),
            "--audio-cache-dir",
            str(tmp_path / "acache"),
        ]
        + text_args(text_cache)
    )
    dataset = load_dataset(out)
    assert dataset.dims == {"t": 384, "a": 88}
    assert (
        json.loads((out / "manifest.json").read_text())["audio_features"]["feature_set"]
        == "eGeMAPSv02"
    )


# --------------------------------------------------------------------------- JSONL

JSONL_LINES = [
    {
        "id": "a",
        "split": "train",
        "utterances": [
            {"speaker": "Ann", "text": "Hi there!", "label": "joy", "features": {"audio": [1, 2]}},
            {"speaker": "Bob", "text": "Go away.", "label": "anger", "features": {"a": [3.5, 4]}},
            {"speaker": "Cy", "text": "Hm.", "label": "neutral", "features": {"audio": [0, 0]}},
        ],
    },
    {
        "id": "b",
        "split": "dev",
        "utterances": [
            {
                "speaker": "Ann",
                "text": "I don’t know.",
                "label": "neutral",
                "features": {"audio": [5, 6]},
            },
        ],
    },
    {
        "id": "c",
        "split": "test",
        "utterances": [
            {"speaker": "Bob", "text": "Great.", "label": "joy", "features": {"audio": [7, 8]}},
            {
                "speaker": "Bob",
                "text": "Really great.",
                "label": "joy",
                "features": {"audio": [9, 10]},
            },
        ],
    },
]


def write_jsonl(path: Path, lines: list[Any]) -> Path:
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
    path.write_text(text + "\n\n", encoding="utf-8")
    return path


def test_jsonl(tmp_path: Path, text_cache: Path, encoder: TextEncoder) -> None:
    path = write_jsonl(tmp_path / "mine.jsonl", JSONL_LINES)
    out = jsonl.convert(
        [str(path), "--modalities", "t,a"] + text_args(text_cache) + ["--out", str(tmp_path / "o")]
    )
    dataset = load_dataset(out)
    assert dataset.name == "mine"
    assert dataset.labels == ["anger", "joy", "neutral"]  # sorted, as found
    assert dataset.dims == {"t": 384, "a": 2}
    for line in JSONL_LINES:
        got = dialogue(dataset, line["split"], line["id"])
        utterances = line["utterances"]
        assert got["speakers"] == [u["speaker"] for u in utterances]
        assert got["labels"] == [u["label"] for u in utterances]
        assert got["texts"] == [u["text"] for u in utterances]
        audio = [next(iter(u["features"].values())) for u in utterances]
        np.testing.assert_array_equal(got["features"]["a"], np.asarray(audio, dtype=np.float32))
        np.testing.assert_allclose(got["features"]["t"], encoder.encode(got["texts"]), atol=1e-6)


def test_jsonl_label_order_and_audio_only(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "mine.jsonl", JSONL_LINES)
    out = jsonl.convert(
        [
            str(path),
            "--modalities",
            "audio",
            "--labels",
            "neutral,joy,anger,fear",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    dataset = load_dataset(out)
    assert dataset.labels == ["neutral", "joy", "anger", "fear"]
    assert dataset.splits["train"].labels.tolist() == [1, 2, 0]
    assert "fear" in summary_text(out)


def test_jsonl_unlabeled_for_prediction(tmp_path: Path) -> None:
    lines = [
        {
            "id": "x",
            "utterances": [
                {"speaker": "A", "text": "hello", "features": {"text": [0.1, 0.2, 0.3]}},
                {"speaker": "B", "text": "bye", "label": "joy", "features": {"text": [1, 2, 3]}},
            ],
        },
    ]
    path = write_jsonl(tmp_path / "p.jsonl", lines)
    with pytest.raises(JsonlError, match=r"p\.jsonl, line 1, dialogue 'x': field 'split' missing"):
        read_jsonl(path, ["anger", "joy"], require_labels=False)
    dialogues = read_jsonl(path, ["anger", "joy"], require_labels=False, default_split="test")
    (record,) = dialogue_records(dialogues, ["anger", "joy"], "t")  # given text features
    assert record.labels == [-1, 1]
    np.testing.assert_allclose(record.features["t"], [[0.1, 0.2, 0.3], [1, 2, 3]], rtol=1e-6)


def test_jsonl_encode_text_ignores_given_text_features(
    tmp_path: Path, text_cache: Path, encoder: TextEncoder
) -> None:
    lines = [
        {
            **line,
            "utterances": [
                {**u, "features": {**u["features"], "text": [1.0, 2.0, 3.0]}}
                for u in line["utterances"]
            ],
        }
        for line in JSONL_LINES
    ]
    path = write_jsonl(tmp_path / "given.jsonl", lines)
    given = load_dataset(
        jsonl.convert([str(path), "--modalities", "t,a", "--out", str(tmp_path / "g")])
    )
    assert given.dims == {"t": 3, "a": 2}
    out = jsonl.convert(
        [str(path), "--modalities", "t,a", "--encode-text"]
        + text_args(text_cache)
        + ["--out", str(tmp_path / "o")]
    )
    dataset = load_dataset(out)
    assert dataset.dims == {"t": 384, "a": 2}
    got = dialogue(dataset, "train", "a")
    np.testing.assert_allclose(got["features"]["t"], encoder.encode(got["texts"]), atol=1e-6)


GOOD_UTTERANCE = {"speaker": "A", "text": "hi", "label": "joy", "features": {"audio": [1.0, 2.0]}}


def line_with(**changes: Any) -> dict[str, Any]:
    utterance = {k: v for k, v in {**GOOD_UTTERANCE, **changes}.items() if v is not None}
    return {"id": "d7", "split": "train", "utterances": [GOOD_UTTERANCE, utterance]}


@pytest.mark.parametrize(
    "lines,extra_args,message",
    [
        (["{not json"], [], r"line 1: not valid JSON"),
        ([line_with(speaker="")], [], r"line 1, dialogue 'd7', utterance 1: field 'speaker'"),
        (
            [{**line_with(), "split": "val"}],
            [],
            r"dialogue 'd7': field 'split' 'val' is not one of",
        ),
        ([line_with(label=None)], [], r"utterance 1: field 'label' missing"),
        (
            [line_with(label="meh")],
            ["--labels", "joy,anger"],
            r"field 'label' is 'meh', not one of",
        ),
        (
            [line_with(features={"audio": [1, 2, 3]})],
            [],
            r"'features\.audio' has 3 numbers, but .*utterance 0 has 2",
        ),
        (
            [line_with(features={"audio": [1, "x"]})],
            [],
            r"'features\.audio' must be a non-empty list of numbers",
        ),
        ([line_with(features={"smell": [1]})], [], r"field 'features\.smell' is not a modality"),
        ([line_with(features=None)], [], r"utterance 1: field 'features\.audio' is missing"),
        ([line_with(), line_with()], [], r"line 2, dialogue 'd7': field 'id' repeats .*line 1"),
        (
            [{"id": "d7", "split": "train", "utterances": []}],
            [],
            r"'utterances' must be a non-empty",
        ),
        ([json.dumps(line_with(features={"a": [float("nan"), 1.0]}))], [], "NaN or inf"),
    ],
)
def test_jsonl_errors(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    lines: list[Any],
    extra_args: list[str],
    message: str,
) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    argv = [str(path), "--modalities", "a", "--out", str(tmp_path / "o"), *extra_args]
    with pytest.raises(JsonlError, match=message):
        jsonl.convert(argv)
    assert jsonl.main(argv) == 2
    assert "bad.jsonl" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_jsonl_text_needed_for_text_features(tmp_path: Path) -> None:
    line = {"id": "q", "split": "test", "utterances": [{"speaker": "A", "label": "joy"}]}
    dialogues = read_jsonl(write_jsonl(tmp_path / "t.jsonl", [line]))
    with pytest.raises(
        JsonlError, match=r"line 1, dialogue 'q', utterance 0: field 'text' is missing"
    ):
        dialogue_records(dialogues, ["joy"], "t", text_encoder=None)


def test_parse_modalities() -> None:
    assert parse_modalities("v,t") == "tv"
    assert parse_modalities("text,audio") == "ta"
    assert parse_modalities("avt") == "tav"
    with pytest.raises(Exception, match="modalities"):
        parse_modalities("x")
