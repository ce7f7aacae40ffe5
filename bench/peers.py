"""Time another SAE library's own TopK training step; runs inside that library's virtual environment.

    .venv-saelens/bin/python bench/peers.py --lib saelens --d-in 768 --n 16384 --k 32 --reps 3
    .venv-sparsify/bin/python bench/peers.py --lib sparsify ... --serve     # driven by train_step.py

Each library's step is its trainer's own sequence of calls, on fp32 CPU tensors of the given
shape (see the builders below); only data loading and logging are left out. With --dead-fraction
> 0 that share of latents is marked dead before every step (untimed), so AuxK runs; every library
then uses its own k_aux = d_in // 2. With --autocast bfloat16 (sparsify only) the forward and
loss run under torch.autocast("cpu", bfloat16), as its trainer does on a GPU; weights stay fp32. Standalone it prints JSON records like train_step.py's;
with --serve it answers "step" lines on stdin with {"ms": …} and "quit" with its peak RSS, so
train_step.py can interleave its steps with saelab's in one timed loop. Imports only torch and
the library, never saelab (which is not installed in those environments).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from types import SimpleNamespace

import torch


def build_saelens(d, n, k, batch, dead, amp=False):
    """SAELens TopKTrainingSAE stepped by SAETrainer._train_step itself (its defaults: Adam, clip 1.0)."""
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    sae = TopKTrainingSAE(
        TopKTrainingSAEConfig(d_in=d, d_sae=n, k=k, dtype="float32", device="cpu", aux_loss_coefficient=1 / 32)
    )
    opt = torch.optim.Adam(sae.parameters(), lr=2e-4 / (n / 2**14) ** 0.5, betas=(0.9, 0.999))
    trainer = SimpleNamespace(
        sae=sae,
        autocast_if_enabled=__import__("contextlib").nullcontext(),
        dead_neurons=dead,
        get_coefficients=lambda: {},
        n_training_steps=0,
        _is_logging_step=lambda: False,
        n_forward_passes_since_fired=torch.zeros(n),
        act_freq_scores=torch.zeros(n),
        n_frac_active_samples=0,
        cfg=SimpleNamespace(train_batch_size_samples=batch),
        optimizer=opt,
        lr_scheduler=torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0),
        coefficient_schedulers={},
    )

    def step(x):
        trainer.dead_neurons = dead  # the bookkeeping is part of the step; the mask is imposed
        SAETrainer._train_step(trainer, sae, x)

    import sae_lens

    return step, sae_lens.__version__


def build_sparsify(d, n, k, batch, dead, amp=False):
    """EleutherAI sparsify SparseCoder with its trainer's per-step sequence and default optimizer
    (ScheduleFree-wrapped SignSGD, "signum"), fvu loss + auxk_alpha·auxk (1/32 when AuxK is on)."""
    from schedulefree import ScheduleFreeWrapper
    from sparsify import SparseCoder, SparseCoderConfig
    from sparsify.sign_sgd import SignSGD

    sae = SparseCoder(d, SparseCoderConfig(num_latents=n, k=k), device="cpu", dtype=torch.float32)
    opt = ScheduleFreeWrapper(SignSGD([dict(params=sae.parameters(), lr=5e-3 / (n / 2**14) ** 0.5)]), momentum=0.95)
    opt.train()
    since_fired = torch.zeros(n, dtype=torch.long)
    auxk_alpha = 1 / 32 if dead is not None else 0.0

    def step(x):
        sae.set_decoder_norm_to_unit_norm()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = sae(x, dead_mask=dead if auxk_alpha > 0 else None)
            loss = out.fvu + auxk_alpha * out.auxk_loss + out.multi_topk_fvu / 8
        did_fire = torch.zeros(n, dtype=torch.bool)
        did_fire[out.latent_indices.flatten()] = True
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            since_fired.add_(x.shape[0])
            since_fired[did_fire] = 0

    from importlib.metadata import version

    return step, version("eai-sparsify")


def build_dictlearn(d, n, k, batch, dead, amp=False):
    """dictionary_learning TopKTrainer.update (its step: loss, backward, projection, clip, Adam, renorm)."""
    from dictionary_learning.trainers.top_k import TopKTrainer

    trainer = TopKTrainer(
        steps=10**6,
        activation_dim=d,
        dict_size=n,
        k=k,
        layer=0,
        lm_name="bench",
        device="cpu",
        auxk_alpha=1 / 32 if dead is not None else 0.0,
    )
    counter = iter(range(1, 10**9))  # step 0 fits b_dec by a geometric median: done once, untimed

    def step(x):
        if dead is not None:
            trainer.num_tokens_since_fired.copy_(torch.where(dead, trainer.dead_feature_threshold, 0))
        trainer.update(next(counter), x)

    trainer.update(0, torch.randn(batch, d))
    from importlib.metadata import version

    return step, version("dictionary-learning")


BUILDERS = {"saelens": build_saelens, "sparsify": build_sparsify, "dictlearn": build_dictlearn}


def status_mb(key: str) -> float | None:
    """A memory line of /proc/self/status in MiB (e.g. "VmHWM", "VmRSS"); None where there is none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """Peak resident memory of this process (MiB): VmHWM, which exec resets (ru_maxrss would carry
    the high-water mark of the parent this process was forked from)."""
    peak = status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    """Build one library's SAE and time its training step (standalone or as a server)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lib", choices=sorted(BUILDERS), required=True)
    p.add_argument("--d-in", type=int, required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--k", type=int, required=True)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dead-fraction", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--serve", action="store_true", help="answer 'step'/'quit' lines on stdin")
    p.add_argument(
        "--autocast",
        choices=["off", "bfloat16"],
        default="off",
        help="forward and loss under bfloat16 autocast (sparsify)",
    )
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    g = torch.Generator().manual_seed(a.seed + 1)
    dead = torch.rand(a.n, generator=g) < a.dead_fraction if a.dead_fraction > 0 else None
    x = torch.randn(a.batch, a.d_in, generator=g)
    if a.autocast != "off" and a.lib != "sparsify":
        p.error(f"--autocast {a.autocast}: only sparsify's step is timed under autocast")
    step, version = BUILDERS[a.lib](a.d_in, a.n, a.k, a.batch, dead, amp=a.autocast == "bfloat16")
    step(x)  # warm-up: optimizer state, allocator

    if a.serve:
        print(json.dumps({"ready": True, "version": version}), flush=True)
        for line in sys.stdin:
            cmd = line.strip()
            if cmd == "step":
                t0 = time.perf_counter()
                step(x)
                print(json.dumps({"ms": (time.perf_counter() - t0) * 1e3}), flush=True)
            elif cmd == "quit":
                print(json.dumps({"peak_rss_mb": peak_rss_mb()}), flush=True)
                return
        return

    times = []
    for _ in range(a.reps):
        t0 = time.perf_counter()
        step(x)
        times.append((time.perf_counter() - t0) * 1e3)
    rec = {
        "d_in": a.d_in,
        "n": a.n,
        "k": a.k,
        "batch": a.batch,
        "auxk": dead is not None,
        "impl": a.lib,
        "version": version,
        "ms_per_step": statistics.median(times),
        "ratio_to_floor": None,
        "peak_rss_mb": peak_rss_mb(),
    }
    print(json.dumps(rec))


if __name__ == "__main__":
    main()
