"""The load test of the live service (corect.serving.load): a tiny run, 3 conversations
of 3 utterances, through a real server process on loopback."""

from __future__ import annotations

import json

import pytest

from corect.common.errors import InputError
from corect.serving.load import run_load_test


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


def test_bad_arguments_are_refused_before_starting(tmp_path) -> None:
    with pytest.raises(InputError, match="--conversations"):
        run_load_test(tmp_path / "run", tmp_path / "data", conversations=[0])
    with pytest.raises(InputError, match="--rate"):
        run_load_test(tmp_path / "run", tmp_path / "data", rate=-1)
