"""What each part of a trained model does: the evidence behind docs/parts.md.

:func:`diagnose` measures, for a trained model and a split, per part (the encoders,
RT-GCN, P-CM's cross-modal and fuse stacks, the head):

- ``drift``: how far training moved its weights, :math:`\\lVert\\theta-\\theta_0\\rVert /
  \\lVert\\theta_0\\rVert` against the initial weights (the same seed rebuilds them);
- ``grad_norm``: the norm of its gradient of the mean loss over the split, at the initial
  and at the trained weights (does the loss reach it at all?);
- ``residual``: for every attention block, how much it changes its input,
  :math:`\\lVert f(x) - x\\rVert / \\lVert x\\rVert`, and for RT-GCN's two layers how large
  the neighbours' messages are beside the node's own term (RGCN root, graph-transformer
  skip);
- ``entropy``: attention entropy over the keys each query may see, divided by its
  maximum (1 = uniform, 0 = one key), for P-CM's blocks and the graph transformer;
- ``ablation`` (CORECT): the split's accuracy when one block of the head's input (encoder
  skip, RT-GCN, P-CM) is replaced by its mean over the split: what the classifier uses.

Dialogues are fed one at a time (no padding), in evaluation mode. :func:`diagnose_run`
does it for a run directory (``python -m corect.diagnose``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch_geometric.nn import RGCNConv, TransformerConv
from torch_geometric.utils import scatter

from corect.common.files import write_json_atomic
from corect.common.runtime import seed_everything
from corect.data.batching import iterate_batches
from corect.data.dataset import SplitData
from corect.engine.checkpoints import check_run_data, load_data, load_run, model_for
from corect.models.attention import AttentionBlock


def part_name(parameter: str) -> str:
    """The part a parameter belongs to: its top module (P-CM split into cross and fuse)."""
    parts = parameter.split(".")
    return ".".join(parts[:2]) if parts[0] == "pcm" else parts[0]


def by_part(model: nn.Module, values: Callable[[str, torch.Tensor], tuple[float, float]]) -> dict:
    """sqrt(sum a) / sqrt(sum b) per part, with (a, b) = values(name, parameter)."""
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for name, parameter in model.named_parameters():
        a, b = values(name, parameter)
        sums[part_name(name)][0] += a
        sums[part_name(name)][1] += b
    return {part: math.sqrt(a) / max(math.sqrt(b), 1e-12) for part, (a, b) in sums.items()}


@torch.no_grad()
def parameter_drift(model: nn.Module, initial: nn.Module) -> dict[str, float]:
    """Per part, the relative distance of the weights from their initial values."""
    start = dict(initial.named_parameters())
    return by_part(
        model,
        lambda n, p: (float((p - start[n]).pow(2).sum()), float(start[n].pow(2).sum())),
    )


def gradient_norms(model: nn.Module, split: SplitData) -> dict[str, float]:
    """Per part, the gradient norm of the split's mean cross-entropy (eval mode),
    divided by the square root of the part's parameter count."""
    model.eval()
    model.zero_grad(set_to_none=True)
    total = max(int((split.labels >= 0).sum()), 1)
    for batch in iterate_batches(split, 1):
        logits = model(batch)
        loss = nn.functional.cross_entropy(logits, batch.labels, ignore_index=-1, reduction="sum")
        (loss / total).backward()
    norms = by_part(
        model,
        lambda n, p: (0.0 if p.grad is None else float(p.grad.pow(2).sum()), p.numel()),
    )
    model.zero_grad(set_to_none=True)
    return norms


Records = dict[str, dict[str, list[float]]]  # "residual" / "entropy" -> module -> values


@contextmanager
def recording(model: nn.Module) -> Iterator[Records]:
    """Forward hooks that record residual ratios and attention entropies by module name."""
    records: Records = {"residual": defaultdict(list), "entropy": defaultdict(list)}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, AttentionBlock):
            handles.append(module.register_forward_hook(_block_hook(name, records)))
            handles.append(
                module.attention.register_forward_hook(
                    _attention_hook(name, records), with_kwargs=True
                )
            )
        elif isinstance(module, TransformerConv):
            handles.append(module.register_forward_hook(_graph_attention_hook(name, records)))
        elif isinstance(module, RGCNConv):
            handles.append(module.register_forward_hook(_relational_hook(name, records)))
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()


def _ratio(change: torch.Tensor, base: torch.Tensor) -> float:
    return float(change.norm() / base.norm().clamp(min=1e-12))


def _block_hook(name: str, records: Records) -> Callable:
    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        records["residual"][name].append(_ratio(output - args[0], args[0]))

    return hook


