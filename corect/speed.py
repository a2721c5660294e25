"""Speed benchmark: ``python -m corect.speed [--modalities tav,t] [--epochs 2]``.

Measures, on IEMOCAP-sized synthetic data (the embedded default: 120 train+dev
dialogues, about 5,000 training utterances, dims t 384 / a 100 / v 512) with the
published sizes (batch 10, hidden 100, wp 11, wf 5, 7 graph heads):

- graph construction time per batch of 10 dialogues (mean and max over an epoch);
- seconds per training epoch: the training loop's own step (:func:`corect.engine.runs.train_step`:
  modality dropout, autocast, loss, backward, clipping, optimizer step; no evaluation);
- training and inference throughput in utterances per second.

Results are printed as a table and written to ``runs/speed/<date-time>.json``. Use a
quiet machine: the figures are wall-clock times.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import datetime
from pathlib import Path

import torch
from torch import nn

from corect.common.errors import INPUT_ERRORS, report
from corect.common.files import write_json_atomic
from corect.common.runtime import DEFAULT_DEVICE, keep_freed_memory, select_device
from corect.config import add_overrides_argument, load_config
from corect.data.batching import iterate_batches
from corect.engine.runs import (
    build_optimizer,
    grad_scaler,
    load_data,
    model_for,
    predict,
    train_step,
)
from corect.models.graph import build_graph


def time_graph(
    lengths_per_batch: list[torch.Tensor], modalities: int, wp: int, wf: int, repeats: int = 5
) -> tuple[float, float]:
    """Mean and max milliseconds to build one batch's graph."""
    times = []
    for lengths in lengths_per_batch:
        start = time.perf_counter()
        for _ in range(repeats):
            build_graph(lengths, modalities, wp, wf)
        times.append((time.perf_counter() - start) / repeats * 1000)
    return sum(times) / len(times), max(times)


def measure(modalities: str, epochs: int, device_name: str, overrides: list[str]) -> dict:
    """Timings for one modality set."""
    config = load_config(None, [f"data.modalities={modalities}", *overrides])
    torch.manual_seed(0)
    device = select_device(device_name)
    dataset = load_data(config)
    train_split = dataset.splits["train"]
    model = model_for(config, dataset).to(device)
    optimizer = build_optimizer(config, model)
    batch_size = config.train.batch_size
    batches = list(iterate_batches(train_split, batch_size))
    graph_mean, graph_max = time_graph(
        [b.lengths_cpu for b in batches], len(modalities), config.model.wp, config.model.wf
    )
    scaler = grad_scaler(config, device)
    loss_fn = nn.CrossEntropyLoss(ignore_index=-1)
    epoch_times = []
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs + 1):  # the first epoch warms up and is not counted
        model.train()
        start = time.perf_counter()
        for batch in iterate_batches(
            train_split,
            batch_size,
            shuffle=True,
            generator=generator,
            bucket_by_length=config.train.bucket_by_length,
        ):
            train_step(model, batch, config, optimizer, scaler, loss_fn, generator, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        epoch_times.append(time.perf_counter() - start)
    epoch = sum(epoch_times[1:]) / epochs
    start = time.perf_counter()
    predict(model, train_split, batch_size, device)
    inference = time.perf_counter() - start
    n = train_split.num_utterances
    return {
        "modalities": modalities,
        "train_dialogues": train_split.num_dialogues,
        "train_utterances": n,
        "batches_per_epoch": len(batches),
        "graph_ms_per_batch_mean": graph_mean,
        "graph_ms_per_batch_max": graph_max,
        "seconds_per_epoch": epoch,
        "train_utterances_per_s": n / epoch,
        "inference_utterances_per_s": n / inference,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m corect.speed",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--modalities", default="tav,t", help="comma-separated modality sets")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs (after one warm-up)")
    parser.add_argument("--device", default=DEFAULT_DEVICE, help="auto | cpu | cuda")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    add_overrides_argument(parser, "config overrides, e.g. model.gnn_heads=4")
    parser.add_argument("--out", default="runs/speed", help="directory for the JSON result")
    args = parser.parse_args(argv)
    keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = str(select_device(args.device))
        results = [
            measure(m, args.epochs, device, args.overrides) for m in args.modalities.split(",")
        ]
    except INPUT_ERRORS as err:
        return report(err)
    header = (
        "| modalities | train utts | graph ms/batch (mean/max) | s/epoch | "
        "train utt/s | infer utt/s | params |\n|---|---|---|---|---|---|---|"
    )
    rows = [
        f"| {r['modalities']} | {r['train_utterances']} | {r['graph_ms_per_batch_mean']:.2f} / "
        f"{r['graph_ms_per_batch_max']:.2f} | {r['seconds_per_epoch']:.2f} | "
        f"{r['train_utterances_per_s']:.0f} | {r['inference_utterances_per_s']:.0f} | "
        f"{r['parameters']:,} |"
        for r in results
    ]
    table = "\n".join([header, *rows])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    write_json_atomic(
        path,
        {
            "results": results,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": platform.processor() or platform.machine(),
            "device": device,
        },
    )
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    print(table)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
