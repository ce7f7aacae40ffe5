"""lean_memory: each parameter's Adam step inside backward gives the normal step's weights, with one gradient at a time."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import saelab
from saelab.config import RunConfig, SAEConfig, TrainConfig
from saelab.errors import ConfigError
from saelab.kernels import topk_encode, workspace
from saelab.methods.resolve import display_name
from saelab.training.member import build_member, train_step
from saelab.training.trainer import Trainer

CONFIGS = [
    SAEConfig(
        n_latents=64,
        method="topk",
        method_params={"k": 4},
        kernel="sparse",
        auxk=True,
        k_aux=8,
        dead_tokens=64,
        lr=3e-3,
    ),
    SAEConfig(n_latents=64, method="batchtopk", method_params={"k": 4}, kernel="sparse", lr=3e-3),
    SAEConfig(n_latents=48, method="relu", penalty="l1", alpha=0.05, lr=3e-3, decoder_unit_norm=False),
    SAEConfig(n_latents=48, method="jumprelu", normalize="scalar", lr=3e-3),
]


def _member(cfg: SAEConfig, lean: bool, x: torch.Tensor):
    cfg = SAEConfig.from_dict({**cfg.to_dict(), "d_in": x.shape[1]})
    return build_member(cfg, TrainConfig(activations="-", out="-", lean_memory=lean), x[:256], 0, Path("-"))


@pytest.mark.parametrize("cfg", CONFIGS, ids=display_name)
def test_lean_steps_give_the_normal_steps_weights_and_adam_state(cfg):
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(128, 24, generator=g) @ torch.randn(24, 24, generator=g) for _ in range(8)]
    normal, lean = _member(cfg, False, batches[0]), _member(cfg, True, batches[0])
    for x in batches:
        a, b = train_step(normal, x, 3e-3), train_step(lean, x, 3e-3)
        torch.testing.assert_close(a.total.detach(), b.total.detach(), rtol=1e-6, atol=1e-7)
    for (name, p), q in zip(normal.sae.named_parameters(), lean.sae.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7, msg=name)
        assert q.grad is None  # every gradient was dropped by its hook
    sa, sb = normal.optimizer.state_dict()["state"], lean.optimizer.state_dict()["state"]
    assert sa.keys() == sb.keys() and all(float(sa[i]["step"]) == float(sb[i]["step"]) == len(batches) for i in sa)
    for i in sa:
        torch.testing.assert_close(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"], rtol=1e-5, atol=1e-9)


def test_no_two_parameter_gradients_are_alive_at_once(monkeypatch):
    x = torch.randn(512, 32)
    m = _member(CONFIGS[0], True, x)
    seen = []
    for p in m.sae.parameters():  # registered after the lean hooks: runs after each step, before the next gradient
        p.register_post_accumulate_grad_hook(lambda p: seen.append(sum(q.grad is not None for q in m.sae.parameters())))
    order = []
    original = m.optimizer.step

    def watched_step(*a, **k):
        order.append(sum(q.grad is not None for q in m.sae.parameters()))
        return original(*a, **k)

    monkeypatch.setattr(m.optimizer, "step", watched_step)
    train_step(m, x, 1e-3)
    assert order == [1, 1, 1, 1] and seen == [0, 0, 0, 0]  # W_dec, W_enc, b_enc, b_dec: each alone, then gone


def test_a_backward_outside_the_training_step_leaves_the_weights_alone():
    x = torch.randn(256, 16)
    m = _member(CONFIGS[0], True, x)
    train_step(m, x, 1e-3)
    before = [p.detach().clone() for p in m.sae.parameters()]
    m.sae(x).pow(2).sum().backward()  # e.g. a gradient attribution on the trained SAE
    assert all(torch.equal(a, p) for a, p in zip(before, m.sae.parameters()))
    assert m.sae.W_dec.grad is not None  # the user's gradient is kept for them


def test_lean_mode_keeps_no_buffers_and_chunks_smaller(monkeypatch):
    workspace.release()
    chunks = []
    original = topk_encode.row_chunks
    monkeypatch.setattr(topk_encode, "row_chunks", lambda *a: chunks.append(original(*a)) or chunks[-1])
    monkeypatch.setattr(topk_encode, "LEAN_PRE_BUDGET_BYTES", 64 * 96 * 4)  # 64 rows of 96 latents per chunk
    monkeypatch.setattr(topk_encode, "LEAN_MIN_CHUNK_ROWS", 16)
    x = torch.randn(256, 16)
    m = _member(SAEConfig(n_latents=96, method="topk", method_params={"k": 4}, kernel="sparse"), True, x)
    train_step(m, x, 1e-3)
    assert chunks and all(hi - lo <= 64 for lo, hi in chunks[-1]) and len(chunks[-1]) == 4
    assert not workspace._scratch and not workspace._grads  # nothing kept for the next step
    normal = _member(SAEConfig(n_latents=96, method="topk", method_params={"k": 4}, kernel="sparse"), False, x)
    train_step(normal, x, 1e-3)
    assert len(chunks[-1]) == 1 and workspace._grads  # the normal mode: one chunk here, W_enc's gradient memory cached
    workspace.release()


def test_lean_memory_refuses_clipping_and_more_than_one_process(toy_dir, tmp_path):
    with pytest.raises(ConfigError, match="grad_clip"):
        TrainConfig(activations="-", out="-", lean_memory=True, grad_clip=1.0).validate()
    with pytest.raises(ConfigError, match="lean_memory"):
        TrainConfig(activations="-", out="-", lean_memory="yes").validate()

    class TwoRanks(saelab.util.distributed.World):
        def check_batch(self, batch_size):
            return None

    run = RunConfig(
        TrainConfig(activations=str(toy_dir / "activations.npy"), out=str(tmp_path / "r"), lean_memory=True, steps=2),
        [SAEConfig(n_latents=16, method="topk", method_params={"k": 2})],
    )
    with pytest.raises(ConfigError, match="one process"):
        Trainer(run, progress=False, world=TwoRanks(rank=0, size=2))


def test_lean_memory_trains_from_the_cli_and_records_it(toy_dir, tmp_path):
    from saelab.cli import main

    out = tmp_path / "lean"
    assert (
        main(
            [
                "train",
                "--activations",
                str(toy_dir / "activations.npy"),
                "--out",
                str(out),
                "--method",
                "topk",
                "--k",
                "3",
                "--n-latents",
                "32",
                "--steps",
                "40",
                "--batch-size",
                "128",
                "--lean-memory",
                "--no-progress",
            ]
        )
        == 0
    )
    record = saelab.formats.folder.read_saelab_record(out)
    assert record["train"]["lean_memory"] is True and record["eval"]["nmse"] < 1.0
