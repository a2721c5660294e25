"""The live service: health, WebSocket and POST replies, predictions equal to the batch
causal model's across many concurrent conversations, malformed messages answered with
the field at fault, idle conversations closed and freed, the conversation limit, the
message size limit, offline runs refused."""

from __future__ import annotations

import gc
import json
import random
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("starlette")
pytest.importorskip("httpx")

from starlette.testclient import TestClient  # noqa: E402
from starlette.websockets import WebSocketDisconnect  # noqa: E402

from corect.config import ConfigError, config_from_dict  # noqa: E402
from corect.inference.predictions import predict_file  # noqa: E402
from corect.inference.recognizer import StreamingRecognizer  # noqa: E402
from corect.serve import main  # noqa: E402
from corect.serving.app import ServeSettings, create_app  # noqa: E402
from corect.train import train  # noqa: E402
from data_prep import jsonl  # noqa: E402
from tests.conftest import TINY_DIMS  # noqa: E402
from tests.test_predict import tiny_run  # noqa: E402

WORDS = {
    "joy": ["Great news!", "I love it.", "That is wonderful!", "Yay, we won!"],
    "anger": ["Go away.", "I hate this!", "Stop it now!", "This is unfair!"],
    "neutral": ["Okay.", "It is Tuesday.", "See you at five.", "The file is there."],
}
CASTS = [["Ann", "Bob"], ["Cy", "Di", "Ed"], ["Ann", "Bob", "Cy"]]


def text_dialogues(count: int, seed: int = 0) -> list[dict[str, Any]]:
    """Dialogues with texts and 2-d audio vectors, labelled by their words."""
    rng = random.Random(seed)
    lines = []
    for d in range(count):
        cast, utterances = CASTS[d % len(CASTS)], []
        for k in range(rng.randint(3, 8)):
            label = rng.choice(sorted(WORDS))
            audio = [round(rng.uniform(-1, 1), 3), round(rng.uniform(-1, 1), 3)]
            text = f"{rng.choice(WORDS[label])} ({k})"
            utterances.append(
                {
                    "speaker": cast[k % len(cast)],
                    "text": text,
                    "label": label,
                    "features": {"audio": audio},
                }
            )
        split = "train" if d < 6 else "dev" if d < 8 else "test"
        lines.append({"id": f"d{d}", "split": split, "utterances": utterances})
    return lines


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> tuple[Path, list[dict[str, Any]]]:
    """A tiny causal CORECT run on text (the bundled MiniLM) + audio; its test dialogues."""
    root = tmp_path_factory.mktemp("serve")
    lines = text_dialogues(14)
    source = root / "dialogues.jsonl"
    source.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    data = jsonl.convert(
        [str(source), "--modalities", "t,a", "--quiet", "--out", str(root / "data")]
        + ["--text-cache-dir", str(root / "text_cache")]
    )
    config = config_from_dict(
        {
            "data": {"path": str(data), "modalities": "ta", "cache_dir": str(root / "cache")},
            "model": {"hidden_size": 16, "causal": True, "gnn_heads": 2, "pcm_layers": 1, "wp": 2},
            "train": {"epochs": 2, "runs_dir": str(root / "runs"), "progress": False, "lr": 1e-3},
        }
    )
    return train(config), [x for x in lines if x["split"] == "test"]


@pytest.fixture(scope="module")
def text_client(text_run):
    settings = ServeSettings(device="cpu", batch_wait_ms=20, workers=2)  # two model threads
    app = create_app(text_run[0], settings=settings)
    with TestClient(app) as client:
        yield client


@pytest.fixture(scope="module")
def tav_run(tmp_path_factory) -> Path:
    """A tiny causal run on synthetic t/a/v vectors (no text encoder: vectors only)."""
    return tiny_run(tmp_path_factory.mktemp("serve_tav"), causal=True)


def tav_message(speaker: str = "Ann", seed: int = 0) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    names = {"t": "text", "a": "audio", "v": "visual"}
    return {
        "speaker": speaker,
        "features": {names[m]: torch.randn(d, generator=g).tolist() for m, d in TINY_DIMS.items()},
    }


