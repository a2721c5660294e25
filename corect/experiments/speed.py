"""The speed benchmark behind ``python -m corect.speed``: graph construction, a training
epoch and inference, timed on one config per modality set (:func:`run_speed`).

:func:`measure` times, for one modality set:

- graph construction per batch (mean and max over an epoch);
- seconds per training epoch: the training loop's own step
  (:func:`corect.engine.training.train_step`: modality dropout, autocast, loss, backward,
  clipping, optimizer step; no evaluation), after one warm-up epoch;
- training and inference throughput in utterances per second;
- the per-epoch training-state write (:func:`corect.engine.state.save_training_state`,
  what ``train --resume`` needs), in seconds and as a share of the epoch.

The figures are wall-clock times: use a quiet machine.
"""

from __future__ import annotations

import platform
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from corect.common.files import write_json_atomic
from corect.common.runtime import grad_scaler, select_device, timestamp
from corect.config import Config, load_config
from corect.data.batching import iterate_batches
from corect.engine.checkpoints import load_data, model_for
from corect.engine.scoring import predict
from corect.engine.state import Loop, Progress, save_training_state
from corect.engine.training import build_optimizer, build_scheduler, train_step
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
    scaler = grad_scaler(device, config.train.amp)
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
    loop = Loop(model, optimizer, build_scheduler(config, optimizer), scaler, generator)
    state_write = time_state_write(config, loop, epoch_times)
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
        "state_write_seconds": state_write,
        "state_write_share": state_write / epoch,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def time_state_write(
    config: Config, loop: Loop, epoch_times: list[float], repeats: int = 3
) -> float:
    """Mean seconds to write the training state of `loop` (as ``fit`` does every epoch),
    into a temporary folder."""
    progress = Progress(epoch=len(epoch_times), epoch_times=list(epoch_times))
    times = []
    with tempfile.TemporaryDirectory(prefix="corect-speed-") as folder:
        writer = SummaryWriter(log_dir=folder)
        for _ in range(repeats):
            start = time.perf_counter()
            save_training_state(Path(folder), config, progress, loop, writer)
            times.append(time.perf_counter() - start)
        writer.close()
    return sum(times) / len(times)


@dataclass
class SpeedReport:
    """The timings of every modality set, where they ran, and the JSON file written."""

    results: list[dict[str, Any]]
    device: str
    threads: int
    path: Path

    def header(self) -> str:
        return f"torch {torch.__version__}, {self.threads} threads, device {self.device}"

    def table(self) -> str:
        """One Markdown row per modality set."""
        header = (
            "| modalities | train utts | graph ms/batch (mean/max) | s/epoch | "
            "train utt/s | infer utt/s | state write s (% of epoch) | params |\n"
            "|---|---|---|---|---|---|---|---|"
        )
        rows = [
            f"| {r['modalities']} | {r['train_utterances']} | "
            f"{r['graph_ms_per_batch_mean']:.2f} / {r['graph_ms_per_batch_max']:.2f} | "
            f"{r['seconds_per_epoch']:.2f} | {r['train_utterances_per_s']:.0f} | "
            f"{r['inference_utterances_per_s']:.0f} | {r['state_write_seconds']:.2f} "
            f"({100 * r['state_write_share']:.1f}%) | {r['parameters']:,} |"
            for r in self.results
        ]
        return "\n".join([header, *rows])


def run_speed(
    modalities: Sequence[str],
    epochs: int,
    device_name: str,
    overrides: Sequence[str] = (),
    out_dir: str | Path | None = None,
    threads: int = 0,
) -> SpeedReport:
    """Time every modality set (`threads`: torch's threads, 0 = its default); write
    ``<date-time>.json`` under `out_dir` (default ``<train.runs_dir>/speed``)."""
    if threads:
        torch.set_num_threads(threads)
    device = str(select_device(device_name))
    results = [measure(m, epochs, device, list(overrides)) for m in modalities]
    out = Path(out_dir or Path(load_config(None, list(overrides)).train.runs_dir) / "speed")
    out.mkdir(parents=True, exist_ok=True)
    report = SpeedReport(results, device, torch.get_num_threads(), out / f"{timestamp()}.json")
    write_json_atomic(
        report.path,
        {
            "results": results,
            "torch": torch.__version__,
            "threads": report.threads,
            "machine": platform.processor() or platform.machine(),
            "device": device,
        },
    )
    return report
