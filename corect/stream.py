"""Stream dialogues through a causal run, one utterance at a time, or time it.

    python -m corect.stream --run RUN_DIR --input dialogues.jsonl [--output out.jsonl]
    python -m corect.stream --bench [--run RUN_DIR] [--figure latency.png]

The library: the recognizer and how its cost stays bounded,
:mod:`corect.inference.recognizer`; the latency bench, :mod:`corect.inference.latency`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from corect.common import plots
from corect.common.errors import INPUT_ERRORS, report
from corect.common.files import check_output, write_atomic, write_json_atomic
from corect.common.runtime import DEFAULT_DEVICE, keep_freed_memory, select_device
from corect.config import ConfigError, add_overrides_argument
from corect.inference.latency import bench, bench_recognizer, format_bench
from corect.inference.recognizer import StreamingRecognizer, stream_file


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
    add_bench_arguments(parser)
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


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``--bench`` (the latency bench)."""
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()
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
