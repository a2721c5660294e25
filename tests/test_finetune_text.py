"""data_prep.finetune_text on a tiny dataset with a tiny random BERT (character vocab)."""

from __future__ import annotations

import json
import string
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from corect.common.errors import InputError
from corect.common.metrics import classification_metrics
from corect.data.dataset import DialogueRecord
from corect.data.format import write_dataset
from corect.data.text_encoder import TextEncoder
from corect.data.text_model import RECORD_FILE, TextModelError, context_inputs
from corect.engine.losses import class_weights
from data_prep import finetune_text as ft
from data_prep.finetuning import saving
from data_prep.finetuning.config import FinetuneConfig
from data_prep.finetuning.run import FinetuneResult, finetune
from data_prep.finetuning.utterances import length_batches
from data_prep.options import ConversionError

LABELS = ["joy", "sadness", "neutral"]
WORDS = {0: "great happy fun yes", 1: "bad sad awful no", 2: "okay fine the a"}


def tiny_bert(directory: Path) -> Path:
    """A randomly initialised 2-layer BERT (hidden 32) with a character-level vocab."""
    from transformers import BertConfig, BertModel, BertTokenizer

    chars = string.ascii_lowercase + string.digits
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *string.punctuation]
    vocab += [f"##{c}" for c in chars]
    BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(directory)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
    )
    BertModel(config).save_pretrained(directory, safe_serialization=True)
    return directory


def dialogue(rng: np.random.Generator, name: str, length: int) -> DialogueRecord:
    labels = [int(x) for x in rng.integers(0, 3, length)]
    texts = [" ".join(rng.choice(WORDS[label].split(), 3)) for label in labels]
    speakers = [["Ann", "Bob", "Cy"][int(x)] for x in rng.integers(0, 3, length)]
    features = {"t": rng.standard_normal((length, 4)).astype(np.float32)}
    return DialogueRecord(name, speakers, labels, features, texts)


