"""`saelab probe1d` and the feature sub-commands of `saelab lm` (examples, explain, ablation-sparsity).

cli.GROUPS registers `probe1d` through register(); commands/lm.py adds the three `lm` sub-commands
through register_lm(), handing over its own shared flag helpers so this module never imports it.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any, Callable

import numpy as np
import torch

import saelab
from saelab.commands.common import add_threads
from saelab.config import require_positive_int
from saelab.errors import ConfigError, DataError, SaelabError
from saelab.features.data import FeatureData, check_same_site, iter_codes, load_feature_data, split_rows
from saelab.formats.folder import read_saelab_record
from saelab.util.atomic import atomic_write_json, dumps_json
from saelab.util.progress import stage, track

TASK_KINDS = ("othello", "text")


def parse_latents(text: str) -> list[int]:
    """'0,5,17' -> [0, 5, 17] (ConfigError naming the value otherwise)."""
    try:
        out = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError("latents", text, "expected comma-separated latent indices such as 0,5,17") from None
    if not out:
        raise ConfigError("latents", text, "names no latent")
    return out


def _record(sae_dir: str) -> dict | None:
    try:
        return read_saelab_record(sae_dir)
    except DataError:
        return None


def _load_sae(path: str):
    if not os.path.isdir(path):
        raise SaelabError(f"sae={path!r}: no such SAE folder")
    return saelab.load(path).eval()


def _check_width(sae, data_d_in: int, where: str, meta: dict | None = None) -> None:
    if sae.cfg.d_in != data_d_in:
        raise DataError(f"activations={where!r}: d_in is {data_d_in}, the SAE expects {sae.cfg.d_in}")
    check_same_site(getattr(sae.cfg, "site", None), meta, where)


def _add_selection(p: argparse.ArgumentParser, default_top: int | None) -> None:
    g = p.add_mutually_exclusive_group(required=default_top is None)
    g.add_argument("--latents", default=None, help="comma-separated latent indices, e.g. 0,5,17")
    g.add_argument("--top-fired", type=int, default=None, metavar="N", help="the N latents that fire most often")
    g.add_argument("--random", type=int, default=None, metavar="N", help="N random latents among those that fire")
    p.set_defaults(default_top=default_top)


def _choose_latents(args, sae, data: FeatureData, rows: tuple[int, int]) -> tuple[list[int], str]:
    from saelab.features.examples import firing_counts, select_latents

    n = sae.cfg.n_latents
    if args.latents is not None:
        return select_latents("list", n, parse_latents(args.latents)), "listed"
    how, value = (
        ("random", args.random) if args.random is not None else ("top-fired", args.top_fired or args.default_top)
    )
    require_positive_int(how.replace("-", "_"), value)
    counts = firing_counts(sae, data, rows)
    latents = select_latents(how, n, value, counts, seed=getattr(args, "seed", 0))
    if not latents:
        raise DataError(f"activations={data.path!r}: no latent of the SAE fires on these rows")
    return latents, f"{how} {value}"


# ---- saelab lm examples ---------------------------------------------------------------------------


def _cmd_examples(args: argparse.Namespace) -> int:
    from saelab.features.dashboard import write_dashboard
    from saelab.features.examples import ExamplesConfig, build_examples
    from saelab.features.logit_effect import unembedding

    cfg = ExamplesConfig(
        n_top=args.top, before=args.before, after=args.after, max_rows=args.max_rows, seed=args.seed
    ).validate()
    for name in ("examples.json", "dashboard.html"):
        if os.path.exists(os.path.join(args.out, name)) and not args.overwrite:
            raise SaelabError(f"out={args.out!r}: already holds {name}; choose another folder or pass --overwrite")
    sae = _load_sae(args.sae)
    data = load_feature_data(args.activations, model=args.model)
    _check_width(sae, data.store.d_in, args.activations, data.meta if data.kind == "lm" else None)
    t0 = time.perf_counter()
    hi = data.store.n_rows if cfg.max_rows is None else min(cfg.max_rows, data.store.n_rows)
    with stage("lm examples: choose latents"):
        latents, selection = _choose_latents(args, sae, data, (0, hi))
    unembed, board, to_token = None, None, None
    if data.kind == "othello":
        from saelab.features.data import codes_of_rows
        from saelab.sources.othello.auroc import auroc_matrix
        from saelab.sources.othello.harvest import load_model
        from saelab.sources.othello.model import TOKEN_TO_SQUARE

        if not args.no_logits:
            unembed, to_token = unembedding(load_model(data.model)), TOKEN_TO_SQUARE
        n = min(cfg.board_rows, data.store.n_rows)
        codes = codes_of_rows(sae, data.store, np.arange(n), latents, cfg.batch_size)
        board = auroc_matrix(
            torch.from_numpy(codes), np.array(data.labels[:n])
        ).numpy()  # a copy: the memmap is read-only
    elif not args.no_logits:
        from saelab.sources.lm.model import LMSpec, load_lm

        unembed = unembedding(load_lm(LMSpec(data.model)).model)
    with stage(f"lm examples: top contexts of {len(latents)} latents over {hi} rows"):
        result = build_examples(sae, data, latents, cfg, unembed=unembed, selection=selection, board_auroc=board,
                                output_to_token=to_token, source={"sae": args.sae})  # fmt: skip
    result.seconds = time.perf_counter() - t0
    with stage("lm examples: write the dashboard"):
        json_path, html_path = write_dashboard(
            result, args.out, title=args.title or f"Latents of {os.path.basename(os.path.normpath(args.sae))}"
        )
    size = os.path.getsize(html_path)
    if args.json:
        print(dumps_json({"json": str(json_path), "html": str(html_path), "latents": len(latents), "html_bytes": size,
                          "rows_scanned": result.rows_scanned, "seconds": round(result.seconds, 2)}))  # fmt: skip
    else:
        print(f"wrote {html_path} ({size / 1e6:.2f} MB) and {json_path}: {len(latents)} latents ({selection}), "
              f"{result.rows_scanned} rows, {result.seconds:.1f}s")  # fmt: skip
    return 0


# ---- saelab lm explain ----------------------------------------------------------------------------


def _cmd_explain(args: argparse.Namespace) -> int:
    from saelab.features.n2g import (
        LMOracle,
        N2GConfig,
        complete_windows,
        default_pad,
        explain_latents,
        explain_report,
        explanation_reconstruction,
    )
    from saelab.sources.lm.model import LMSpec, load_lm

    cfg = N2GConfig(n_build=args.n_build, sample=args.sample, max_n=args.max_n, keep_frac=args.keep_frac,
                    max_eval_rows=args.eval_rows, seed=args.seed).validate()  # fmt: skip
    if args.windows < 0:
        raise ConfigError("windows", args.windows, "must be ≥ 0 (0 skips explanation reconstruction)")
    sae = _load_sae(args.sae)
    data = load_feature_data(args.activations, model=args.model)
    if data.kind != "lm":
        raise DataError(f"activations={args.activations!r}: N2G explanations need an LM activation cache")
    _check_width(sae, data.store.d_in, args.activations, data.meta if data.kind == "lm" else None)
    t0 = time.perf_counter()
    build, held, how = split_rows(_record(args.sae), data)
    with stage("lm explain: choose latents"):
        latents, selection = _choose_latents(args, sae, data, build)
    lm = load_lm(LMSpec(data.model))
    site = lm.site(int(data.meta["layer"]), str(data.meta["site"]))
    pad = args.pad_token if args.pad_token is not None else default_pad(lm.tokenizer)
    oracle = LMOracle(lm, site, sae, latents)
    with stage(f"lm explain: build and score {len(latents)} explanations"):
        tries, scores = explain_latents(sae, data, latents, oracle, build, held, cfg, pad)
    recon = None
    if args.windows:
        windows = complete_windows(data, held, args.windows)
        if len(windows):
            with stage(f"lm explain: explanation reconstruction on {len(windows)} windows"):
                recon = explanation_reconstruction(lm, site, sae, windows, latents, tries, data.outlier_factor)
    source = {"sae": args.sae, "activations": args.activations, "model": data.model, "site": str(site), "build_rows": list(build),
              "eval_rows": list(held), "held_out": how, "selection": selection, "pad_token": pad, "sequences_run": oracle.sequences_run}  # fmt: skip
    report = explain_report(scores, source, cfg, recon, time.perf_counter() - t0)
    if args.out:
        atomic_write_json(args.out, report.to_dict())
    if args.json:
        print(dumps_json(report.to_dict()))
        return 0

    def f(x):
        return "n/a" if x is None else f"{x:.3f}"

    print(f"{len(latents)} latents ({selection}); built on rows {build[0]}:{build[1]}, scored on {how} ({held[0]}:{held[1]}), "
          f"{report.seconds:.1f}s, {oracle.sequences_run} short sequences run")  # fmt: skip
    print(f"  mean precision {f(report.mean_precision)}  recall {f(report.mean_recall)}  F1 {f(report.mean_f1)}")
    if recon is not None:
        print(f"  explanation reconstruction ({recon.tokens} predictions): CE clean {recon.ce_clean:.4f}  SAE {recon.ce_sae:.4f}  "
              f"explained {recon.ce_explained:.4f}  zeroed {recon.ce_ablated:.4f}  kept {f(recon.recovered)}")  # fmt: skip
    for s in scores[:20]:
        print(
            f"  latent {s.latent:6d}  P {f(s.precision)}  R {f(s.recall)}  {' | '.join(repr(t) for t in s.patterns_text[:3])}"
        )
    return 0


# ---- saelab lm ablation-sparsity --------------------------------------------------------------------


def _make_ablation(eval_setup: Callable) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from saelab.features.ablation_sparsity import AblationConfig, ablation_sparsity

        cfg = AblationConfig(future=args.future, tokens_per_window=args.tokens_per_window,
                             max_latents_per_token=args.max_latents, seed=args.seed).validate()  # fmt: skip
        lm, site, sae, batches, outliers = eval_setup(args)
        res = ablation_sparsity(lm, site, sae, batches, cfg, outliers)
        if args.json:
            print(dumps_json(res.to_dict()))
        else:
            print(f"{lm.name} {site}: {res.pairs} ablations at {res.tokens} tokens ({res.mean_active:.1f} active latents each), "
                  f"T={res.future}, vector length {res.vector_length}, {res.seconds:.1f}s")  # fmt: skip
            v = res.sparsity
            print(f"  ablation sparsity {'n/a' if v is None else f'{v:.5f}'}  (= {res.definition})")
            if res.effective_logits is not None:
                print(f"  effective changed logits {res.effective_logits:.1f} of {res.vector_length}")
        return 0

    return run


def register_lm(sub: Any, common: Callable, sae_args: Callable, eval_setup: Callable) -> None:
    """Add `examples`, `explain` and `ablation-sparsity` to the `saelab lm` subparsers (helpers come from commands/lm.py)."""
    p = sub.add_parser("examples", help="top-activating examples of latents: JSON + one self-contained HTML dashboard")
    p.add_argument("--sae", required=True, help="trained SAE folder")
    p.add_argument(
        "--activations", required=True, help="LM activation cache (with its row index) or OthelloGPT harvest folder"
    )
    _add_selection(p, default_top=50)
    p.add_argument("--out", required=True, help="folder for examples.json and dashboard.html")
    p.add_argument("--model", default=None, help="LM for token text and unembedding (default: the cache's)")
    p.add_argument("--no-logits", action="store_true", help="skip the direct logit effect (no model weights loaded)")
    p.add_argument("--top", type=int, default=20, help="top-activating contexts per latent")
    p.add_argument("--before", type=int, default=12, help="context tokens before the activating one")
    p.add_argument("--after", type=int, default=3, help="context tokens after it")
    p.add_argument("--max-rows", type=int, default=None, help="scan only the first N rows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--title", default=None)
    p.add_argument("--overwrite", action="store_true", help="replace an earlier dashboard in --out")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    add_threads(p)
    p.set_defaults(func=_cmd_examples)

    p = sub.add_parser(
        "explain", help="N2G explanations of latents: precision / recall on held-out rows, explanation reconstruction"
    )
    p.add_argument("--sae", required=True, help="trained SAE folder")
    p.add_argument("--activations", required=True, help="LM activation cache with its row index")
    _add_selection(p, default_top=None)
    p.add_argument("--model", default=None, help="the LM (default: the cache's)")
    p.add_argument("--n-build", type=int, default=16, help="activating examples per latent to build from")
    p.add_argument(
        "--sample", choices=("random", "top"), default="random", help="build from random non-zero or top activations"
    )
    p.add_argument("--max-n", type=int, default=8, help="longest n-gram tried")
    p.add_argument("--keep-frac", type=float, default=0.5, help="share of the activation a pruned context must keep")
    p.add_argument(
        "--pad-token", type=int, default=None, help="token id standing in for a removed token (default: pad/unk/eos)"
    )
    p.add_argument("--eval-rows", type=int, default=100_000, help="held-out rows scored")
    p.add_argument("--windows", type=int, default=32, help="held-out windows for explanation reconstruction (0: skip)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the report as JSON to this file")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_threads(p)
    p.set_defaults(func=_cmd_explain)

    p = sub.add_parser("ablation-sparsity", help="sparsity of each active latent's ablation effect on the logits")
    common(p, tokens=2048, batch_size=8, context=None)
    sae_args(p)
    p.add_argument("--future", type=int, default=4, help="T: later tokens whose logit changes count")
    p.add_argument("--tokens-per-window", type=int, default=1, help="sampled tokens per window")
    p.add_argument("--max-latents", type=int, default=None, help="ablate at most this many active latents per token")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_make_ablation(eval_setup))


# ---- saelab probe1d ---------------------------------------------------------------------------------


def _probe_inputs(args, sae, record: dict | None):
    """(SparseCodes, labels [N, K], task names, groups [N], source dict) for --tasks othello|text|FILE."""
    from saelab.features.probe1d import SparseCodes

    if args.tasks == "othello":
        from saelab.sources.othello.harvest import config_from_source, harvest
        from saelab.sources.othello.score import EVAL_SEED_OFFSET, findable_mask

        source = (record or {}).get("source")
        if not isinstance(source, dict) or source.get("source") != "othello":
            raise ConfigError("tasks", "othello", f"the SAE in {args.sae!r} was not trained on OthelloGPT activations")
        seed = int(source.get("seed", 0)) + EVAL_SEED_OFFSET
        with stage(f"harvest {args.games} held-out games"):
            hv = harvest(config_from_source(source, games=args.games, seed=seed))
        acts = torch.from_numpy(hv.activations)
        codes = SparseCodes.from_batches(((i, sae.encode(acts[i : i + 4096]).float())
                                          for i in track(range(0, len(acts), 4096), "encode", unit="batch")),
                                         len(acts), sae.cfg.n_latents)  # fmt: skip
        mask = np.asarray(findable_mask(int(source["layer"]))).reshape(64, 3)
        pairs = list(zip(*np.nonzero(mask)))
        from saelab.sources.othello.boards import STATES
        from saelab.sources.othello.source import square_name

        labels = np.stack([(hv.labels[:, sq] == st) for sq, st in pairs], axis=1).astype(np.int8)
        names = [f"{square_name(int(sq))}:{STATES[int(st)]}" for sq, st in pairs]
        return (
            codes,
            labels,
            names,
            hv.positions[:, 0],
            {"tasks": "othello", "games": args.games, "seed": seed, "rows": len(acts)},
        )
    if args.tasks == "text":
        from saelab.features.text_tasks import text_task_labels

        online = ((record or {}).get("source") or {}).get("source") == "lm-online"  # `lm train`: text, no cache
        path = args.activations or (None if online else ((record or {}).get("train") or {}).get("activations"))
        if not path:
            why = "it was trained online by `saelab lm train`; harvest one with `saelab lm activations`"
            why = why if online else "the SAE folder records no training cache"
            raise ConfigError("activations", None, f"--tasks text needs --activations ({why})")
        data = load_feature_data(path, model=args.model)
        if data.kind != "lm":
            raise DataError(f"activations={path!r}: --tasks text needs an LM activation cache")
        _check_width(sae, data.store.d_in, path, data.meta)
        _, (lo, hi), how = split_rows(record, data)
        hi = min(hi, lo + args.max_rows)
        codes = SparseCodes.from_batches(((s - lo, z) for s, z in track(iter_codes(sae, data.store, lo, hi), "encode", unit="batch")),
                                         hi - lo, sae.cfg.n_latents)  # fmt: skip
        rows = np.arange(lo, hi)
        with stage("text task labels"):
            tl = text_task_labels(data.grid, data.text(), rows)
        return (
            codes,
            tl.labels.astype(np.int8),
            list(tl.names),
            data.grid.row_window[rows],
            {"tasks": "text", "activations": path, "rows": [lo, hi], "held_out": how},
        )
    return _file_tasks(args, sae)


def _file_tasks(args, sae):
    from saelab.data.store import ActivationStore
    from saelab.features.probe1d import SparseCodes

    path = args.tasks
    if not os.path.isfile(path):
        raise ConfigError("tasks", path, f"must be one of {', '.join(TASK_KINDS)} or an existing .npz file")
    try:
        with np.load(path, allow_pickle=False) as f:
            labels = np.asarray(f["labels"])
            names = (
                [str(n) for n in f["names"]]
                if "names" in f
                else [f"task_{k}" for k in range(labels.shape[1] if labels.ndim == 2 else 0)]
            )
            groups = np.asarray(f["groups"]) if "groups" in f else None
    except (OSError, ValueError, KeyError) as e:
        raise DataError(
            f"tasks={path!r}: need an .npz with 'labels' [N, K] (1/0, -1 unlabelled), optional 'names', 'groups' ({e})"
        ) from None
    if not args.activations:
        raise ConfigError("activations", None, "--tasks FILE needs --activations with rows aligned to its labels")
    store = ActivationStore(args.activations)
    _check_width(sae, store.d_in, args.activations)
    if labels.ndim != 2 or labels.shape[0] != store.n_rows or len(names) != labels.shape[1]:
        raise DataError(
            f"tasks={path!r}: labels {labels.shape} and {len(names)} names do not fit {store.n_rows} activation rows"
        )
    n = store.n_rows
    if groups is None:
        groups = np.minimum(np.arange(n) * 10 // n, 9)  # ten contiguous blocks: the last two are held out
    codes = SparseCodes.from_batches(iter_codes(sae, store, 0, n), n, sae.cfg.n_latents)
    return codes, labels.astype(np.int8), names, groups, {"tasks": path, "activations": args.activations, "rows": n}


def _cmd_probe1d(args: argparse.Namespace) -> int:
    from saelab.features.probe1d import ProbeConfig, run_probes

    require_positive_int("max_rows", args.max_rows)
    require_positive_int("games", args.games)
    cfg = ProbeConfig(l2=args.l2, test_fraction=args.test_fraction).validate()
    sae = _load_sae(args.sae)
    t0 = time.perf_counter()
    with torch.no_grad():
        codes, labels, names, groups, source = _probe_inputs(args, sae, _record(args.sae))
    report = run_probes(codes, labels, names, groups, cfg, {"sae": args.sae, **source}, progress=True)
    seconds = time.perf_counter() - t0
    if args.json:
        print(dumps_json({**report.to_dict(), "seconds": round(seconds, 2)}))
        return 0

    def f(x, fmt=".4f"):
        return "n/a" if x is None else format(x, fmt)

    print(f"{len(names)} tasks ({source['tasks']}), {codes.n_rows} rows, {seconds:.1f}s")
    print(
        f"  probe loss {f(report.probe_loss)}  (predicting the base rate: {f(report.baseline_loss)}; mean AUROC {f(report.mean_auroc, '.3f')})"
    )
    for t in report.tasks:
        if t.skipped:
            print(f"  {t.task:22s} skipped: {t.skipped}")
        else:
            print(
                f"  {t.task:22s} base {t.base_rate:.4f}  latent {t.latent:6d}  CE {t.test_ce:.4f} (base {t.baseline_ce:.4f})  AUROC {f(t.test_auroc, '.3f')}"
            )
    return 0


def register(subparsers: Any) -> None:
    """Add `saelab probe1d` to the top-level subparsers."""
    p = subparsers.add_parser(
        "probe1d", help="1-d logistic probes of every latent on binary tasks (the scaling paper's probe loss)"
    )
    p.add_argument("--sae", required=True, help="trained SAE folder")
    p.add_argument(
        "--tasks",
        required=True,
        help="othello | text | FILE.npz ('labels' [N, K] of 1/0/-1, optional 'names', 'groups')",
    )
    p.add_argument(
        "--activations",
        default=None,
        help="text: LM cache (default: the SAE's training cache); FILE: rows aligned to it",
    )
    p.add_argument("--model", default=None, help="text: tokenizer source (default: the cache's model)")
    p.add_argument("--max-rows", type=int, default=100_000, help="text: held-out rows used")
    p.add_argument("--games", type=int, default=2000, help="othello: fresh held-out games")
    p.add_argument("--l2", type=float, default=1e-4, help="ridge on the weight, in units of the latent's spread")
    p.add_argument(
        "--test-fraction", type=float, default=0.2, help="share of windows / games held out for the reported CE"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_threads(p)
    p.set_defaults(func=_cmd_probe1d)
