"""Latent-sharded dictionaries: 2 gloo ranks holding half the latents each reproduce the one-process SAE.

Tolerance 1e-5 of each tensor's largest entry. The sharded forward sums two 32-latent partial
decodes with an all-reduce where one process sums 64 latents in one matmul, and b_dec's encoder
gradient is likewise summed in two parts, so float32 sums are rounded in another order (~1e-7
relative). After Adam's first steps (updates ≈ lr·sign(g)) that rounding stays at that level
(measured: ≤ 4.7e-7 over x̂, every loss term, every gradient and the weights after 1 and 3 steps,
on the dense reference path and on the sparse kernels, AuxK as a dense block and as gathered rows).
A wrong exchange moves them by far more: without the backward all-reduce of the encoder input's
gradient the largest difference was 0.92, with dL/dx̂ counted twice 3.1.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
from _sharded_worker import CASES, LR, N_LATENTS, build_case, kernel_path
from cli_harness import run_torchrun
from safetensors.torch import load_file

from saelab.config import SAEConfig
from saelab.errors import ConfigError
from saelab.methods.topk import topk_relu
from saelab.training.member import Member, train_step
from saelab.training.objective import DeadLatentTracker
from saelab.training.sharded.collectives import global_topk_mask, winning_candidates
from saelab.training.sharded.model import ShardedSAE, join_shards, split_sae
from saelab.util.distributed import World

TOLERANCE = 1e-5
WORKER = Path(__file__).with_name("_sharded_worker.py")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> dict[str, torch.Tensor]:
    """What rank 0 of a 2-rank latent-sharded run saved."""
    tmp = tmp_path_factory.mktemp("sharded")
    out = tmp / "ranks.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    done = run_torchrun([str(WORKER), str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return {"tensors": load_file(str(out))}


def _reference(method: str, kernel: str) -> dict[str, torch.Tensor]:
    """The same run in one process on the full SAE, through the trainer's own step (on the same kernel path)."""
    sae, train, batches, since = build_case(method, kernel)
    opt = torch.optim.Adam(sae.parameters(), lr=LR, betas=tuple(train.betas), eps=train.adam_eps, fused=True)
    tracker = DeadLatentTracker(N_LATENTS, sae.cfg.dead_tokens)
    tracker.since_fired.copy_(since)
    m = Member(sae.cfg, sae, opt, tracker, Path("."), LR)
    ref = {}
    for step, x in enumerate(batches):
        with kernel_path(kernel):
            out = train_step(m, x, LR, train.grad_clip)
        if step == 0:
            ref["x_hat"] = out.x_hat.detach()
            ref.update({f"loss/{k}": v.detach().reshape(1) for k, v in out.losses.items()})
            ref.update({f"grad/{k}": p.grad.clone() for k, p in sae.named_parameters()})
            ref.update({f"step1/{k}": v.clone() for k, v in sae.state_dict().items()})
    ref.update({f"final/{k}": v.clone() for k, v in sae.state_dict().items()})
    ref["dead_since"] = tracker.since_fired
    return ref


@pytest.mark.parametrize("method,kernel", CASES)
def test_two_shards_equal_the_unsharded_sae(two_ranks, method, kernel):
    ref = _reference(method, kernel)
    assert float(ref["loss/auxk"]) > 0  # AuxK ran over dead latents of both shards
    diffs = {}
    for key, want in ref.items():
        got = two_ranks["tensors"][f"{method}-{kernel}/{key}"]
        assert got.shape == want.shape, key
        diffs[key] = 0.0 if key == "dead_since" else _rel(got, want)
    print(method, "max relative difference", max(diffs.values()), max(diffs, key=diffs.get))
    assert torch.equal(two_ranks["tensors"][f"{method}-{kernel}/dead_since"], ref["dead_since"])
    assert max(diffs.values()) <= TOLERANCE, diffs
    assert (
        float(two_ranks["tensors"][f"{method}-{kernel}/b_dec_grad_spread"]) == 0.0
    )  # replicated b_dec: one gradient on every rank


def _sae(method: str = "topk") -> torch.nn.Module:
    sae, *_ = build_case(method)
    return sae


def test_split_then_join_is_the_same_sae():
    sae = _sae("batchtopk")
    sae.activation.threshold.fill_(0.25)
    shards = [split_sae(sae, World(rank=r, size=4)) for r in range(4)]
    assert [tuple(s.W_dec.shape) for s in shards] == [(16, 16)] * 4
    back = join_shards(shards)
    for key, value in sae.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    assert back.cfg.to_dict() == sae.cfg.to_dict()


def test_shards_joined_from_any_order_are_refused():
    sae = _sae()
    shards = [split_sae(sae, World(rank=r, size=2)) for r in (1, 0)]
    with pytest.raises(ValueError, match="ranks"):
        join_shards(shards)


def test_one_shard_is_the_plain_sae():
    sae = _sae()
    shard = split_sae(sae, World())
    x = torch.randn(32, 16)
    with torch.no_grad():
        want_hat, want_z = sae.reconstruct(x)
        got_hat, got_z = shard.reconstruct(x)
    assert torch.equal(got_z, want_z)
    assert torch.allclose(got_hat, want_hat, atol=1e-6)