def message(utterance: dict[str, Any]) -> dict[str, Any]:
    """A dataset utterance as the service takes it (no label)."""
    return {k: utterance[k] for k in ("speaker", "text", "features")}


def test_health(text_client, text_run) -> None:
    health = text_client.get("/health").json()
    assert health["status"] == "ok" and health["causal"] is True
    assert health["run"] == str(text_run[0]) and health["modalities"] == "ta"
    assert health["labels"] == ["anger", "joy", "neutral"] and health["dims"] == {"t": 384, "a": 2}
    assert health["text_encoder"]["dim"] == 384 and health["text_encoder"]["identity"]
    assert isinstance(health["open_conversations"], int)


def test_websocket_and_post_are_one_conversation(text_client, text_run) -> None:
    utterances = text_run[1][0]["utterances"][:3]
    rec = StreamingRecognizer.from_run(text_run[0])
    expected = [rec.push(u["speaker"], u["features"], u["text"]) for u in utterances]
    with text_client.websocket_connect("/v1/conversations/both") as ws:
        replies = []
        for u in utterances[:2]:
            ws.send_text(json.dumps(message(u)))
            replies.append(ws.receive_json())
    post = text_client.post("/v1/conversations/both/utterances", json=message(utterances[2]))
    assert post.status_code == 200
    replies.append(post.json())
    assert [r["index"] for r in replies] == [0, 1, 2]
    for reply, want in zip(replies, expected, strict=True):
        assert reply["label"] == want.label
        assert reply["probabilities"] == pytest.approx(want.probabilities, abs=1e-5)
    assert text_client.get("/v1/conversations/both").json()["utterances"] == 3
    assert text_client.delete("/v1/conversations/both").json()["closed"] is True
    assert text_client.get("/v1/conversations/both").status_code == 404


def replay(client: TestClient, name: str, dialogue: dict, by_post: bool, start, out) -> None:
    """Send a dialogue's utterances one by one (WebSocket or POST); keep the replies."""
    start.wait()
    replies = []
    if by_post:
        for u in dialogue["utterances"]:
            replies.append(
                client.post(f"/v1/conversations/{name}/utterances", json=message(u)).json()
            )
    else:
        with client.websocket_connect(f"/v1/conversations/{name}") as ws:
            for u in dialogue["utterances"]:
                ws.send_text(json.dumps(message(u)))
                replies.append(ws.receive_json())
    out[name] = (dialogue["id"], replies)


