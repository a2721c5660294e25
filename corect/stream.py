"""Streaming recognition: one utterance in, one prediction out, with bounded cost.

    recognizer = StreamingRecognizer.from_run("runs/.../corect-causal/RUN")
    recognizer.reset()  # a new dialogue
    prediction = recognizer.push("Ann", features={"a": audio, "v": visual}, text="Hi!")
    prediction.label, prediction.probabilities, prediction.index

Only causal runs stream (``model.causal: true``); an offline run is refused, since its
predictions need the utterances that come later. The outputs equal the batch causal
model's on the same dialogue (``tests/test_stream.py``).

**How the cost stays bounded.** In causal mode every layer's output at utterance i
depends only on the previous layer's outputs at utterances ``[i - wp, i]`` (attention
blocks, graph layers), or on utterance i alone (MLP encoders, cross-modal edges, the
head), and past outputs never change. So every causal model has, beside its batch
``forward``, a ``step(features, party, position, cache)`` that computes only the new
utterance's row of each layer from a cache of the window (``init_cache()``; keys and
values of attention, graph inputs, recurrent states), in the model's own file
(:mod:`corect.models.caches`). The recognizer only strings the pushes together: a push
costs the same at utterance 200 as at utterance 20. With ``wp = -1`` (whole past) the
windows grow with the dialogue and so does the cost.

Models: CORECT (every encoder kind and ablation) and every fusion baseline, including
``context``, have a step. Any other model (no ``step``) falls back to recomputing the
whole history at every push (correct, but its cost grows; ``bounded`` says which).

Latency: ``python -m corect.stream --bench [--figure latency.png]`` (median and p99 ms
per utterance at several dialogue positions, against rerunning the batch model on the
whole history; the figure draws both against the position). Dialogues from a file:
``python -m corect.stream --run RUN --input dialogues.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from corect.common import plots
from corect.common.errors import INPUT_ERRORS, report
from corect.common.files import check_output, write_atomic, write_json_atomic
from corect.common.runtime import DEFAULT_DEVICE, select_device
from corect.config import ConfigError, add_overrides_argument, load_config
from corect.data.batching import collate
from corect.data.format import DialogueRecord
from corect.inference.inputs import split_from_records
from corect.inference.recognizer import Prediction, StreamingRecognizer
from corect.models.build import build_model

__all__ = ["Prediction", "StreamingRecognizer", "bench", "main", "stream_file"]

# --- command line ---------------------------------------------------------------------


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
    g = torch.Generator().manual_seed(0)
    length = max(positions) + span
    speakers = ["A", "B", "C"]
    samples: dict[int, list[float]] = {p: [] for p in positions}
    cpu: dict[int, list[float]] = {p: [] for p in positions}
    history: list[tuple[str, dict[str, torch.Tensor]]] = []
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
            record = DialogueRecord(
                "bench",
                [s for s, _ in history[: p + 1]],
                [-1] * (p + 1),
                {
                    m: torch.stack([f[m] for _, f in history[: p + 1]]).numpy()
                    for m in recognizer.dims
                },
            )
            batch = collate(split_from_records([record], recognizer.dims), [0])
            batch = batch.to(recognizer.device)
            times = []
            with torch.inference_mode():
                for _ in range(recompute):
                    start = time.perf_counter()
                    recognizer.model(batch)
                    times.append(1000 * (time.perf_counter() - start))
            row["recompute_median_ms"] = statistics.median(times)
            row["recompute_p99_ms"] = float(np.percentile(times, 99))
        rows.append(row)
    return rows


def format_bench(rows: list[dict[str, Any]], what: str) -> str:
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


def stream_file(recognizer: StreamingRecognizer, path: str | Path) -> list[dict[str, Any]]:
    """Stream every dialogue of a JSONL file (format: :mod:`corect.data.jsonl`); per
    utterance the prediction and the push latency."""
    from corect.data.jsonl import read_jsonl

    results = []
    for dialogue in read_jsonl(path, recognizer.labels, require_labels=False, default_split="test"):
        recognizer.reset()
        utterances = []
        for k in range(len(dialogue)):
            start = time.perf_counter()
            p = recognizer.push(dialogue.speakers[k], dialogue.features[k], dialogue.texts[k])
            utterances.append(
                {
                    "index": p.index,
                    "speaker": dialogue.speakers[k],
                    "label": p.label,
                    "probabilities": {c: round(x, 6) for c, x in p.probabilities.items()},
                    "ms": round(1000 * (time.perf_counter() - start), 3),
                }
            )
            if dialogue.labels[k] is not None:
                utterances[-1]["true_label"] = dialogue.labels[k]
        results.append({"id": dialogue.id, "utterances": utterances})
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m corect.stream",
        description=(
            "Stream dialogues utterance by utterance through a causal run (--run, --input),\n"
            "or measure the streaming latency (--bench). Each layer computes only the new\n"
            "utterance's row, from a cache of the last wp + 1 utterances (the model's step),\n"
            "so a push costs the same at any point of a long dialogue. With\n"
            "model.wp = -1 (the whole past) the windows, and the cost, grow with the\n"
            "dialogue. Offline runs are refused: their predictions need later utterances."
        ),
        epilog=(
            "Examples:\n"
            "  python -m corect.stream --run RUN_DIR --input dialogues.jsonl\n"
            "  python -m corect.stream --bench              # default CORECT, synthetic dims\n"
            "  python -m corect.stream --bench --run RUN_DIR --positions 10,100\n"
            "  python -m corect.stream --bench --output bench.json   # + bench.png"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--run", help="causal run directory (offline runs are refused)")
    parser.add_argument("--input", help="JSONL dialogues to stream (the format of data_prep.jsonl)")
    parser.add_argument(
        "--output", help="write the predictions as JSONL here (bench: the rows as JSON)"
    )
    parser.add_argument(
        "--figure",
        help="bench: draw the latency against the position to this PNG (default with "
        "--output: beside it, same name, .png)",
    )
    parser.add_argument(
        "--bench",
        action="store_true",
        help="time pushes: median and p99 ms per utterance at --positions (without --run: "
        "an untrained causal CORECT of the default config, dims t 384 / a 100 / v 512)",
    )
    parser.add_argument(
        "--positions",
        default="10,50,100,200",
        help="bench: dialogue positions to report, 0-based (default %(default)s)",
    )
    parser.add_argument(
        "--dialogues", type=int, default=10, help="bench: dialogues streamed (default %(default)s)"
    )
    parser.add_argument(
        "--span",
        type=int,
        default=10,
        help="bench: pushes timed from each position on (default %(default)s)",
    )
    parser.add_argument(
        "--recompute",
        type=int,
        default=3,
        help="bench: timings of the batch model on the whole history, for reference (0 = off)",
    )
    add_overrides_argument(
        parser, "bench without --run: config overrides, e.g. model.wp=-1 data.modalities=t"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (default %(default)s)"
    )
    parser.add_argument(
        "--device", default=DEFAULT_DEVICE, help="auto | cpu | cuda (default %(default)s)"
    )
    parser.add_argument("--text-model", default=None, help="local text model directory")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        device = str(select_device(args.device))
        if args.bench:
            positions = [int(p) for p in args.positions.split(",") if p.strip()]
            recognizer, what = bench_recognizer(args.run, args.overrides, device)
            rows = bench(recognizer, positions, args.dialogues, args.span, args.recompute)
            print(format_bench(rows, what))
            if not recognizer.bounded:
                print("note: unbounded past (wp = -1) or recompute fallback: cost grows")
            if args.output:
                write_json_atomic(args.output, rows)
            figure = args.figure or (args.output and Path(args.output).with_suffix(".png"))
            if figure:
                title = f"Streaming latency, {what}, {torch.get_num_threads()} thread(s)"
                with plots.never_fatal("the latency figure"):
                    plots.save_figure(plots.latency_figure(rows, title), figure)
                    print(f"figure: {figure}")
            return 0
        if not (args.run and args.input):
            raise ConfigError("give --run and --input, or --bench")
        check_output(args.output, args.input)
        recognizer = StreamingRecognizer.from_run(args.run, device, args.text_model)
        results = stream_file(recognizer, args.input)
    except INPUT_ERRORS as err:
        return report(err)
    if args.output:
        lines = [json.dumps(d, ensure_ascii=False) for d in results]
        write_atomic(args.output, "\n".join(lines) + "\n")
        print(f"{sum(len(d['utterances']) for d in results)} utterances -> {args.output}")
    else:
        for d in results:
            print(f"dialogue {d['id']}")
            for u in d["utterances"]:
                truth = f" (true: {u['true_label']})" if "true_label" in u else ""
                print(
                    f"  {u['index']:4d}  {u['speaker'][:16]:<16} {u['label']:<12} "
                    f"{u['probabilities'][u['label']]:5.2f}  {u['ms']:7.2f} ms{truth}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