def test_global_topk_over_simulated_shards_is_the_row_topk():
    pre = torch.randn(40, 60)
    k, n_ranks = 7, 3
    blocks = pre.chunk(n_ranks, dim=1)
    # Each simulated rank's candidates as global_topk_mask would send them, padded to k.
    cands = torch.stack([torch.topk(b, k, dim=-1, sorted=False).values for b in blocks])
    masks = []
    for r, block in enumerate(blocks):
        won = winning_candidates(cands, k, r)
        values, idx = torch.topk(block, k, dim=-1, sorted=False)
        assert torch.equal(values, cands[r])
        masks.append(torch.zeros_like(block, dtype=torch.bool).scatter_(1, idx, won))
    want = topk_relu(pre, k) != 0
    assert torch.equal(torch.cat(masks, dim=1) & (pre > 0), want)
    assert torch.equal(torch.cat(masks, dim=1).sum(dim=-1), torch.full((40,), k))


def test_one_process_global_topk_is_torch_topk():
    pre = torch.randn(10, 20)
    mask = global_topk_mask(pre, 5, World())
    assert torch.equal(torch.relu(pre) * mask, topk_relu(pre, 5))
    dead_only = pre.masked_fill(torch.arange(20) >= 3, float("-inf"))
    assert torch.equal(global_topk_mask(dead_only, 5, World()).sum(dim=-1), torch.full((10,), 3))  # −inf never wins


@pytest.mark.parametrize(
    "field, changes",
    [
        ("method", {"method": "relu", "method_params": {}}),
        ("n_latents", {"n_latents": 63}),
        ("penalty", {"penalty": "l1", "alpha": 0.1}),
    ],
)
def test_unshardable_configs_are_refused(field, changes):
    cfg = SAEConfig(**{"n_latents": 64, "method": "topk", "method_params": {"k": 4}, "d_in": 16, **changes})
    with pytest.raises(ConfigError, match=field):
        ShardedSAE(cfg, World(rank=0, size=2))


def test_per_shard_init_draws_only_its_own_rows():
    cfg = SAEConfig(n_latents=64, method="topk", method_params={"k": 4}, d_in=16)
    sample = torch.randn(256, 16)
    a, b = (ShardedSAE(copy.deepcopy(cfg), World(rank=r, size=2)) for r in range(2))
    a.initialize_from_data(sample, seed=0)
    b.initialize_from_data(sample, seed=0)
    assert a.W_dec.shape == (32, 16)
    assert torch.allclose(a.W_dec.norm(dim=-1), torch.ones(32))
    assert not torch.allclose(a.W_dec, b.W_dec)  # different rows per shard
    assert torch.equal(a.b_dec, b.b_dec)  # replicated


@pytest.mark.parametrize("ranks", [2, 4])
def test_shard_init_is_the_same_dictionary_for_any_number_of_shards(monkeypatch, ranks):
    import saelab.training.sharded.model as ls

    monkeypatch.setattr(ls, "INIT_BLOCK_LATENTS", 24)  # blocks that straddle shard boundaries (64 latents)
    cfg = SAEConfig(n_latents=64, method="topk", method_params={"k": 4}, d_in=16, encoder_init="random")
    sample = torch.randn(256, 16)
    whole = ShardedSAE(copy.deepcopy(cfg), World())
    whole.initialize_from_data(sample, seed=5)
    parts = []
    for r in range(ranks):
        shard = ShardedSAE(copy.deepcopy(cfg), World(rank=r, size=ranks))
        shard.initialize_from_data(sample, seed=5)
        parts.append(shard)
    assert torch.equal(torch.cat([p.W_dec for p in parts]), whole.W_dec)
    assert torch.equal(torch.cat([p.W_enc for p in parts], dim=1), whole.W_enc)
    assert not torch.allclose(whole.W_enc, whole.W_dec.T)  # encoder_init random: a second draw, not the transpose


def test_a_shard_with_no_winners_decodes_zeros_and_gets_no_gradient():
    """Every candidate of a rank can lose (a shard whose latents never win a row): empty codes must still run."""
    from saelab.kernels.decode import DecodeItem, decode
    from saelab.kernels.plan import SparsePlan
    from saelab.kernels.topk_encode import EncodeState, encode
    from saelab.training.sharded.step import _winners

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 6, generator=gen)
    W_enc, W_dec = (
        torch.randn(6, 10, generator=gen).requires_grad_(),
        torch.randn(10, 6, generator=gen).requires_grad_(),
    )
    b_enc, b_dec = torch.zeros(10, requires_grad=True), torch.zeros(6, requires_grad=True)
    plan = EncodeState(SparsePlan(k=3), dead=torch.tensor([1, 3, 5, 7]), k_aux=2)
    z_main, z_aux = encode(x, W_enc, b_enc, b_dec, plan)
    plan.main, z, plan.main_keep = _winners(plan.main, z_main, torch.zeros_like(z_main, dtype=torch.bool))
    plan.aux, z_a, plan.aux_keep = _winners(plan.aux, z_aux, torch.zeros_like(z_aux, dtype=torch.bool))
    decoded = decode(W_dec, [DecodeItem(plan.main), DecodeItem(plan.aux)], [z, z_a], plan)
    assert all(torch.equal(d, torch.zeros(8, 6)) for d in decoded)
    sum((d + b_dec - x).pow(2).sum() for d in decoded).backward()
    assert (
        float(W_enc.grad.abs().sum()) == 0.0
        and float(W_dec.grad.abs().sum()) == 0.0
        and float(b_enc.grad.abs().sum()) == 0.0
    )
    assert torch.allclose(b_dec.grad, -4 * x.sum(dim=0))  # only the bias reconstructs: d/db Σ 2·(b − x)² at b = 0