def test_replay_across_concurrent_conversations_equals_predict(
    text_client, text_run, tmp_path, monkeypatch
) -> None:
    """Every test dialogue three times at once (18 conversations, WebSocket and POST),
    interleaved in shared micro-batches: the probabilities equal predict's to 1e-5."""
    run, dialogues = text_run
    monkeypatch.chdir(tmp_path)  # predict's text-feature cache goes under runs/ here
    source = tmp_path / "test.jsonl"
    source.write_text("\n".join(json.dumps(d) for d in dialogues) + "\n")
    expected = {
        d["id"]: d["utterances"] for d in predict_file(run, source, device="cpu")["dialogues"]
    }
    before = text_client.get("/health").json()["batching"]
    out: dict[str, Any] = {}
    start = threading.Barrier(3 * len(dialogues))
    threads = [
        threading.Thread(
            target=replay, args=(text_client, f"r{k}-{d['id']}", d, k == 2, start, out)
        )
        for k in range(3)
        for d in dialogues
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(out) == len(threads)
    for dialogue_id, replies in out.values():
        want = expected[dialogue_id]
        assert [r["index"] for r in replies] == list(range(len(want)))
        for reply, w in zip(replies, want, strict=True):
            assert reply["probabilities"] == pytest.approx(w["probabilities"], abs=1e-5)
            assert reply["label"] == w["label"]
    after = text_client.get("/health").json()["batching"]
    assert after["utterances"] - before["utterances"] == sum(len(r) for _, r in out.values())
    assert after["largest"] > 1  # batches held several conversations' utterances
    for name in out:
        text_client.delete(f"/v1/conversations/{name}")


def test_a_text_run_needs_the_text(text_client) -> None:
    reply = text_client.post(
        "/v1/conversations/t/utterances", json={"speaker": "A", "features": {"audio": [0, 1]}}
    )
    assert reply.status_code == 400 and reply.json()["field"] == "text"


BAD = [
    ("{not json", "message"),
    ("[1, 2]", "message"),
    ({"text": "no speaker"}, "speaker"),
    ({"speaker": 3}, "speaker"),
    ({"speaker": "A", "mood": "x"}, "mood"),
    ({"speaker": "A", "text": 5}, "text"),
    ({"speaker": "A", "features": [1]}, "features"),
    ({"speaker": "A", "features": {"smell": [1]}}, "features.smell"),
    ({"speaker": "A", "features": {"audio": [1, 2]}}, "features.audio"),
    ({"speaker": "A", "features": {"visual": ["x"] * 5}}, "features.visual"),
    ('{"speaker": "A", "features": {"audio": [NaN, 1, 1, 1, 1, 1]}}', "features.audio"),
    ('{"speaker": "A", "features": {"a": [1, 1, 1, 1, 1, Infinity]}}', "features.a"),
    ({"speaker": "A", "features": {"text": [1e300] * 8}}, "features.text"),
    ({"speaker": "A", "features": {"text": [0] * 8, "visual": [0] * 5}}, "features.audio"),
    ({"speaker": "A", "text": "hi", "features": {"audio": [0] * 6, "visual": [0] * 5}}, "text"),
]


def raw(bad: Any) -> str:
    return bad if isinstance(bad, str) else json.dumps(bad)


def test_malformed_messages_name_the_field_and_the_conversation_goes_on(tav_run) -> None:
    app = create_app(tav_run, settings=ServeSettings(device="cpu"))
    good = json.dumps(tav_message())
    with TestClient(app) as client:
        with client.websocket_connect("/v1/conversations/bad") as ws:
            ws.send_text(good)
            assert ws.receive_json()["index"] == 0
            for k, (bad, field) in enumerate(BAD, start=1):
                ws.send_text(raw(bad))
                reply = ws.receive_json()
                assert reply.get("field") == field, (bad, reply)
                assert field.split(".")[-1] in reply["error"] or field == "message", reply
                ws.send_text(good)
                assert ws.receive_json()["index"] == k, bad  # not advanced by the error
        for bad, field in BAD[:3]:
            reply = client.post("/v1/conversations/bad/utterances", content=raw(bad))
            assert reply.status_code == 400 and reply.json()["field"] == field
        limit = app.state.service.recognizer.max_speakers
        for k in range(limit + 1):
            reply = client.post("/v1/conversations/many/utterances", json=tav_message(f"S{k}"))
        assert reply.status_code == 400 and reply.json()["field"] == "speaker"
        assert "at most" in reply.json()["error"]
        again = client.post("/v1/conversations/many/utterances", json=tav_message("S0")).json()
        assert again["index"] == limit  # the refused speaker changed nothing
        assert (
            client.post("/v1/conversations/bad id!/utterances", json=tav_message()).json()["field"]
            == "id"
        )


def test_message_size_limit(tav_run) -> None:
    app = create_app(tav_run, settings=ServeSettings(device="cpu", max_message_bytes=1000))
    big = json.dumps({**tav_message(), "text": "x" * 2000})
    with TestClient(app) as client:
        with client.websocket_connect("/v1/conversations/big") as ws:
            ws.send_text(big)
            reply = ws.receive_json()
            assert reply["field"] == "message" and "limit of 1000" in reply["error"]
            ws.send_text(json.dumps(tav_message()))
            assert ws.receive_json()["index"] == 0
        assert client.post("/v1/conversations/big/utterances", content=big).status_code == 413


def test_idle_conversations_are_closed_and_freed(tav_run) -> None:
    app = create_app(tav_run, settings=ServeSettings(device="cpu", idle_timeout_s=0.3))
    service = app.state.service
    with TestClient(app) as client:
        with client.websocket_connect("/v1/conversations/idle") as ws:
            ws.send_text(json.dumps(tav_message()))
            ws.receive_json()
            state = weakref.ref(service.conversations.get("idle").state)
            client.post("/v1/conversations/quiet/utterances", json=tav_message())
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_json()  # the sweeper closes the socket
        assert closed.value.code == 1000 and "idle" in closed.value.reason
        deadline = time.monotonic() + 5
        while client.get("/health").json()["open_conversations"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/health").json()["open_conversations"] == 0
        assert client.get("/v1/conversations/quiet").status_code == 404
        gc.collect()
        assert state() is None  # its cache is freed


def test_max_conversations_refused(tav_run) -> None:
    app = create_app(tav_run, settings=ServeSettings(device="cpu", max_conversations=2))
    with TestClient(app) as client:
        assert (
            client.post("/v1/conversations/one/utterances", json=tav_message()).status_code == 200
        )
        with client.websocket_connect("/v1/conversations/two") as ws:
            full = client.post("/v1/conversations/three/utterances", json=tav_message())
            assert full.status_code == 503 and "maximum of 2" in full.json()["error"]
            with client.websocket_connect("/v1/conversations/four") as refused:
                assert "maximum of 2" in refused.receive_json()["error"]
                with pytest.raises(WebSocketDisconnect) as closed:
                    refused.receive_json()
            assert closed.value.code == 1013 and "full" in closed.value.reason
            ws.send_text(json.dumps(tav_message()))  # the open ones go on
            assert ws.receive_json()["index"] == 0
        assert client.delete("/v1/conversations/one").status_code == 200
        assert (
            client.post("/v1/conversations/three/utterances", json=tav_message()).status_code == 200
        )


def test_offline_run_refused(tmp_path, capsys) -> None:
    offline = tiny_run(tmp_path, causal=False)
    with pytest.raises(ConfigError, match="offline run"):
        create_app(offline)
    assert main(["--run", str(offline), "--port", "1"]) == 2
    assert "offline run" in capsys.readouterr().err
    assert main(["--bench", "--run", str(offline)]) == 2
    assert "--data" in capsys.readouterr().err


def test_dialogue_states_share_the_model_without_cross_talk(tav_run) -> None:
    """Two dialogues pushed in turns through one recognizer give each its own outputs;
    a new state shares the template's weight tensors (only its windows are its own)."""
    rec = StreamingRecognizer.from_run(tav_run)
    one, two = [tav_message("A", k) for k in range(4)], [tav_message("B", 9 + k) for k in range(4)]
    alone = []
    for messages in (one, two):
        rec.reset()
        alone.append([rec.push(m["speaker"], m["features"]).logits for m in messages])
    states = [rec.new_state(), rec.new_state()]
    mixed: list[list[list[float]]] = [[], []]
    for k in range(4):
        for d, messages in enumerate((one, two)):
            p = rec.push(messages[k]["speaker"], messages[k]["features"], state=states[d])
            mixed[d].append(p.logits)
    assert torch.allclose(torch.tensor(mixed), torch.tensor(alone), atol=1e-6)
    weights = [s.cache.parts.rtgcn.weights.relational for s in states]
    assert weights[0] is weights[1]  # one copy of the folded weights for all dialogues


def test_batch_shares_deal_conversations_by_text_length(tav_run) -> None:
    """The model threads' shares: every job once, sorted by text length and dealt in
    turn (so each share holds short and long texts); never more shares than jobs."""
    from corect.serving.batching import Job, MicroBatcher
    from corect.serving.messages import Utterance

    rec = StreamingRecognizer.from_run(tav_run)
    batcher = MicroBatcher(rec, workers=2)
    jobs = [Job(rec.new_state(), Utterance("A", "x" * n), None) for n in (5, 1, 4, 2, 3)]
    shares = batcher.shares(jobs)
    lengths = [[len(job.utterance.text or "") for job in share] for share in shares]
    assert lengths == [[1, 3, 5], [2, 4]]
    assert batcher.shares(jobs[:1]) == [[jobs[0]]]
    with pytest.raises(ValueError, match="workers"):
        MicroBatcher(rec, workers=0)
