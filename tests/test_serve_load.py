"""The load test of the live service (corect.serving.load): a tiny run, 3 conversations
of 3 utterances, through a real server process on loopback."""

from __future__ import annotations

import json

import pytest

from corect.common.errors import InputError
from corect.serving.load import compare_with_predict, dialogue_messages, run_load_test
from tests.conftest import TEXT_LABELS


def test_a_tiny_load_test_writes_its_results(text_causal_run, tmp_path) -> None:
    for module in ("websockets", "uvicorn", "starlette"):
        pytest.importorskip(module)
    lines: list[str] = []
    out = tmp_path / "bench"
    result = run_load_test(
        text_causal_run["run"],
        text_causal_run["data"],
        conversations=[1, 3],
        utterances=3,
        rate=0,
        out=out,
        progress=lines.append,
    )
    assert result["errors"] == 0 and [x["conversations"] for x in result["levels"]] == [1, 3]
    level = result["levels"][-1]
    assert level["utterances"] == 9 and level["errors"] == 0
    assert level["latency_ms"]["p50"] > 0 and level["utterances_per_s"] > 0
    assert level["open_conversations"] >= 3  # each conversation still open at the end
    assert level["server"]["rss_mb_before"] > 10 and level["server"]["cpu_s"] > 0
    assert len(lines) == 2 and "3 conversations: 9 utterances" in lines[1]
    assert json.loads((out / "results.json").read_text())["levels"] == result["levels"]
    assert "| 3 | 9 | 0 |" in (out / "results.md").read_text()
    assert (out / "latency.png").read_bytes().startswith(b"\x89PNG")


def test_replay_compares_every_reply_with_predict(text_causal_run, tmp_path, monkeypatch) -> None:
    """--replay: every test dialogue once over 2 conversations on two model threads;
    every reply equals predict's probabilities to 1e-5, none missing, and results.md
    says so."""
    for module in ("websockets", "uvicorn", "starlette"):
        pytest.importorskip(module)
    monkeypatch.chdir(tmp_path)  # predict's text-feature cache goes under runs/ here
    out = tmp_path / "replay"
    result = run_load_test(
        text_causal_run["run"],
        text_causal_run["data"],
        conversations=2,
        rate=0,
        out=out,
        progress=lambda line: None,
        replay=True,
        server_args=["--workers", "2", "--threads", "1"],
    )
    (check,) = result["replay"]
    utterances = result["levels"][0]["utterances"]
    assert result["errors"] == 0 and check["compared"] == utterances > 3
    assert check["missing"] == 0 and check["beyond_tolerance"] == 0
    assert check["max_abs_diff"] <= 1e-5
    assert f"{utterances} utterances compared" in (out / "results.md").read_text()


def test_compare_with_predict_counts_differences(text_causal_run, tmp_path, monkeypatch) -> None:
    """The check itself catches wrong and missing replies."""
    monkeypatch.chdir(tmp_path)
    health = {"modalities": "t", "text_encoder": {"dim": 384}}
    dialogues = dialogue_messages(text_causal_run["data"], "test", health)[:1]
    size = len(dialogues[0])
    unanswered = compare_with_predict(text_causal_run["run"], dialogues, {})
    assert unanswered["missing"] == size and unanswered["compared"] == 0
    uniform = {label: 1 / len(TEXT_LABELS) for label in TEXT_LABELS}
    wrong = {(0, k): dict(uniform, **{TEXT_LABELS[0]: 1.0}) for k in range(size)}
    check = compare_with_predict(text_causal_run["run"], dialogues, wrong)
    assert check["beyond_tolerance"] == size and check["max_abs_diff"] > 0.01


def test_bad_arguments_are_refused_before_starting(tmp_path) -> None:
    with pytest.raises(InputError, match="--conversations"):
        run_load_test(tmp_path / "run", tmp_path / "data", conversations=[0])
    with pytest.raises(InputError, match="--rate"):
        run_load_test(tmp_path / "run", tmp_path / "data", rate=-1)