def _normalised_entropy(weights: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Entropy of attention rows over their allowed keys / log(#allowed); rows with a
    single allowed key are dropped."""
    entropy = -(weights * weights.clamp(min=1e-12).log()).sum(-1)
    count = allowed.sum(-1).float()
    keep = count > 1
    return entropy[keep] / count[keep].log()


def _attention_hook(name: str, records: Records) -> Callable:
    def hook(module: nn.MultiheadAttention, args: tuple, kwargs: dict, output: Any) -> None:
        if output[1] is not None:  # our own call below
            return
        query, key, value = args[:3]
        mask = kwargs.get("attn_mask")
        with torch.no_grad():
            _, weights = module(
                query, key, value, attn_mask=mask, need_weights=True, average_attn_weights=False
            )  # [B, heads, T, T]
        allowed = torch.ones_like(weights, dtype=torch.bool)
        if mask is not None:
            allowed = ~mask.view(weights.shape)
        records["entropy"][name].append(float(_normalised_entropy(weights, allowed).mean()))

    return hook


def _graph_attention_hook(name: str, records: Records) -> Callable:
    def hook(module: TransformerConv, args: tuple, output: Any) -> None:
        if isinstance(output, tuple):  # our own call below
            return
        x, edge_index = args[:2]
        with torch.no_grad():
            _, (edges, alpha) = module(x, edge_index, return_attention_weights=True)
            skip = module.lin_skip(x)
        target = edges[1]
        entropy = scatter(-(alpha * alpha.clamp(min=1e-12).log()), target, 0, dim_size=len(x))
        degree = scatter(torch.ones_like(target, dtype=x.dtype), target, 0, dim_size=len(x))
        keep = degree > 1
        records["entropy"][name].append(float((entropy[keep] / degree[keep, None].log()).mean()))
        records["residual"][name].append(_ratio(output - skip, skip))

    return hook


def _relational_hook(name: str, records: Records) -> Callable:
    def hook(module: RGCNConv, args: tuple, output: torch.Tensor) -> None:
        root = args[0] @ module.root + module.bias
        records["residual"][name].append(_ratio(output - root, root))

    return hook


def head_blocks(model: nn.Module) -> list[tuple[str, int, int]]:
    """(name, first column, end column) of each block of CORECT's head input
    (:attr:`CORECT.head_blocks`); empty for other models."""
    blocks, start = [], 0
    for name, width in getattr(model, "head_blocks", []):
        blocks.append((name, start, start + width))
        start += width
    return blocks


@torch.no_grad()
def head_ablation(model: nn.Module, split: SplitData) -> dict[str, float]:
    """Accuracy on `split` as is (``none``) and with each head-input block replaced by its
    mean over the split (CORECT only)."""
    model.eval()
    inputs: list[torch.Tensor] = []
    handle = model.head.register_forward_pre_hook(lambda m, a: inputs.append(a[0]))
    for batch in iterate_batches(split, 1):
        model(batch)
    handle.remove()
    z = torch.cat(inputs)
    labels = split.labels
    keep = labels >= 0

    def accuracy(features: torch.Tensor) -> float:
        return float((model.head(features).argmax(1) == labels)[keep].float().mean())

    scores = {"none": accuracy(z)}
    for name, start, end in head_blocks(model):
        ablated = z.clone()
        ablated[:, start:end] = z[:, start:end].mean(0)
        scores[name] = accuracy(ablated)
    return scores


def diagnose(model: nn.Module, initial: nn.Module, split: SplitData) -> dict[str, Any]:
    """Every measurement above for `model` (trained) and `initial` (its initial weights)
    on `split`."""
    model.eval()
    with recording(model) as records, torch.no_grad():
        for batch in iterate_batches(split, 1):
            model(batch)
    return {
        "drift": parameter_drift(model, initial),
        "grad_norm_initial": gradient_norms(initial, split),
        "grad_norm_trained": gradient_norms(model, split),
        **{
            kind: {name: sum(v) / len(v) for name, v in values.items()}
            for kind, values in records.items()
        },
        "ablation": head_ablation(model, split),
    }


def diagnose_run(run_dir: str | Path, split: str = "dev") -> dict[str, Any]:
    """:func:`diagnose` for a run's best checkpoint against its initial weights (rebuilt
    from the run's seed), on CPU; also written to ``RUN_DIR/diagnose-<split>.json``."""
    config, model, checkpoint = load_run(run_dir, "cpu")
    dataset = load_data(config)
    check_run_data(run_dir, checkpoint, dataset)
    seed_everything(config.train.seed)  # as corect.engine.training.train, before the model
    initial = model_for(config, dataset)
    results = diagnose(model, initial, dataset.splits[split])
    write_json_atomic(Path(run_dir) / f"diagnose-{split}.json", results)
    return results
