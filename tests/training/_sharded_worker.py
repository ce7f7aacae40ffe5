"""The 2-rank side of tests/training/test_sharded.py: `torchrun --nproc-per-node 2 _sharded_worker.py OUT.safetensors FOLDER`.

Each rank trains its latent shard of the same SAE on the same batches; rank 0 writes what the
one-process reference is compared with. `build_case` is shared with the test, so both start equal.
"""

from __future__ import annotations

import contextlib
import copy
import sys

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from saelab.config import SAEConfig, TrainConfig
from saelab.kernels import topk_encode
from saelab.model.sae import SparseAutoencoder
from saelab.training.sharded.model import SHARDED_PARAMS, gather_sae, split_sae
from saelab.training.sharded.step import sharded_member, sharded_train_step
from saelab.util import distributed

METHODS = ("topk", "batchtopk")
# The sharded step's reference path and its sparse-kernel path with AuxK's code as a dense block over
# the dead latents and as gathered rows (which one a CPU picks depends on it and on the native kernels).
KERNELS = ("dense", "sparse-block", "sparse-rows")
CASES = [(m, kern) for m in METHODS for kern in KERNELS]


@contextlib.contextmanager
def kernel_path(kernel: str):
    """Inside: AuxK's sparse code is a dense block (sparse-block) or gathered rows (sparse-rows)."""
    saved = topk_encode.AUX_BLOCK_DENSITY
    # 0: every aux code is a block; 2: a density no code reaches.
    topk_encode.AUX_BLOCK_DENSITY = {"sparse-block": 0.0, "sparse-rows": 2.0}.get(kernel, saved)
    try:
        yield
    finally:
        topk_encode.AUX_BLOCK_DENSITY = saved


D_IN, N_LATENTS, K, ROWS, STEPS, LR = 16, 64, 4, 64, 3, 1e-3
# topk also clips (to a norm below the gradient's, so the global norm is what scales it).
GRAD_CLIP = {"topk": 0.05, "batchtopk": None}


def build_case(
    method: str, kernel: str = "dense"
) -> tuple[SparseAutoencoder, TrainConfig, list[torch.Tensor], torch.Tensor]:
    """(full SAE, train config, raw batches, initial since-fired counts with 20 of 64 latents dead)."""
    gen = torch.Generator().manual_seed(1)
    cfg = SAEConfig(
        n_latents=N_LATENTS,
        method=method,
        method_params={"k": K},
        auxk=True,
        k_aux=8,
        dead_tokens=10_000,
        normalize="scalar",
        kernel=kernel.split("-")[0],
        lr=LR,
        d_in=D_IN,
    )
    batches = [torch.randn(ROWS, D_IN, generator=gen) * 3 + 1 for _ in range(STEPS)]
    sae = SparseAutoencoder(cfg)
    sae.initialize_from_data(torch.cat(batches), torch.Generator().manual_seed(2))
    sae.b_enc.data.normal_(0, 0.1, generator=gen)  # not all zero, so a wrong slice of it shows
    since = torch.zeros(N_LATENTS, dtype=torch.long)
    since[torch.randperm(N_LATENTS, generator=gen)[:20]] = cfg.dead_tokens
    train = TrainConfig(activations="-", out="-", grad_clip=GRAD_CLIP[method])
    return sae.train(), train, batches, since


def _all_gather_cat(t: torch.Tensor, dim: int) -> torch.Tensor:
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, dim=dim)


def main(out: str) -> None:
    """Train each method's shards STEPS steps; rank 0 saves step 1's outputs, gradients and the weights."""
    world = distributed.init_from_env()
    saved = {}
    for method, kernel in CASES:
        sae, train, batches, since = build_case(method, kernel)
        case = f"{method}-{kernel}"
        shard = split_sae(copy.deepcopy(sae), world)
        m = sharded_member(shard, train)
        m.tracker.since_fired.copy_(since[shard.lo : shard.hi])
        for step, x in enumerate(batches):
            with kernel_path(kernel):
                result = sharded_train_step(m, x, LR, train.grad_clip)
            if step == 0:
                saved[f"{case}/x_hat"] = result.x_hat.detach()
                for name, value in result.losses.items():
                    saved[f"{case}/loss/{name}"] = value.detach().reshape(1)
                for name in SHARDED_PARAMS:
                    g = getattr(shard, name).grad
                    saved[f"{case}/grad/{name}"] = _all_gather_cat(g, dim=1 if name == "W_enc" else 0)
                saved[f"{case}/grad/b_dec"] = shard.b_dec.grad.clone()
                # Replicated: b_dec's gradient must be bitwise the same on every rank, or the copies drift.
                others = _all_gather_cat(shard.b_dec.grad.unsqueeze(0), dim=0)
                saved[f"{case}/b_dec_grad_spread"] = (others - others[0]).abs().max().reshape(1)
                full = gather_sae(shard)
                if full is not None:
                    for k, v in full.state_dict().items():
                        saved[f"{case}/step1/{k}"] = v.clone()
        full = gather_sae(shard)
        if full is not None:
            for k, v in full.state_dict().items():
                saved[f"{case}/final/{k}"] = v.clone()
        saved[f"{case}/dead_since"] = _all_gather_cat(m.tracker.since_fired, dim=0)
    if world.is_main:
        save_file({k: v.contiguous() for k, v in saved.items()}, out)
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
