"""Serve a causal run to many live conversations at once, or load-test it.

    python -m corect.serve --run RUN_DIR [--host 127.0.0.1] [--port 8765]
    python -m corect.serve --bench --run RUN_DIR --data DATASET_DIR --conversations 1,10,50

The service (WebSocket ``/v1/conversations/{id}``, ``POST .../utterances``, ``GET
/health``, the live page at ``/``): :mod:`corect.serving.app`; its protocol with an example
client is in the README ("Serving live conversations"). The load test:
:mod:`corect.serving.load`. Needs the ``serve`` extra (``pip install -e .[serve]``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from corect.common.errors import INPUT_ERRORS, report
from corect.common.files import output_directory
from corect.common.runtime import DEFAULT_DEVICE, keep_freed_memory, timestamp
from corect.config import ConfigError

if TYPE_CHECKING:
    from corect.serving.app import ServeSettings

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m corect.serve",
        description=(
            "Serve a causal run (--run) to many live conversations at once: one JSON message\n"
            "per utterance over WebSocket /v1/conversations/{id} (or POST\n"
            "/v1/conversations/{id}/utterances), one prediction back each. One model is\n"
            "shared; texts are encoded with the run's own text encoder, batched across the\n"
            "conversations that send at the same moment. Offline runs are refused.\n"
            "--bench starts the service on loopback and load-tests it with real dialogues."
        ),
        epilog=(
            "Examples:\n"
            "  python -m corect.serve --run RUN_DIR            # http://127.0.0.1:8765/\n"
            "  python -m corect.serve --run RUN_DIR --max-conversations 500 --idle-timeout 60\n"
            "  python -m corect.serve --bench --run RUN_DIR --data runs/data/meld_emotion_l246 \\\n"
            "      --conversations 1,10,50 --utterances 20 --rate 1\n"
            "  python -m corect.serve --bench --run RUN_DIR --data runs/data/meld_emotion_l246 \\\n"
            "      --conversations 50 --rate 0 --replay   # served = predict, whole test split"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--run", help="causal run directory (offline runs are refused)")
    parser.add_argument("--host", default="127.0.0.1", help="address (default %(default)s)")
    parser.add_argument("--port", type=int, default=8765, help="port (default %(default)s)")
    add_limit_arguments(parser)
    parser.add_argument(
        "--device", default=DEFAULT_DEVICE, help="auto | cpu | cuda (default %(default)s)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="model threads; each encodes and steps a share of every batch (default: the "
        "CPU count, at most 4)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads, shared by the workers (default: the CPU count divided by "
        "--workers, at least 1)",
    )
    parser.add_argument("--text-model", default=None, help="local text model directory")
    parser.add_argument(
        "--log-level", default="warning", help="uvicorn log level (default %(default)s)"
    )
    add_bench_arguments(parser)
    return parser


def add_limit_arguments(parser: argparse.ArgumentParser) -> None:
    """The service's limits and micro-batching (:class:`corect.serving.app.ServeSettings`)."""
    parser.add_argument(
        "--max-conversations",
        type=int,
        default=2000,
        help="open conversations at most; new ones are refused beyond (default %(default)s)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=600.0,
        help="seconds without an utterance after which a conversation is closed and its "
        "state freed (default %(default)s)",
    )
    parser.add_argument(
        "--max-message-bytes",
        type=int,
        default=1 << 20,
        help="largest message taken (default %(default)s)",
    )
    parser.add_argument(
        "--batch-wait-ms",
        type=float,
        default=5.0,
        help="micro-batching: how long the first utterance of a batch waits for others "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--max-batch", type=int, default=64, help="utterances per batch at most (default 64)"
    )


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``--bench`` (the load test, :mod:`corect.serving.load`)."""
    parser.add_argument(
        "--bench",
        action="store_true",
        help="load test: start the service on loopback, drive --conversations concurrent "
        "WebSocket conversations replaying --data's dialogues, report utterances/s, p50/p99 "
        "latency, memory and errors",
    )
    parser.add_argument("--data", help="bench: a corect-format dataset (its texts are replayed)")
    parser.add_argument(
        "--split", default="test", help="bench: the split replayed (default %(default)s)"
    )
    parser.add_argument(
        "--conversations",
        default="50",
        help="bench: concurrent conversations, or a list (1,10,50) for the figure "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--utterances",
        type=int,
        default=20,
        help="bench: utterances per conversation (default %(default)s)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=1.0,
        help="bench: utterances per second per conversation, 0 = as fast as possible "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--duration", type=float, default=None, help="bench: send for this many seconds instead"
    )
    parser.add_argument(
        "--replay",
        action="store_true",
        help="bench: the conversations replay every dialogue of --split once (instead of "
        "--utterances each), and every reply is compared with predict (the batch causal "
        "model) on the same dialogues: largest difference, how many beyond 1e-5",
    )
    parser.add_argument("--out", help="bench: output folder (default runs/serve-bench/<date-time>)")


def settings_from(args: argparse.Namespace) -> ServeSettings:
    """The service's settings from the options (checked)."""
    from corect.serving.app import ServeSettings

    cpus = os.cpu_count() or 1
    workers = args.workers or min(4, cpus)
    threads = args.threads or max(1, cpus // workers)
    settings = ServeSettings(
        max_conversations=args.max_conversations,
        idle_timeout_s=args.idle_timeout,
        max_message_bytes=args.max_message_bytes,
        batch_wait_ms=args.batch_wait_ms,
        max_batch=args.max_batch,
        device=args.device,
        text_model=args.text_model,
        workers=workers,
        threads=threads,
    )
    settings.check()
    return settings


def server_arguments(args: argparse.Namespace) -> list[str]:
    """The options the bench passes on to the service it starts."""
    out = ["--max-conversations", str(args.max_conversations)]
    out += ["--idle-timeout", str(args.idle_timeout), "--max-batch", str(args.max_batch)]
    out += ["--batch-wait-ms", str(args.batch_wait_ms), "--device", args.device]
    out += ["--max-message-bytes", str(args.max_message_bytes)]
    if args.workers:
        out += ["--workers", str(args.workers)]
    if args.threads:
        out += ["--threads", str(args.threads)]
    if args.text_model:
        out += ["--text-model", args.text_model]
    return out


def bench(args: argparse.Namespace) -> int:
    """``--bench``: the load test; prints its results folder last."""
    from corect.serving.load import run_load_test

    if not (args.run and args.data):
        raise ConfigError("--bench needs --run RUN_DIR and --data DATASET_DIR")
    try:
        levels = [int(n) for n in args.conversations.split(",") if n.strip()]
    except ValueError:
        raise ConfigError(
            f"--conversations: {args.conversations!r} is not a list of numbers"
        ) from None
    settings_from(args)  # the service's options, checked before it starts
    out = (
        Path(args.out) if args.out else output_directory(Path("runs") / "serve-bench", timestamp())
    )
    run_load_test(
        args.run,
        args.data,
        conversations=levels[0] if len(levels) == 1 else levels,
        utterances=args.utterances,
        rate=args.rate,
        duration=args.duration,
        out=out,
        split=args.split,
        server_args=server_arguments(args),
        replay=args.replay,
    )
    print(out)
    return 0


def serve(args: argparse.Namespace) -> int:
    """Serve the run with uvicorn until stopped (Ctrl-C)."""
    try:
        import uvicorn

        from corect.serving.app import create_app
    except ImportError as err:
        raise ConfigError(
            f"the service needs the serve extra ({err.name} is missing): pip install -e .[serve]"
        ) from None
    if not args.run:
        raise ConfigError("give --run RUN_DIR (a causal run), or --bench")
    settings = settings_from(args)
    app = create_app(args.run, settings=settings)
    health = app.state.service.health()
    where = f"http://{args.host}:{args.port}"
    print(
        f"serving {args.run} ({health['modalities']}, {len(health['labels'])} labels) on "
        f"{where}/ (WebSocket {where.replace('http', 'ws', 1)}/v1/conversations/ID)",
        flush=True,
    )
    if args.host not in LOOPBACK:
        print(f"warning: listening on {args.host}, not only on this machine", file=sys.stderr)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        ws_max_size=max(16 << 20, 4 * settings.max_message_bytes),
        ws_per_message_deflate=False,  # small JSON messages: compressing costs more CPU
        lifespan="on",
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    try:
        return bench(args) if args.bench else serve(args)
    except INPUT_ERRORS as err:
        return report(err)


if __name__ == "__main__":
    sys.exit(main())
