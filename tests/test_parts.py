"""The small-data switches of CORECT (encoder skip, graph dropout, input noise, utterance
dropout) and the part diagnostics (corect.engine.diagnostics)."""

from __future__ import annotations

import json

import pytest
import torch

from corect.config import config_from_dict
from corect.data.batching import collate, drop_utterances
from corect.diagnose import main as diagnose_main
from corect.engine.diagnostics import diagnose, head_ablation, head_blocks
from corect.engine.training import train
from corect.models.build import build_model
from tests.conftest import TINY_DIMS, make_split, tiny_config


def corect(**model):
    values = {"hidden_size": 16, "gnn_heads": 2, "encoder_layers": 1, "pcm_layers": 1}
    config = config_from_dict({"model": {**values, "pcm_self_layers": 1, **model}})
    torch.manual_seed(0)
    return build_model(config.model, TINY_DIMS, 3, 4)


def test_utterance_dropout_blanks_whole_utterances_and_keeps_labels():
    batch = collate(make_split([9, 5, 7]), [0, 1, 2])
    dropped = drop_utterances(batch, 0.5, torch.Generator().manual_seed(0))
    blank = torch.stack([(x == 0).all(-1) for x in dropped.features.values()])  # [M, B, T]
    assert (blank == blank[0]).all()  # every modality of an utterance at once
    real_blank = blank[0][batch.mask]
    assert 0 < int(real_blank.sum()) < batch.num_utterances
    torch.testing.assert_close(dropped.labels, batch.labels)
    kept = ~blank[0] & batch.mask
    for m, x in batch.features.items():
        torch.testing.assert_close(dropped.features[m][kept], x[kept])
    assert drop_utterances(batch, 0.0, torch.Generator()) is batch


def test_input_noise_only_in_training():
    model = corect(input_noise=1.0, dropout=0.0, attention_dropout=0.0)
    batch = collate(make_split([6, 4]), [0, 1])
    model.eval()
    torch.testing.assert_close(model(batch), model(batch))
    model.train()
    torch.manual_seed(1)
    noisy = model(batch)
    model.eval()
    assert not torch.allclose(noisy, model(batch), atol=1e-4)


def test_encoder_skip_widens_the_head_and_blocks_cover_it():
    plain, skip = corect(), corect(encoder_skip=True)
    extra = skip.head.net[0].in_features - plain.head.net[0].in_features
    assert extra == len(TINY_DIMS) * 16
    assert [name for name, *_ in head_blocks(skip)] == ["encoders", "rtgcn", "pcm"]
    assert [name for name, *_ in head_blocks(plain)] == ["rtgcn", "pcm"]
    assert head_blocks(skip)[-1][2] == skip.head.net[0].in_features


def test_graph_dropout_changes_training_outputs_only():
    model = corect(gnn_dropout=0.5, dropout=0.0, attention_dropout=0.0)
    batch = collate(make_split([6, 4]), [0, 1])
    model.train()
    torch.manual_seed(0)
    first = model(batch)
    torch.manual_seed(1)
    assert not torch.allclose(first, model(batch))
    model.eval()
    torch.testing.assert_close(model(batch), model(batch))


def test_part_dropout_drops_whole_part_outputs_in_training_only():
    model = corect(part_dropout=0.5, encoder_skip=True, dropout=0.0, attention_dropout=0.0)
    batch = collate(make_split([8, 6]), [0, 1])
    inputs = []
    model.head.register_forward_pre_hook(lambda m, a: inputs.append(a[0]))
    model.eval()
    model(batch)
    model.train()
    torch.manual_seed(0)
    model(batch)
    clean, dropped = inputs
    assert (clean != 0).any(1).all()
    for name, start, end in head_blocks(model):
        zero = (dropped[:, start:end] == 0).all(1)
        if name == "encoders":
            assert not zero.any()  # the encoder skip is never dropped
        else:
            assert 0 < int(zero.sum()) < len(zero), name  # whole rows dropped, not all
    model.eval()
    torch.testing.assert_close(model(batch), model(batch))


def test_part_dropout_never_drops_the_encoders():
    """Without RT-GCN and P-CM the head reads the encoders only: nothing is dropped."""
    model = corect(
        part_dropout=0.9, use_rtgcn=False, use_pcm=False, dropout=0.0, attention_dropout=0.0
    )
    batch = collate(make_split([8, 6]), [0, 1])
    model.eval()
    expected = model(batch)
    model.train()
    torch.testing.assert_close(model(batch), expected)


def test_diagnose_measures_every_part():
    model, initial = corect(encoder_skip=True), corect(encoder_skip=True)
    split = make_split([6, 5, 4])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    batch = collate(split, [0, 1, 2])
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(model(batch), batch.labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    results = diagnose(model, initial, split)
    assert set(results["drift"]) == {"encoder", "rtgcn", "pcm.cross", "pcm.fuse", "head"}
    assert all(v > 0 for v in results["drift"].values())
    assert all(v == 0 for v in diagnose(initial, initial, split)["drift"].values())
    assert all(v > 0 for v in results["grad_norm_initial"].values())
    assert "rtgcn.transformer" in results["entropy"] and "rtgcn.relational" in results["residual"]
    pcm_blocks = [k for k in results["entropy"] if k.startswith("pcm.")]
    assert len(pcm_blocks) == 6 + 3  # 6 cross-modal and 3 fuse blocks of one layer each
    assert all(0 <= v <= 1 + 1e-6 for v in results["entropy"].values())
    assert set(results["ablation"]) == {"none", "encoders", "rtgcn", "pcm"}


def test_ablating_a_block_the_head_does_not_read_changes_nothing():
    """A head that reads the encoder block only: ablating RT-GCN or P-CM keeps its
    accuracy."""
    model = corect(encoder_skip=True, dropout=0.0)
    split = make_split([30, 30], num_classes=2, seed=4)
    (name, start, end), *_ = head_blocks(model)
    first = model.head.net[0]
    with torch.no_grad():
        first.weight[:, end:] = 0
    before = head_ablation(model, split)
    assert before["rtgcn"] == pytest.approx(before["none"])
    assert before["pcm"] == pytest.approx(before["none"])


def test_diagnose_command_writes_json(tmp_path, capsys):
    config = tiny_config(tmp_path, model={"encoder_skip": True})
    run_dir = train(config)
    assert diagnose_main(["--run", str(run_dir), "--split", "dev"]) == 0
    results = json.loads((run_dir / "diagnose-dev.json").read_text())
    assert results["drift"]["head"] > 0
    assert capsys.readouterr().out.strip().endswith("diagnose-dev.json")
