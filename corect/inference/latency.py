"""Streaming latency (``python -m corect.stream --bench``): milliseconds per push at
several dialogue positions, against rerunning the batch model on the whole history.

How the streaming cost stays bounded: :mod:`corect.inference.recognizer`.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from corect.config import load_config
from corect.data.batching import collate
from corect.data.dataset import DialogueRecord
from corect.inference.inputs import split_from_records
from corect.inference.recognizer import StreamingRecognizer
from corect.models.build import build_model

# One utterance of a dialogue: its speaker and its features (modality -> [D]).
Utterance = tuple[str, dict[str, torch.Tensor]]


def bench_recognizer(
    run: str | None, overrides: Sequence[str], device: str
) -> tuple[StreamingRecognizer, str]:
    """The recognizer to time: a run, or an untrained causal model of the default config
    (synthetic dims), whose cost is the same as a trained one's."""
    if run:
        return StreamingRecognizer.from_run(run, device), str(run)
    config = load_config(None, ["model.causal=true", *overrides])
    dims = {m: config.data.synthetic.dims[m] for m in config.data.modalities}
    num_speakers = config.model.num_speakers or 4
    torch.manual_seed(0)
    model = build_model(config.model, dims, 6, num_speakers)
    labels = [f"class{k}" for k in range(6)]
    m = config.model
    what = (
        f"untrained {m.name} ({config.data.modalities}, dims "
        + "/".join(f"{k} {d}" for k, d in dims.items())
        + f", hidden {m.hidden_size}, wp {m.wp})"
    )
    return StreamingRecognizer(model, config, labels, dims, device=device), what


def bench(
    recognizer: StreamingRecognizer,
    positions: Sequence[int],
    dialogues: int,
    span: int,
    recompute: int,
) -> list[dict[str, Any]]:
    """Latency per push at each position p (samples: pushes at positions p .. p+span-1 of
    `dialogues` random dialogues), and, for reference, the batch model's latency on the
    whole history up to p (`recompute` samples, their median and p99)."""
    samples, cpu, history = time_pushes(recognizer, positions, dialogues, span)
    rows = []
    for p in positions:
        row = {
            "position": p,
            "samples": len(samples[p]),
            "median_ms": statistics.median(samples[p]),
            "p99_ms": float(np.percentile(samples[p], 99)),
            "cpu_median_ms": statistics.median(cpu[p]),
            "cache_max": max(recognizer.cache_sizes(), default=0),
        }
        if recompute:
            times = time_recompute(recognizer, history[: p + 1], recompute)
            row["recompute_median_ms"] = statistics.median(times)
            row["recompute_p99_ms"] = float(np.percentile(times, 99))
        rows.append(row)
    return rows


def time_pushes(
    recognizer: StreamingRecognizer, positions: Sequence[int], dialogues: int, span: int
) -> tuple[dict[int, list[float]], dict[int, list[float]], list[Utterance]]:
    """Stream `dialogues` random dialogues (seed 0); per position p the wall-clock and
    CPU ms of the pushes at p .. p+span-1, and the first dialogue's utterances."""
    g = torch.Generator().manual_seed(0)
    length = max(positions) + span
    speakers = ["A", "B", "C"]
    samples: dict[int, list[float]] = {p: [] for p in positions}
    cpu: dict[int, list[float]] = {p: [] for p in positions}
    history: list[Utterance] = []
    for d in range(dialogues):
        recognizer.reset()
        for i in range(length):
            speaker = speakers[int(torch.randint(0, 3, (1,), generator=g))]
            feats = {m: torch.randn(dim, generator=g) for m, dim in recognizer.dims.items()}
            if d == 0:
                history.append((speaker, feats))
            start, start_cpu = time.perf_counter(), time.process_time()
            recognizer.push(speaker, feats)
            elapsed = 1000 * (time.perf_counter() - start)
            elapsed_cpu = 1000 * (time.process_time() - start_cpu)
            for p in positions:
                if p <= i < p + span:
                    samples[p].append(elapsed)
                    cpu[p].append(elapsed_cpu)
    return samples, cpu, history


def time_recompute(
    recognizer: StreamingRecognizer, history: Sequence[Utterance], repeats: int
) -> list[float]:
    """Ms of `repeats` runs of the batch model on the dialogue `history`."""
    record = DialogueRecord(
        "bench",
        [s for s, _ in history],
        [-1] * len(history),
        {m: torch.stack([f[m] for _, f in history]).numpy() for m in recognizer.dims},
    )
    batch = collate(split_from_records([record], recognizer.dims), [0])
    batch = batch.to(recognizer.device)
    times = []
    with torch.inference_mode():
        for _ in range(repeats):
            start = time.perf_counter()
            recognizer.model(batch)
            times.append(1000 * (time.perf_counter() - start))
    return times


def format_bench(rows: list[dict[str, Any]], what: str) -> str:
    """The rows of :func:`bench` as a Markdown table, with what was timed and the load."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        f"Streaming latency, {what}, {torch.get_num_threads()} thread(s), machine load "
        f"{load:.1f}. Wall-clock ms per push (median, p99), its CPU time (median), and the "
        "batch model rerun on the whole history up to that position (median):",
        "",
        "| Position | Pushes timed | Median ms/utterance | p99 ms | CPU median ms "
        "| Batch recompute ms |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        recompute = f"{r['recompute_median_ms']:.2f}" if "recompute_median_ms" in r else "-"
        lines.append(
            f"| {r['position']} | {r['samples']} | {r['median_ms']:.2f} | {r['p99_ms']:.2f} "
            f"| {r['cpu_median_ms']:.2f} | {recompute} |"
        )
    return "\n".join(lines)
