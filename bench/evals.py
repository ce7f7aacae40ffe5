"""Time the evaluations that scale with the dictionary, at two dictionary sizes, each as a user runs it.

    .venv/bin/python bench/evals.py                       # 512 and 4,096 latents, every command
    .venv/bin/python bench/evals.py --sizes 512 --only probe1d-othello,othello-score
    .venv/bin/python bench/evals.py --out bench/results/evals.jsonl

Every command runs as its own `python -m saelab ...` process (stderr piped, so progress comes as
plain lines) and is measured from outside: wall seconds, CPU seconds (user + sys of the child) and
peak resident memory (GNU time's %M). The scaling exponent between two sizes is
log(t_big / t_small) / log(L_big / L_small): 1 means linear in the latents, 0 flat.

The SAEs are TopK (k 32) with random weights (encoder = decoder transpose, unit-norm decoder): what
these commands cost depends on the shapes and the number of non-zeros, not on training, and a
random TopK SAE fires exactly k latents per row as a trained one does. The Othello SAEs read
OthelloGPT layer 3 (the committed model); the text SAEs read a tiny random GPT-2 (tests/
_lm_util.py's, d_model 32) on a random word corpus. Work files go to --work (reused).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(
    0, str(ROOT / "tests")
)  # the tiny LM and its tokenizer (tests/_lm_util.py), as the feature tests build them

COMMANDS = (
    "probe1d-othello",
    "probe1d-text",
    "othello-score",
    "othello-unfound",
    "lm-explain",
    "lm-examples",
    "eval-refine",
)
K = 32


def _cpu() -> dict:
    """lscpu's model name and the SIMD flags that matter here."""
    info = {"machine": platform.machine(), "cores": os.cpu_count()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return info
    for line in out.splitlines():
        key, _, val = line.partition(":")
        if key.strip() == "Model name":
            info["model"] = val.strip()
        if key.strip() == "Flags":
            info["flags"] = [f for f in val.split() if f.startswith(("avx", "fma", "amx", "sse4"))]
    return info


def _sae(out: Path, d_in: int, n_latents: int, source: dict | None = None, train: str | None = None) -> str:
    import torch

    from saelab.config import SAEConfig
    from saelab.formats.folder import save_sae
    from saelab.model.sae import SparseAutoencoder

    if (out / "saelab.json").exists():
        return str(out)
    sae = SparseAutoencoder(
        SAEConfig(n_latents=n_latents, method="topk", method_params={"k": K}, d_in=d_in, b_dec_init="zero")
    )
    sae.reset_weights(torch.Generator().manual_seed(0))
    extra = {}
    if source is not None:
        extra["source"] = source
    if train is not None:
        extra["train"] = {"activations": train}
    save_sae(sae, out, extra)
    return str(out)


def _setup(work: Path, sizes: list[int], text_tokens: int, refine_games: int) -> dict:
    """SAE folders per size, an Othello harvest (for eval --refine), a tiny LM and its activation cache."""
    from _features_util import harvest_cache, text_file, tiny_model_dir

    work.mkdir(parents=True, exist_ok=True)
    paths: dict = {"othello": {}, "text": {}}
    source = {
        "source": "othello",
        "model": "default",
        "layer": 3,
        "trim_start": 5,
        "trim_end": 5,
        "games": 3000,
        "seed": 0,
    }
    harvest = work / f"othello_harvest_{refine_games}"
    if not (harvest / "source.json").exists():
        _run(
            [
                sys.executable,
                "-m",
                "saelab",
                "othello",
                "activations",
                "--games",
                str(refine_games),
                "--seed",
                "7",
                "--out",
                str(harvest),
            ],
            "setup",
        )
    paths["harvest"] = str(harvest)
    model = work / "lm" / "gpt2"
    if not (model / "config.json").exists():
        tiny_model_dir(work / "lm")
    cache = work / "lm_cache"
    if not cache.exists():
        corpus = text_file(work, lines=max(200, text_tokens // 10))
        harvest_cache(str(model), corpus, cache, tokens=text_tokens, shard_rows=20_000)
    paths["cache"] = str(cache)
    for n in sizes:
        paths["othello"][n] = _sae(work / f"othello_sae_{n}", 128, n, source=source)
        paths["text"][n] = _sae(work / f"text_sae_{n}", 32, n, train=str(cache))
    return paths


def _run(argv: list[str], label: str, cache: str | None = None) -> dict:
    """Run one command under GNU time, stderr piped: wall and CPU seconds, peak RSS (MiB), exit code, last stderr lines.

    `cache`: the SAELAB_CACHE_DIR it sees (None: a fresh empty one, so nothing cached helps it).
    """
    import tempfile

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    fresh = tempfile.TemporaryDirectory(prefix="saelab-bench-cache-") if cache is None else None
    env["SAELAB_CACHE_DIR"] = fresh.name if fresh else cache
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        t0 = time.perf_counter()
        proc = subprocess.run(
            ["/usr/bin/time", "-f", "%M %U %S", "-o", tf.name, *argv], capture_output=True, env=env, text=True
        )
        wall = time.perf_counter() - t0
        fields = tf.read().split()[-3:]
    if fresh:
        fresh.cleanup()
    if proc.returncode != 0:
        print(f"{label}: exit {proc.returncode}\n{proc.stderr[-3000:]}", file=sys.stderr)
    rss_kib, user, sys_s = (float(x) for x in fields) if len(fields) == 3 else (0.0, 0.0, 0.0)
    return {"wall_s": round(wall, 2), "cpu_s": round(user + sys_s, 2), "peak_rss_mib": round(rss_kib / 1024, 1),
            "rc": proc.returncode, "stdout": proc.stdout, "stderr_tail": proc.stderr.splitlines()[-6:]}  # fmt: skip


def _argv(cmd: str, n: int, p: dict, args, work: Path) -> tuple[list[str], float]:
    """(command line, how many units the time is divided by) of one benchmark command at size n."""
    py = [sys.executable, "-m", "saelab"]
    o, t = p["othello"][n], p["text"][n]
    threads = ["--threads", str(args.threads)]
    if cmd == "probe1d-othello":
        return py + ["probe1d", "--sae", o, "--tasks", "othello", "--games", str(args.games), "--json"] + threads, 1
    if cmd == "probe1d-text":
        return py + ["probe1d", "--sae", t, "--tasks", "text", "--activations", p["cache"], "--json"] + threads, 1
    if cmd == "othello-score":
        return py + ["othello", "score", "--sae", o, "--games", str(args.games), "--json"], 1
    if cmd == "othello-unfound":
        return py + ["othello", "unfound", "--sae", o, "--games", str(args.games), "--json"], 1
    if cmd == "lm-explain":
        return py + [
            "lm",
            "explain",
            "--sae",
            t,
            "--activations",
            p["cache"],
            "--top-fired",
            str(args.explain_latents),
            "--json",
        ] + threads, args.explain_latents
    if cmd == "lm-examples":
        out = work / f"examples_{n}"
        return py + [
            "lm",
            "examples",
            "--sae",
            t,
            "--activations",
            p["cache"],
            "--top-fired",
            "200",
            "--out",
            str(out),
            "--overwrite",
            "--json",
        ] + threads, 1
    if cmd == "eval-refine":
        return py + ["eval", "--sae", o, "--activations", p["harvest"], "--refine", "--json"] + threads, 1
    raise ValueError(cmd)


def main() -> int:
    """Run the table; print one JSON line per (command, size) and a markdown table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="512,4096", help="comma-separated dictionary sizes")
    ap.add_argument("--only", default=",".join(COMMANDS), help=f"comma-separated subset of {', '.join(COMMANDS)}")
    ap.add_argument("--games", type=int, default=2000, help="held-out games for the Othello commands")
    ap.add_argument("--refine-games", type=int, default=200, help="games harvested for `eval --refine` (its rows)")
    ap.add_argument("--text-tokens", type=int, default=20_000, help="tokens in the tiny LM's activation cache")
    ap.add_argument("--explain-latents", type=int, default=4, help="latents `lm explain` builds (time is per latent)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="/tmp/saelab-bench-evals")
    ap.add_argument("--out", default=None, help="append the JSON lines to this file")
    ap.add_argument(
        "--held-out-cache",
        choices=("cold", "warm"),
        default="cold",
        help="cold: each command starts with an empty saelab cache (it harvests the held-out games and fits the "
        "findable probes, as a first score does); warm: a cache under --work, filled by one untimed run first "
        "(what every later SAE of a sweep pays)",
    )
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    only = [c for c in args.only.split(",") if c]
    bad = [c for c in only if c not in COMMANDS]
    if bad:
        ap.error(f"--only: unknown {bad}; choose from {COMMANDS}")
    work = Path(args.work)
    t0 = time.perf_counter()
    paths = _setup(work, sizes, args.text_tokens, args.refine_games)
    print(f"# setup {time.perf_counter() - t0:.0f}s; cpu {json.dumps(_cpu())}", file=sys.stderr, flush=True)
    cache = None
    if args.held_out_cache == "warm":
        cache = str(work / "saelab-cache")
        for cmd in (c for c in only if c in ("othello-score", "othello-unfound")):
            print(f"# filling the held-out cache ({cmd}, untimed) ...", file=sys.stderr, flush=True)
            _run(_argv(cmd, sizes[0], paths, args, work)[0], f"fill {cmd}", cache)
    rows = []
    for cmd in only:
        for n in sizes:
            argv, per = _argv(cmd, n, paths, args, work)
            print(f"# {cmd} at {n} latents ...", file=sys.stderr, flush=True)
            r = _run(argv, f"{cmd}@{n}", cache)
            row = {"bench": "evals", "command": cmd, "latents": n, "games": args.games if "othello" in cmd else args.refine_games if cmd == "eval-refine" else None,
                   "per": per, "held_out_cache": args.held_out_cache, "wall_s": r["wall_s"], "cpu_s": r["cpu_s"], "peak_rss_mib": r["peak_rss_mib"], "rc": r["rc"],
                   "wall_s_per_unit": round(r["wall_s"] / per, 2), "progress_tail": r["stderr_tail"], "argv": argv[2:],
                   "cpu": _cpu(), "load_avg": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M:%S")}  # fmt: skip
            rows.append(row)
            line = json.dumps(row)
            print(line, flush=True)
            if args.out:
                with open(args.out, "a") as fh:
                    fh.write(line + "\n")
    print(
        "\n| command | "
        + " | ".join(f"{n} latents: wall s (cpu s), peak MiB" for n in sizes)
        + " | scaling exponent (cpu) |",
        file=sys.stderr,
    )
    print("|---|" + "---|" * (len(sizes) + 1), file=sys.stderr)
    for cmd in only:
        rs = [r for r in rows if r["command"] == cmd]
        cells = [
            f"{r['wall_s_per_unit']} ({round(r['cpu_s'] / r['per'], 2)}), {r['peak_rss_mib']}"
            + ("" if r["rc"] == 0 else f" exit {r['rc']}")
            for r in rs
        ]
        expo = "–"
        if len(rs) >= 2 and rs[0]["cpu_s"] > 0 and rs[-1]["cpu_s"] > 0:
            expo = f"{math.log(rs[-1]['cpu_s'] / rs[0]['cpu_s']) / math.log(rs[-1]['latents'] / rs[0]['latents']):.2f}"
        print(f"| {cmd} | " + " | ".join(cells) + f" | {expo} |", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
