"""Load test of the live service: N concurrent WebSocket conversations replaying a dataset.

    python -m corect.serve --bench --run RUN_DIR --data DATASET_DIR --conversations 1,10,50

:func:`run_load_test` starts ``python -m corect.serve`` on 127.0.0.1 (a free port) in its
own process, so that the server's CPU time and memory (``/proc/<pid>``) are measured apart
from this client's. For each number of conversations it opens that many WebSockets, each
replaying real dialogues of the dataset (its texts, and its audio/visual vectors when the
run needs them) one utterance every ``1 / rate`` seconds (rate 0: as fast as the replies
come, i.e. saturation), and measures every utterance's latency from send to reply.
A finished dialogue is closed with ``DELETE`` and the conversation goes on with the next
one, so every conversation stays open for the whole level. It writes ``results.json``,
``results.md`` and ``latency.png`` (latency and throughput against the number of
conversations) atomically into ``out``. Everything stays on the loopback interface, and
every loop is bounded by a count or a deadline.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from corect.common.errors import InputError
from corect.serving.load_report import (
    MAX_EXAMPLES,
    percentiles,
    progress_line,
    replay_line,
    write_results,
)

LOOPBACK = "127.0.0.1"
NAMES = {"a": "audio", "v": "visual", "t": "text"}
SERVE = ("-m", "corect.serve")  # how the server is started (after sys.executable)
REPLY_TIMEOUT_S = 60.0  # one reply; beyond this the utterance counts as an error


# --------------------------------------------------------------------------- the server


class Server:
    """``python -m corect.serve`` in a child process on a loopback port."""

    def __init__(self, run_dir: str | Path, args: Sequence[str] = (), port: int | None = None):
        self.port = port or free_port()
        self.base = f"http://{LOOPBACK}:{self.port}"
        self.log = tempfile.TemporaryFile()
        command = [sys.executable, *SERVE, "--run", str(run_dir)]
        command += ["--host", LOOPBACK, "--port", str(self.port), *args]
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout_s: float) -> dict[str, Any]:
        """Poll ``GET /health`` until it answers (the model loads first); its reply."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise InputError(
                    f"the server stopped (exit {self.process.returncode}) before it was "
                    f"ready:\n{self.log_tail()}"
                )
            with suppress(OSError, ValueError):
                return request("GET", f"{self.base}/health", timeout=2.0)
            time.sleep(0.2)
        raise InputError(
            f"the server did not answer /health in {timeout_s:.0f} s:\n{self.log_tail()}"
        )

    def log_tail(self, size: int = 2000) -> str:
        """The end of the server's output."""
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")[-size:]

    def rss_mb(self) -> float:
        """Resident memory of the server process (``VmRSS``), in MB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the server has used so far."""
        stat = Path(f"/proc/{self.process.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        """Terminate the process (killed after 10 s) and close its log."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.log.close()


def free_port() -> int:
    """A TCP port free on the loopback interface now."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def request(method: str, url: str, timeout: float = 10.0) -> dict[str, Any]:
    """One HTTP request to the local server; its JSON reply."""
    with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=timeout) as r:
        return json.loads(r.read())


@contextmanager
def served(run_dir: str | Path, args: Sequence[str], timeout_s: float):
    """A started, ready :class:`Server` and its ``/health``; stopped on exit."""
    server = Server(run_dir, args)
    try:
        yield server, server.wait_ready(timeout_s)
    finally:
        server.stop()


# --------------------------------------------------------------------------- the dialogues


def dialogue_messages(data: str | Path, split: str, health: dict[str, Any]) -> list[list[str]]:
    """Every dialogue of the dataset's `split` as the JSON messages the service takes:
    speaker and text, and the vectors of the run's other modalities (text vectors too when
    the service has no text encoder or the dataset no texts)."""
    from corect.data.format import load_dataset

    dataset = load_dataset(data, splits=[split])
    part = dataset.splits[split]
    modalities = str(health.get("modalities", ""))
    missing = [m for m in modalities if m not in part.features]
    if missing:
        raise InputError(f"{data}: has no {NAMES[missing[0]]} features, the run needs them")
    use_text = "t" in modalities and part.texts is not None and bool(health.get("text_encoder"))
    vectors = [m for m in modalities if m != "t" or not use_text]
    dialogues = []
    for d in range(len(part.dialogue_ids)):
        messages = []
        for k, row in enumerate(range(int(part.offsets[d]), int(part.offsets[d + 1]))):
            message: dict[str, Any] = {"speaker": dataset.speaker_names[int(part.speakers[row])]}
            if part.texts is not None:
                message["text"] = part.texts[d][k]
            if vectors:
                message["features"] = {NAMES[m]: part.features[m][row].tolist() for m in vectors}
            messages.append(json.dumps(message))
        if messages:
            dialogues.append(messages)
    if not dialogues:
        raise InputError(f"{data}: split {split!r} has no utterances")
    return dialogues


# --------------------------------------------------------------------------- one level


@dataclass
class Plan:
    """What every conversation of a level sends: `utterances` each (or until `duration`
    seconds when given), one every ``1 / rate`` seconds (0: at once)."""

    conversations: int
    utterances: int
    rate: float
    duration: float | None
    start: float = 0.0
    replay: bool = False  # every dialogue once (utterances ignored), replies kept

    def done(self, sent: int) -> bool:
        if self.replay:
            return False
        if self.duration is not None:
            return time.perf_counter() >= self.start + self.duration
        return sent >= self.utterances


@dataclass
class Tally:
    """What the conversations of a level measured."""

    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    examples: list[str] = field(default_factory=list)
    last_reply: float = 0.0
    still_open: list[str] = field(default_factory=list)
    # replay: (dialogue index, position) -> the reply's probabilities
    replies: dict[tuple[int, int], dict[str, float]] = field(default_factory=dict)

    def error(self, message: str) -> None:
        self.errors += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(message[:300])


async def converse(
    ws_base: str, http_base: str, dialogues: list[list[str]], worker: int, plan: Plan, tally: Tally
) -> None:
    """One conversation slot: replays dialogues ``worker, worker + N, ...`` one after
    the other, each in its own conversation id, closing each finished one (with
    ``plan.replay``: each of them once, keeping the replies)."""
    from websockets.asyncio.client import connect

    interval = 1.0 / plan.rate if plan.rate > 0 else 0.0
    next_at = plan.start + interval * worker / plan.conversations  # evenly staggered
    sent, d = 0, worker
    while not plan.done(sent) and not (plan.replay and d >= len(dialogues)):
        conversation = f"load-{plan.conversations}-{worker}-{d}"
        messages = dialogues[d % len(dialogues)]
        try:
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            async with connect(
                f"{ws_base}/v1/conversations/{conversation}",
                open_timeout=REPLY_TIMEOUT_S,
                ping_interval=None,
                compression=None,
                max_size=2**22,
            ) as ws:
                for position, message in enumerate(messages):
                    if plan.done(sent):
                        break
                    await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
                    next_at += interval
                    sent += 1
                    start = time.perf_counter()
                    await ws.send(message)
                    reply = json.loads(await asyncio.wait_for(ws.recv(), REPLY_TIMEOUT_S))
                    tally.last_reply = time.perf_counter()
                    if "error" in reply:
                        tally.error(f"{conversation}: {reply['error']}")
                    elif reply.get("index") != position:
                        tally.error(
                            f"{conversation}: reply index {reply.get('index')}, expected {position}"
                        )
                    else:
                        tally.latencies_ms.append(1000 * (tally.last_reply - start))
                        if plan.replay:
                            tally.replies[d, position] = reply["probabilities"]
        except Exception as err:  # refused, closed, timed out, not JSON: counted
            tally.error(f"{conversation}: {type(err).__name__}: {err}")
            return  # a broken connection ends this slot; the level goes on
        if plan.done(sent):
            tally.still_open.append(conversation)
        else:
            await asyncio.to_thread(close_conversation, http_base, conversation)
        d += plan.conversations


def close_conversation(http_base: str, conversation: str) -> None:
    """``DELETE`` a conversation (one already gone is fine)."""
    with suppress(OSError, ValueError):
        request("DELETE", f"{http_base}/v1/conversations/{conversation}")


async def sample_peak(server: Server, stop: asyncio.Event, every_s: float = 0.25) -> float:
    """The highest server RSS (MB) seen until `stop` is set."""
    peak = server.rss_mb()
    while not stop.is_set():
        with suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
        peak = max(peak, server.rss_mb())
    return peak


async def run_level(server: Server, dialogues: list[list[str]], plan: Plan) -> dict[str, Any]:
    """Drive one level; its measurements."""
    ws_base = f"ws://{LOOPBACK}:{server.port}"
    tally = Tally()
    rss_before, cpu_before, client_before = server.rss_mb(), server.cpu_s(), time.process_time()
    stop = asyncio.Event()
    peak = asyncio.create_task(sample_peak(server, stop))
    plan.start = time.perf_counter()
    await asyncio.gather(
        *(
            converse(ws_base, server.base, dialogues, w, plan, tally)
            for w in range(plan.conversations)
        )
    )
    seconds = max(tally.last_reply, plan.start + 1e-9) - plan.start
    cpu = server.cpu_s() - cpu_before
    client = time.process_time() - client_before
    rss_open = server.rss_mb()
    health = await asyncio.to_thread(request, "GET", f"{server.base}/health")
    stop.set()
    rss_peak = await peak
    for conversation in tally.still_open:
        await asyncio.to_thread(close_conversation, server.base, conversation)
    replies = len(tally.latencies_ms)
    return {
        "conversations": plan.conversations,
        "utterances": replies + tally.errors,
        "errors": tally.errors,
        "error_examples": tally.examples,
        "seconds": round(seconds, 3),
        "utterances_per_s": round(replies / seconds, 2),
        "latency_ms": percentiles(tally.latencies_ms),
        "open_conversations": health.get("open_conversations"),
        "batching": health.get("batching"),  # the server's figures since it started
        "server": {
            "rss_mb_before": round(rss_before, 1),
            "rss_mb_peak": round(rss_peak, 1),
            "rss_mb_open": round(rss_open, 1),
            "rss_mb_after": round(server.rss_mb(), 1),
            "cpu_s": round(cpu, 2),
            "cpu_percent": round(100 * cpu / seconds, 1),
        },
        "client_cpu_s": round(client, 2),
        "replies": tally.replies,
    }


# --------------------------------------------------------------------------- the whole test


def run_load_test(
    run_dir: str | Path,
    data: str | Path,
    *,
    conversations: int | Sequence[int] = 50,
    utterances: int = 20,
    rate: float = 1.0,
    duration: float | None = None,
    out: str | Path | None = None,
    split: str = "test",
    server_args: Sequence[str] = (),
    start_timeout_s: float = 300.0,
    progress: Callable[[str], None] | None = None,
    replay: bool = False,
) -> dict[str, Any]:
    """Load-test a causal run served on loopback; the results (also written into `out`).

    `conversations`: one level per number, run in order on the same server. Each
    conversation sends `utterances` utterances (or, with `duration`, sends until that many
    seconds have passed) at `rate` utterances per second (0: saturation). With `replay`,
    the conversations of each level replay every dialogue of the split once instead, and
    every reply is compared with ``predict`` (the batch causal model) on the same
    dialogues (:func:`compare_with_predict`; ``result["replay"]``). `server_args` go
    to ``python -m corect.serve`` (e.g. ``["--device", "cpu"]``)."""
    levels = [conversations] if isinstance(conversations, int) else list(conversations)
    if not levels or min(levels) < 1:
        raise InputError("--conversations: give one or more numbers >= 1")
    if utterances < 1 or rate < 0 or (duration is not None and duration <= 0):
        raise InputError("--utterances must be >= 1, --rate >= 0 and --duration > 0")
    say = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    with served(run_dir, server_args, start_timeout_s) as (server, health):
        dialogues = dialogue_messages(data, split, health)
        asyncio.run(warm_up(server, dialogues[0]))
        results = []
        replies: list[dict[tuple[int, int], dict[str, float]]] = []
        for n in levels:
            plan = Plan(n, utterances, rate, duration, replay=replay)
            level = asyncio.run(run_level(server, dialogues, plan))
            replies.append(level.pop("replies"))
            say(progress_line(level))
            results.append(level)
    result = {
        "run": str(run_dir),
        "data": str(data),
        "split": split,
        "rate": rate,
        "utterances": utterances,
        "duration": duration,
        "health": health,
        "cpus": os.cpu_count(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "errors": sum(level["errors"] for level in results),
        "levels": results,
    }
    if replay:
        result["replay"] = [compare_with_predict(run_dir, dialogues, r) for r in replies]
        for level, check in zip(results, result["replay"], strict=True):
            say(replay_line(level, check))
    if out is not None:
        write_results(out, result)
    return result


async def warm_up(server: Server, messages: list[str]) -> None:
    """A few utterances before measuring: the first one loads the text model."""
    plan = Plan(1, min(3, len(messages)), 0.0, None, time.perf_counter())
    tally = Tally()
    await converse(f"ws://{LOOPBACK}:{server.port}", server.base, [messages], 0, plan, tally)
    for conversation in tally.still_open:
        await asyncio.to_thread(close_conversation, server.base, conversation)
    if tally.errors:
        raise InputError(f"the service refused the dataset's utterances: {tally.examples[0]}")


# --------------------------------------------------------------------------- the replay check

TOLERANCE = 1e-5  # largest difference of a served probability from predict's


def compare_with_predict(
    run_dir: str | Path,
    dialogues: list[list[str]],
    replies: dict[tuple[int, int], dict[str, float]],
) -> dict[str, Any]:
    """Every served reply against ``predict`` (the batch causal model) on the same
    dialogues: how many were compared, the largest probability difference, how many
    utterances differ by more than :data:`TOLERANCE`, how many labels differ, and how
    many utterances got no reply."""
    from corect.inference.predictions import predict_file

    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "replayed.jsonl"
        lines = (
            json.dumps({"id": str(d), "utterances": [json.loads(m) for m in messages]})
            for d, messages in enumerate(dialogues)
        )
        source.write_text("\n".join(lines) + "\n", encoding="utf-8")
        expected = predict_file(run_dir, source, device="cpu")["dialogues"]
    largest, beyond, labels, missing = 0.0, 0, 0, 0
    for d, dialogue in enumerate(expected):
        for position, want in enumerate(dialogue["utterances"]):
            got = replies.get((d, position))
            if got is None:
                missing += 1
                continue
            diff = max(abs(got[c] - p) for c, p in want["probabilities"].items())
            largest = max(largest, diff)
            beyond += diff > TOLERANCE
            labels += max(got, key=got.get) != want["label"]
    return {
        "dialogues": len(expected),
        "compared": len(replies),
        "missing": missing,
        "max_abs_diff": largest,
        "beyond_tolerance": beyond,
        "tolerance": TOLERANCE,
        "label_differences": labels,
    }
