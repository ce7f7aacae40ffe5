"""`saelab lm ...`: harvest a Hugging Face causal LM's activations, evaluate an SAE downstream, ablate lowest activations."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Any

import saelab
from saelab.commands import features, lm_train
from saelab.commands.common import add_threads
from saelab.config import require_positive_int
from saelab.errors import DataError, SaelabError
from saelab.evals.refine import RefinedSAE
from saelab.formats.folder import read_saelab_record
from saelab.sources.lm.ablate_lowest import SweepGrid, sweep_ablations, write_sweep
from saelab.sources.lm.downstream import evaluate_downstream
from saelab.sources.lm.harvest import HarvestConfig, harvest
from saelab.sources.lm.model import SITES, LMSpec, load_lm
from saelab.sources.lm.text import TextConfig, iter_chunks, take_windows
from saelab.util import distributed
from saelab.util.atomic import dumps_json


def _recorded_source(sae_dir: str) -> dict[str, Any]:
    """The activation provenance the trainer stored in saelab.json ("source": the cache manifest), if any."""
    try:
        record = read_saelab_record(sae_dir)
    except DataError:
        return {}  # a folder without saelab's record (e.g. written by SAELens): flags must say everything
    source = record.get("source")
    return source if isinstance(source, dict) else {}


@dataclass(frozen=True)
class EvalSource:
    """Where and how an SAE reads the LM: flags first, else what its folder records of its training cache."""

    layer: int
    site: str
    context: int
    outlier_factor: float | None
    prepend_bos: bool


def _eval_source(args: argparse.Namespace) -> EvalSource:
    recorded = _recorded_source(args.sae)
    options = recorded.get("options") if isinstance(recorded.get("options"), dict) else {}
    layer = args.layer if args.layer is not None else recorded.get("layer")
    site = args.site if args.site is not None else recorded.get("site")
    if layer is None:
        raise SaelabError(f"--layer is required: SAE folder {args.sae!r} does not record its layer")
    if site is None:
        raise SaelabError(f"--site is required: SAE folder {args.sae!r} does not record its site")
    outliers = args.drop_outliers if args.drop_outliers is not None else options.get("outlier_factor")
    return EvalSource(
        layer=int(layer),
        site=str(site),
        context=int(args.context if args.context is not None else recorded.get("context", 64)),
        outlier_factor=None if outliers is None else float(outliers),
        prepend_bos=not args.no_bos and bool(options.get("prepend_bos", True)),
    )


def _eval_setup(args: argparse.Namespace):
    """Validate inputs, load SAE and LM, and materialise the evaluation batches."""

    require_positive_int("tokens", args.tokens)
    require_positive_int("batch_size", args.batch_size)
    if not os.path.isdir(args.sae):
        raise SaelabError(f"sae={args.sae!r}: no such SAE folder")
    src = _eval_source(args)
    if src.site not in SITES:
        raise SaelabError(f"site={src.site!r}: unknown site; choose one of {', '.join(SITES)}")
    require_positive_int("context", src.context)
    text_cfg = TextConfig(args.text, src.context, src.prepend_bos, args.text_field, args.split)
    iter_chunks(text_cfg)  # a missing local source fails before the model loads
    sae = saelab.load(args.sae).eval()  # the public loader (tests stand in a tiny SAE through it)
    lm = load_lm(LMSpec(args.model, args.device, args.model_dtype))
    site = lm.site(src.layer, src.site)
    d_in = getattr(getattr(sae, "cfg", None), "d_in", None)
    if d_in is not None and int(d_in) != lm.d_model:
        raise SaelabError(f"sae={args.sae!r}: d_in={d_in} does not match the model's width {lm.d_model}")
    n_windows = max(1, args.tokens // src.context)
    batches = take_windows(lm.tokenizer, text_cfg, args.batch_size, n_windows, skip=args.skip_windows)
    return lm, site, sae, batches, src.outlier_factor


def _cmd_activations(args: argparse.Namespace) -> int:
    cfg = HarvestConfig(
        model=args.model,
        layer=args.layer,
        site=args.site,
        text=args.text,
        tokens=args.tokens,
        out=args.out,
        context=args.context,
        dtype=args.dtype,
        model_dtype=args.model_dtype,
        device=args.device,
        batch_size=args.batch_size,
        shard_rows=args.shard_rows,
        drop_first=not args.keep_first,
        outlier_factor=args.drop_outliers,
        prepend_bos=not args.no_bos,
        text_field=args.text_field,
        split=args.split,
        extend=args.extend,
    )
    try:
        res = harvest(cfg, log=lambda m: print(m, file=sys.stderr, flush=True))
    except KeyboardInterrupt:
        print(f"interrupted; rerun the same command to resume into {args.out}", file=sys.stderr)
        return 130
    if not distributed.current().is_main:  # torchrun: rank 0 wrote the manifest and reports
        return 0
    if res.exhausted:
        print(f"warning: text {args.text!r} ran out after {res.rows} rows (asked {args.tokens})", file=sys.stderr)
    print(
        f"wrote {res.new_rows} rows ({res.rows} in all) to {res.out} in {res.seconds:.1f}s "
        f"({res.tokens_per_s:.0f} tokens/s through the model)"
    )
    return 0


REFINE_LM_KEYS = (
    "refine_ce_before", "refine_ce_after", "refine_kl_before", "refine_kl_after",
    "refine_nmse_before", "refine_nmse_after", "refine_converged",
)  # fmt: skip


def _cmd_eval(args: argparse.Namespace) -> int:

    lm, site, sae, batches, outliers = _eval_setup(args)
    res = evaluate_downstream(lm, site, sae, batches, outliers).to_dict()
    keys = (
        "ce_clean", "ce_sae", "ce_zero", "ce_mean", "ce_recovered_zero", "ce_recovered_mean",
        "kl", "l0", "nmse", "cos_sim", "l2_ratio", "tokens",
    )  # fmt: skip
    if args.refine:
        # The same windows with each token's active set re-fitted: what shrinkage costs downstream.
        refined_sae = RefinedSAE(sae)
        ref = evaluate_downstream(lm, site, refined_sae, batches, outliers).to_dict()
        res.update({
            "refine_ce_before": res["ce_sae"], "refine_ce_after": ref["ce_sae"],
            "refine_kl_before": res["kl"], "refine_kl_after": ref["kl"],
            "refine_nmse_before": res["nmse"], "refine_nmse_after": ref["nmse"],
            "refine_converged": refined_sae.stats.max_residual <= refined_sae.config.tol,
        })  # fmt: skip
        keys = keys + REFINE_LM_KEYS
    if args.json:
        print(dumps_json({k: res[k] for k in keys}))
    else:
        print(f"{lm.name} {site}: {res['tokens']} predictions")
        for k in tuple(key for key in keys if key != "tokens") + ("explained_variance",):
            v = res[k]
            print(f"  {k:18s} {'n/a' if v is None else f'{v:.4f}'}")
    return 0


def _floats(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise SaelabError(f"{text!r}: expected comma-separated numbers") from exc


def _cmd_ablate(args: argparse.Namespace) -> int:

    for name in ("ablate_lowest.json", "ablate_lowest.png"):
        if os.path.exists(os.path.join(args.out, name)) and not args.overwrite:
            raise SaelabError(f"out={args.out!r}: already holds {name}; choose another folder or pass --overwrite")
    defaults = SweepGrid()
    ks = _floats(args.lowest_k)
    grid = SweepGrid(
        lowest_k=tuple(int(k) for k in ks) if ks else defaults.lowest_k,
        frac_of_max=_floats(args.fractions) or defaults.frac_of_max,
        quantile=_floats(args.quantiles) or defaults.quantile,
        global_threshold=_floats(args.thresholds),
        global_quantiles=_floats(args.global_quantiles) or defaults.global_quantiles,
    )
    lm, site, sae, batches, outliers = _eval_setup(args)
    sweep = sweep_ablations(lm, site, sae, batches, grid, outliers)
    json_path, png_path = write_sweep(sweep, args.out)
    print(f"wrote {json_path} and {png_path} ({len(sweep.points)} points, {sweep.tokens} predictions)")
    return 0


def _common(p: argparse.ArgumentParser, tokens: int, batch_size: int, context: int | None = 64) -> None:
    p.add_argument("--model", required=True, help="hub name, local model folder, or path of a .gguf file")
    p.add_argument("--text", required=True, help="local .txt/.jsonl file or folder, or a HF dataset NAME[:CONFIG]")
    p.add_argument("--tokens", type=int, default=tokens, help="number of tokens (activation rows / eval tokens)")
    p.add_argument("--context", type=int, default=context,
                   help="tokens per window, BOS included (default 64, or the SAE's training context)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=batch_size, help="windows per forward pass")
    p.add_argument("--text-field", default="text", help="JSONL key / dataset column holding the text")
    p.add_argument("--split", default="train", help="dataset split (HF datasets)")
    p.add_argument("--no-bos", action="store_true", help="do not start each window with BOS")
    p.add_argument("--model-dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    p.add_argument("--device", default="cpu", help="torch device for the LM (default cpu)")
    add_threads(p)


def _sae_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sae", required=True, help="trained SAE folder")
    p.add_argument("--layer", type=int, default=None, help="block index (default: recorded in the SAE folder)")
    p.add_argument("--site", default=None, help="resid_pre|resid_post|mlp_out|attn_out (default: recorded)")
    p.add_argument("--skip-windows", type=int, default=0, help="skip this many windows of the text (held-out data)")
    p.add_argument("--drop-outliers", type=float, default=None, metavar="FACTOR",
                   help="leave tokens with norm > FACTOR x batch median unspliced (default: as harvested)")  # fmt: skip


def register(subparsers: Any) -> None:
    """Add the `lm` command (activations, eval, ablate-lowest, examples, explain, ablation-sparsity) to the top-level saelab subparsers."""
    lm = subparsers.add_parser(
        "lm", help="Hugging Face causal LMs: harvest activations, downstream eval, readable features"
    )
    sub = lm.add_subparsers(
        dest="lm_command", metavar="{activations,train,eval,ablate-lowest,examples,explain,ablation-sparsity}"
    )
    sub.required = True

    p = sub.add_parser("activations", help="write an activation cache (shards + manifest)")
    _common(p, tokens=1_000_000, batch_size=32)
    p.add_argument("--layer", type=int, required=True, help="block index, 0-based")
    p.add_argument("--site", default="resid_post", help="resid_pre|resid_post|mlp_out|attn_out (default resid_post)")
    p.add_argument("--out", required=True, help="cache folder (new, or an incomplete cache to resume)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16"), help="dtype of the cache")
    p.add_argument("--shard-rows", type=int, default=65536, help="rows per shard (about)")
    p.add_argument("--keep-first", action="store_true", help="keep position 0 (BOS); dropped by default")
    p.add_argument("--drop-outliers", type=float, default=None, metavar="FACTOR",
                   help="drop tokens whose norm exceeds FACTOR x the batch median norm")  # fmt: skip
    p.add_argument("--extend", action="store_true",
                   help="grow a complete cache of the same model/site/text to --tokens rows (old shards untouched)")  # fmt: skip
    p.set_defaults(func=_cmd_activations)

    p = sub.add_parser("eval", help="downstream CE/KL with the SAE spliced in")
    _common(p, tokens=4096, batch_size=8, context=None)
    _sae_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--refine",
        action="store_true",
        help="also splice in the refined reconstruction (active set kept, values re-fitted): refine_ce_before/after",
    )
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("ablate-lowest", help="sweep the four lowest-activation ablation schemes")
    _common(p, tokens=2048, batch_size=8, context=None)
    _sae_args(p)
    p.add_argument("--out", required=True, help="folder for ablate_lowest.json and ablate_lowest.png")
    p.add_argument("--lowest-k", default=None, help="comma-separated k values")
    p.add_argument("--fractions", default=None, help="comma-separated fractions of each feature's max")
    p.add_argument("--quantiles", default=None, help="comma-separated per-feature quantiles")
    p.add_argument("--thresholds", default=None, help="comma-separated global thresholds (default: quantiles of z)")
    p.add_argument("--global-quantiles", default=None,
                   help="quantiles of all positive latents that set the default global thresholds")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace existing results in --out")
    p.set_defaults(func=_cmd_ablate)

    # examples, explain, ablation-sparsity live in commands/features.py; they reuse this module's flag helpers.
    features.register_lm(sub, _common, _sae_args, _eval_setup)
    lm_train.register(sub)