def tiny_dataset(directory: Path) -> Path:
    rng = np.random.default_rng(0)
    splits = {
        "train": [dialogue(rng, f"tr{i}", 5) for i in range(8)],
        "dev": [dialogue(rng, f"dv{i}", 4) for i in range(3)],
        "test": [dialogue(rng, f"te{i}", 4) for i in range(2)],
    }
    write_dataset(
        directory, name="tiny", task="emotion", labels=LABELS, dims={"t": 4}, splits=splits
    )
    return directory


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tiny_bert(tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return tiny_dataset(tmp_path_factory.mktemp("data") / "tiny")


def run(data: Path, base: Path, out: Path, **settings) -> FinetuneResult:
    values = {"epochs": 2, "batch_size": 8, "lr": 3e-3, "progress": False, **settings}
    return finetune(FinetuneConfig(data=data, out=out, model=base, **values))


def features(model: Path, texts, speakers=None) -> np.ndarray:
    encoder = TextEncoder(model, cache_dir=None, progress=False)
    return np.concatenate(encoder.encode_dialogues(texts, speakers))


def split_texts(data: Path, split: str) -> tuple[list[list[str]], list[list[str]], list[int]]:
    """Texts, speaker names and labels of a split, read straight from the files."""
    manifest = json.loads((data / "manifest.json").read_text())
    tensors = load_file(data / f"{split}.safetensors")
    offsets = tensors["offsets"].tolist()
    names = [manifest["speakers"][i] for i in tensors["speakers"].tolist()]
    speakers = [names[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    texts = json.loads((data / f"{split}.texts.json").read_text())
    return texts, speakers, tensors["labels"].tolist()


@pytest.fixture(scope="module")
def full_model(tmp_path_factory, data, base) -> FinetuneResult:
    return run(data, base, tmp_path_factory.mktemp("full") / "model", mode="full")


@pytest.fixture(scope="module")
def context_model(tmp_path_factory, data, base) -> FinetuneResult:
    out = tmp_path_factory.mktemp("ctx") / "model"
    return run(data, base, out, mode="full", context=2)


def test_full_mode_saves_a_plain_hf_model_whose_features_differ(full_model, data, base):
    from transformers import AutoModel, AutoTokenizer

    out = full_model.out
    for name in ("model.safetensors", "config.json", "tokenizer_config.json", RECORD_FILE):
        assert (out / name).is_file(), name
    AutoModel.from_pretrained(out, local_files_only=True)
    AutoTokenizer.from_pretrained(out, local_files_only=True)
    record = json.loads((out / RECORD_FILE).read_text())
    assert record["mode"] == "full" and record["epochs"] == 2 and record["seed"] == 0
    assert record["dataset"]["name"] == "tiny" and record["labels"] == LABELS
    assert record["train_split"] == "train" and record["selection_split"] == "dev"
    assert record["time"]["train_seconds"] >= 0
    history = [h["dev_weighted_f1"] for h in record["history"]]
    assert record["dev_weighted_f1"] == max(history)
    assert record["best_epoch"] == 1 + history.index(max(history))
    texts, speakers, _ = split_texts(data, "train")
    tuned, original = features(out, texts), features(base, texts)
    assert tuned.shape == original.shape
    assert not np.allclose(tuned, original, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(tuned, axis=1), 1.0, atol=1e-5)
    # A fresh cache key: the weights are fingerprinted, so nothing stale is reused.
    assert TextEncoder(out).identity != TextEncoder(base).identity
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


def test_features_written_are_the_ones_fine_tuned(context_model, data):
    """The head applied to the feature writer's vectors reproduces the recorded dev F1:
    same inputs (with context), tokenization, pooling and weights."""
    out = context_model.out
    record = context_model.record
    texts, speakers, labels = split_texts(data, "dev")
    head = load_file(out / "classifier_head.safetensors")
    x = torch.from_numpy(features(out, texts, speakers))
    logits = x * x.shape[1] ** 0.5 @ head["weight"].T + head["bias"]
    scores = classification_metrics(np.array(labels), logits.argmax(-1).numpy(), LABELS)
    assert scores["weighted_f1"] == pytest.approx(record["dev_weighted_f1"], abs=1e-6)


def test_context_is_causal(context_model):
    out = context_model.out
    encoder = TextEncoder(out, cache_dir=None, progress=False)
    assert encoder.context == 2 and encoder.description["context"]["utterances"] == 2
    texts = ["great fun", "sad no", "okay", "happy yes", "awful", "fine"]
    speakers = ["Ann", "Bob", "Ann", "Cy", "Bob", "Ann"]
    before = encoder.encode_dialogues([texts], [speakers])[0]
    later = encoder.encode_dialogues([[*texts[:4], "no no no", "bad"]], [speakers])[0]
    np.testing.assert_array_equal(later[:4], before[:4])  # later utterances never leak back
    assert not np.allclose(later[4:], before[4:])
    earlier = encoder.encode_dialogues([[texts[0], "yes yes", *texts[2:]]], [speakers])[0]
    np.testing.assert_array_equal(earlier[0], before[0])
    for i in (1, 2, 3):  # utterance 1 is within K=2 of 1..3
        assert not np.allclose(earlier[i], before[i], atol=1e-6), i
    np.testing.assert_array_equal(earlier[4:], before[4:])  # and out of reach of 4, 5
    renamed = encoder.encode_dialogues([texts], [["Ann", "Dee", *speakers[2:]]])[0]
    assert not np.allclose(renamed[1], before[1], atol=1e-6)  # speaker names are in the input
    with pytest.raises(TextModelError, match="speakers"):
        encoder.encode_dialogues([texts])


def test_context_inputs_use_only_the_past():
    texts, speakers = ["a", "b", "c", "d"], ["X", "Y", "X", "Z"]
    assert context_inputs(texts, speakers, 0, " | ") == texts
    inputs = context_inputs(texts, speakers, 2, " | ")
    assert inputs == ["X: a", "X: a | Y: b", "X: a | Y: b | X: c", "Y: b | X: c | Z: d"]


def test_jsonl_converter_writes_features_of_the_adapted_model(context_model, base, tmp_path):
    from corect.data.format import load_dataset
    from data_prep import jsonl

    lines = [
        {
            "id": f"d{k}",
            "split": split,
            "utterances": [
                {"speaker": s, "text": t, "label": label}
                for s, t, label in [
                    ("Ann", "great fun", "joy"),
                    ("Bob", "sad", "sadness"),
                    ("Ann", "okay then", "neutral"),
                ][: 2 + k % 2]
            ],
        }
        for k, split in enumerate(["train", "train", "dev", "test"])
    ]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    cache = tmp_path / "cache"
    out = jsonl.convert(
        [
            str(source),
            "--out",
            str(tmp_path / "ds"),
            "--text-model",
            str(context_model.out),
            "--text-cache-dir",
            str(cache),
            "--labels",
            ",".join(LABELS),
            "--quiet",
        ]
    )
    dataset = load_dataset(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["text_features"]["context"]["utterances"] == 2
    encoder = TextEncoder(context_model.out, cache_dir=None, progress=False)
    texts = [[u["text"] for u in line["utterances"]] for line in lines[:2]]
    speakers = [[u["speaker"] for u in line["utterances"]] for line in lines[:2]]
    expected = np.concatenate(encoder.encode_dialogues(texts, speakers))
    np.testing.assert_allclose(dataset.splits["train"].features["t"].numpy(), expected, atol=1e-6)
    assert [p.stem for p in cache.iterdir()] == [encoder.identity]
    assert encoder.identity != TextEncoder(base, cache_dir=None).identity


def test_frozen_equals_base_and_test_split_is_never_read(data, base, tmp_path):
    copy = tmp_path / "data"
    copy.mkdir()
    for path in data.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    (copy / "test.safetensors").write_bytes(b"not a safetensors file")
    (copy / "test.texts.json").write_text("{broken")
    result = run(copy, base, tmp_path / "frozen", mode="frozen", epochs=1)
    texts, _, _ = split_texts(data, "dev")
    np.testing.assert_allclose(
        features(result.out, texts), features(base, texts), rtol=0, atol=1e-6
    )
    assert result.record["test_split_read"] is False


def test_lora_adapters_are_merged(data, base, tmp_path):
    pytest.importorskip("peft")
    from transformers import AutoModel

    result = run(data, base, tmp_path / "lora", mode="lora", lr=5e-2, epochs=1)
    assert not (result.out / "adapter_config.json").exists()
    model = AutoModel.from_pretrained(result.out, local_files_only=True)
    assert not [k for k in model.state_dict() if "lora" in k]
    texts, _, _ = split_texts(data, "dev")
    assert not np.allclose(features(result.out, texts), features(base, texts), atol=1e-5)


def test_interrupted_save_keeps_the_previous_model(full_model, data, base, tmp_path, monkeypatch):
    out = tmp_path / "model"
    first = run(data, base, out, mode="frozen", epochs=1, max_steps=1)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    def interrupted(tensors, path):
        Path(path).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(saving, "save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(data, base, out, mode="full", epochs=1, max_steps=1)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    # No partial sibling left; the state stays for --resume (tests/test_finetune_resume.py).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "model.resume.pt"]
    with pytest.raises(KeyboardInterrupt):
        run(data, base, tmp_path / "new", mode="frozen", epochs=1, max_steps=1)
    assert not (tmp_path / "new").exists()
    assert first.record["steps"] == 1


def test_bad_input_names_the_file_and_field(data, base, tmp_path, capsys):
    copy = tmp_path / "data"
    copy.mkdir()
    for path in data.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    good = (copy / "dev.texts.json").read_text()
    texts = json.loads(good)
    texts[1] = texts[1][:-1]
    (copy / "dev.texts.json").write_text(json.dumps(texts))
    # The dataset loader checks the texts file (the fine-tuner checked it before).
    with pytest.raises(InputError, match=r"dev\.texts\.json: dialogue 'dv1' has 3 texts"):
        run(copy, base, tmp_path / "m", epochs=1)
    (copy / "dev.texts.json").write_text(good)
    (copy / "train.texts.json").unlink()
    status = ft.main(["--data", str(copy), "--model", str(base), "--out", str(tmp_path / "m")])
    assert status == 2
    assert "train.texts.json: missing" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_class_weights_and_length_batches():
    weights = class_weights([0, 0, 0, 1], 3, "balanced")
    assert weights.tolist() == pytest.approx([4 / 9, 4 / 3, 1.0])
    assert class_weights([0, 1], 2, "none") is None
    assert class_weights([0, 0, 0, 1], 3, "sqrt")[1] == pytest.approx((4 / 3) ** 0.5)
    lengths = [7, 3, 9, 1, 4, 4, 8, 2, 6, 5]
    batches = length_batches(lengths, 3, torch.Generator().manual_seed(0), pool=10)
    assert sorted(i for b in batches for i in b) == list(range(10))
    spans = sorted((min(lengths[i] for i in b), max(lengths[i] for i in b)) for b in batches)
    # Batches do not overlap in length.
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))


def test_help_explains_the_modes(capsys):
    with pytest.raises(SystemExit):
        ft.main(["--help"])
    text = capsys.readouterr().out
    for word in ("full", "lora", "frozen", "--context", "test split is never read"):
        assert word in text


def test_stream_builds_the_same_context_inputs(context_model):
    from corect.config import config_from_dict
    from corect.inference.recognizer import StreamingRecognizer
    from corect.models.build import build_model

    encoder = TextEncoder(context_model.out, cache_dir=None, progress=False)
    config = config_from_dict(
        {
            "data": {"modalities": "t"},
            "model": {"name": "corect", "hidden_size": 16, "gnn_heads": 2, "causal": True, "wp": 3},
        }
    )
    dims = {"t": encoder.dim}
    rec = StreamingRecognizer(build_model(config.model, dims, 3, 4).eval(), config, LABELS, dims)
    rec._text_encoder = encoder  # the run's encoder, as text_encoder_for_run would give
    texts = ["great fun", "sad no", "okay", "happy yes", "awful"]
    speakers = ["Ann", "Bob", "Ann", "Cy", "Bob"]
    expected = encoder.encode_dialogues([texts], [speakers])[0]
    for k, (speaker, text) in enumerate(zip(speakers, texts, strict=True)):
        x = rec.inputs(None, text, speaker)["t"].numpy()
        np.testing.assert_allclose(x, expected[k], atol=1e-6)
        rec.push(speaker, text=text)


def test_out_that_is_a_foreign_folder_or_an_input_is_refused_and_kept(data, base, tmp_path):
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "a.txt").write_text("precious")
    with pytest.raises(ConversionError, match="is not a model directory"):
        run(data, base, foreign, epochs=1, max_steps=1)
    assert (foreign / "a.txt").read_text() == "precious"
    with pytest.raises(ConversionError, match="is or holds the input"):
        run(data, base, data, epochs=1, max_steps=1)
    assert (data / "manifest.json").is_file()
