#!/usr/bin/env python3
"""A saelab SAE through SAEBench's custom-SAE checks and core evaluation, on a tiny local model.

Run with the SAELens venv's interpreter after scripts/setup_saebench_venv.sh, with saelab's
src/ on PYTHONPATH for `check` (saelab needs only torch, numpy, safetensors, tqdm there):

    .venv-saelens/bin/python scripts/saebench_tiny.py model --out DIR
    PYTHONPATH=src .venv-saelens/bin/python scripts/saebench_tiny.py check --sae RUN [--sae RUN2 ...] --model DIR --out OUT

`model` builds, offline, a GPT-2-architecture HookedTransformer with random weights (2 layers,
d_model 16) and a byte-level BPE tokenizer trained on a synthetic corpus, saves both under DIR
(model.pt, tokenizer/, texts.json) and writes DIR/activations.npy: TransformerLens's
blocks.1.hook_resid_post on context-32 windows with BOS prepended, the site the SAE is trained on.

`check` loads the saelab SAE with saelab.load and puts it through SAEBench 0.6.0:
  - the custom-SAE contract (sae_bench/custom_saes/base_sae.py): W_enc/W_dec/b_enc/b_dec shapes,
    .device/.dtype, the cfg fields; BaseSAE.test_sae (decode(encode(x)) == forward(x) on the
    model's activations); sae_bench_utils.general_utils.check_decoder_norms;
    general_utils.load_and_format_sae (what multiple_evals calls on a custom SAE object);
  - the core evaluation, sae_bench.evals.core.main.multiple_evals, unchanged except for its two
    Hub loaders: HookedTransformer.from_pretrained_no_processing(sae.cfg.model_name) returns the
    local model, and the text dataset is a local datasets.Dataset instead of a Hub name. Before
    that it calls the unpatched loader once and records its error (why the stock path is not offline).
Prints one JSON line with every result; exit status 0 only when every check passed.
This script imports saelab only in `check`, and only to load the folder.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import traceback
import warnings
from pathlib import Path

HOOK = "blocks.1.hook_resid_post"
LAYER = 1
CONTEXT = 32
MODEL_NAME = "saelab-tiny-gpt2"  # not a TransformerLens / Hub name: the stock loader cannot resolve it
DATASET_NAME = "local/saelab-tiny-texts"  # stands for the local datasets.Dataset of texts.json
WORDS = (
    "the cat dog bird sat ran flew on under over a mat log tree red blue green small big quick slow "
    "and then it was very quite not here there home away day night sun moon"
).split()


def corpus(n: int, seed: int) -> list[str]:
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60))) + "." for _ in range(n)]


def build_tokenizer(texts: list[str], out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        add_bos_token=True,
    )
    fast.save_pretrained(out)
    return AutoTokenizer.from_pretrained(str(out))  # a local name_or_path: TransformerLens reloads it from there


def tiny_model(folder: Path):
    """The HookedTransformer saved in `folder` (or a fresh one when model.pt is missing)."""
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=16,
        d_head=4,
        n_heads=4,
        d_mlp=64,
        n_ctx=CONTEXT + 1,
        d_vocab=len(tokenizer),
        act_fn="gelu_new",
        normalization_type="LN",
        positional_embedding_type="standard",
        original_architecture="GPT2LMHeadModel",
        model_name=MODEL_NAME,
        seed=0,
        device="cpu",
    )
    model = HookedTransformer(cfg, tokenizer=tokenizer)
    if (folder / "model.pt").exists():
        model.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
    return model.eval()


def make_model(out: Path) -> dict:
    import numpy as np
    import torch

    out.mkdir(parents=True, exist_ok=True)
    texts = corpus(400, seed=0)
    build_tokenizer(texts, out / "tokenizer")
    model = tiny_model(out)
    with torch.no_grad():
        for name, p in model.named_parameters():  # bigger than the default init so the residual stream varies
            if name.endswith(("W_E", "W_pos")):
                p.normal_(0, 1.0)
    torch.save(model.state_dict(), out / "model.pt")
    (out / "texts.json").write_text(json.dumps(texts))
    ids = torch.tensor(model.tokenizer(" ".join(texts), add_special_tokens=False)["input_ids"])
    n = (len(ids) // CONTEXT) * CONTEXT
    windows = ids[:n].reshape(-1, CONTEXT)
    bos = torch.full((windows.shape[0], 1), model.tokenizer.bos_token_id)
    windows = torch.cat([bos, windows], dim=1)[:, :CONTEXT]  # prepend BOS, keep CONTEXT tokens
    with torch.no_grad():
        _, cache = model.run_with_cache(windows, names_filter=[HOOK], stop_at_layer=LAYER + 1)
    acts = cache[HOOK][:, 1:].reshape(-1, model.cfg.d_model)  # saelab lm activations drops the BOS row
    np.save(out / "activations.npy", acts.float().numpy())
    return {
        "rows": int(acts.shape[0]),
        "d_model": model.cfg.d_model,
        "d_vocab": model.cfg.d_vocab,
        "windows": int(windows.shape[0]),
    }


def check_all(sae_dirs: list[Path], model_dir: Path, out: Path) -> dict:
    """check() for each folder (one process: the imports dominate), plus the stock loader's error once."""
    from transformer_lens import HookedTransformer

    results: dict = {"saes": {d.name: check(d, model_dir, out / d.name) for d in sae_dirs}}
    # Why SAEBench's own model loading cannot run here: recorded, not retried.
    try:
        with contextlib.redirect_stdout(sys.stderr):
            HookedTransformer.from_pretrained_no_processing(MODEL_NAME, device="cpu")
        results["stock_model_loader"] = "loaded"
    except Exception as e:  # noqa: BLE001
        results["stock_model_loader"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
    results["ok"] = all(r["ok"] for r in results["saes"].values())
    return results


def check(sae_dir: Path, model_dir: Path, out: Path) -> dict:
    import numpy as np
    import sae_bench.evals.core.main as core
    import torch
    from datasets import Dataset
    from sae_bench.custom_saes.base_sae import BaseSAE
    from sae_bench.sae_bench_utils import general_utils
    from transformer_lens import HookedTransformer

    import saelab

    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"checks": {}, "errors": {}}

    def run(name, fn):
        try:
            value = fn()
            results["checks"][name] = True if value is None else value
        except Exception as e:  # noqa: BLE001 - every failure is reported by name
            results["checks"][name] = False
            results["errors"][name] = f"{type(e).__name__}: {e}"
            print(traceback.format_exc(), file=sys.stderr)

    sae = saelab.load(sae_dir)
    model = tiny_model(model_dir)

    def contract():
        c = sae.cfg
        assert tuple(sae.W_enc.shape) == (c.d_in, c.d_sae) and tuple(sae.W_dec.shape) == (c.d_sae, c.d_in)
        assert tuple(sae.b_enc.shape) == (c.d_sae,) and tuple(sae.b_dec.shape) == (c.d_in,)
        assert isinstance(sae.device, torch.device) and sae.dtype == torch.float32
        fields = {
            f: getattr(c, f)
            for f in (
                "d_in",
                "d_sae",
                "architecture",
                "hook_name",
                "hook_layer",
                "model_name",
                "context_size",
                "prepend_bos",
                "dtype",
                "device",
            )
        }
        assert (fields["model_name"], fields["hook_name"], fields["hook_layer"], fields["context_size"]) == (
            MODEL_NAME,
            HOOK,
            LAYER,
            CONTEXT,
        ), fields
        assert fields["d_in"] == model.cfg.d_model
        return {k: v if isinstance(v, (int, str, bool, type(None))) else str(v) for k, v in fields.items()}

    run("custom_sae_contract", contract)

    # BaseSAE.test_sae with its model loader pointed at the local model (it calls
    # HookedTransformer.from_pretrained(model_name), which needs the Hub).
    def test_sae():
        import sae_bench.custom_saes.base_sae as base

        real = base.HookedTransformer
        base.HookedTransformer = type(
            "Local", (), {"from_pretrained": staticmethod(lambda name, device=None, **kw: model)}
        )
        try:
            BaseSAE.test_sae(sae, MODEL_NAME)
        finally:
            base.HookedTransformer = real

    run("base_sae_test_sae", test_sae)
    run("check_decoder_norms", lambda: bool(general_utils.check_decoder_norms(sae.W_dec.data)))

    # Same encode/decode contract on the activations saelab trained on (3-D, as the evals pass them).
    def encode_decode_consistent():
        x = torch.from_numpy(np.load(model_dir / "activations.npy")[: 8 * (CONTEXT - 1)]).reshape(8, CONTEXT - 1, -1)
        with torch.no_grad():
            torch.testing.assert_close(sae.decode(sae.encode(x)), sae(x), rtol=1e-5, atol=1e-5)

    run("decode_encode_equals_forward", encode_decode_consistent)

    def load_and_format():
        sae_id, formatted, _sparsity = general_utils.load_and_format_sae("saelab", sae, "cpu")
        assert formatted is sae and sae_id == "custom_sae"
        return {
            "hook_name": formatted.cfg.metadata.hook_name,
            "hook_layer": formatted.cfg.metadata.hook_layer,
            "architecture_str": formatted.cfg.architecture_str,
        }

    run("load_and_format_sae", load_and_format)

    # The core evaluation, SAEBench's driver as is; only the two Hub loaders are local.
    def core_eval():
        texts = json.loads((model_dir / "texts.json").read_text())
        dataset = Dataset.from_dict({"text": texts})
        real, real_store = HookedTransformer.from_pretrained_no_processing, core.ActivationsStore

        class LocalStore(real_store):  # CoreEvalConfig takes the dataset as a name: map ours to the local Dataset
            @classmethod
            def from_sae(cls, model, sae, dataset, **kw):
                return real_store.from_sae(model, sae, dataset if dataset != DATASET_NAME else local, **kw)

        local = dataset
        core.ActivationsStore = LocalStore
        errors: list[str] = []
        handler = _ListHandler(errors)
        core.logger.addHandler(handler)
        HookedTransformer.from_pretrained_no_processing = classmethod(
            lambda cls, name, **kw: model if name == MODEL_NAME else real(name, **kw)
        )
        try:
            evals = core.multiple_evals(
                selected_saes=[("saelab", sae)],
                n_eval_reconstruction_batches=2,
                n_eval_sparsity_variance_batches=2,
                eval_batch_size_prompts=4,
                compute_featurewise_density_statistics=True,
                compute_featurewise_weight_based_metrics=True,
                dataset=DATASET_NAME,
                context_size=CONTEXT,
                output_folder=str(out / "core"),
                device="cpu",
                force_rerun=True,
            )
        finally:
            HookedTransformer.from_pretrained_no_processing, core.ActivationsStore = real, real_store
            core.logger.removeHandler(handler)
        if not evals:
            raise RuntimeError("multiple_evals evaluated nothing: " + " | ".join(errors))
        files = sorted((out / "core").glob("*.json"))
        assert files, "no result file written"
        metrics = json.loads(files[0].read_text())["eval_result_metrics"]
        return {"file": files[0].name, "metrics": metrics}

    run("core_multiple_evals", core_eval)
    results["ok"] = all(v is not False for v in results["checks"].values())
    return results


class _ListHandler:
    """A logging handler that keeps the messages (multiple_evals logs and skips what fails)."""

    def __new__(cls, sink: list):
        import logging

        class H(logging.Handler):
            def emit(self, record):
                sink.append(record.getMessage())

        return H(level=logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("model")
    m.add_argument("--out", required=True)
    c = sub.add_parser("check")
    c.add_argument("--sae", required=True, action="append", help="saelab folder (repeatable)")
    c.add_argument("--model", required=True)
    c.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if args.cmd == "model":
            result = make_model(Path(args.out))
            result["ok"] = True
        else:
            result = check_all([Path(p) for p in args.sae], Path(args.model), Path(args.out))
    print(json.dumps(result, default=str))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
