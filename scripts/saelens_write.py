#!/usr/bin/env python3
"""Have SAELens write one SAE folder per architecture, with its own outputs on given inputs.

Run with the SAELens venv's interpreter (scripts/setup_saelens_venv.sh), never the main one:

    .venv-saelens/bin/python scripts/saelens_write.py --inputs X.npy --out DIR

For each case it builds the SAE with SAELens's classes and random weights, saves it the way a
SAELens user does (`save_model`; BatchTopK also through `save_inference_model`, which SAELens
turns into JumpReLU), and writes DIR/<case>/ plus DIR/<case>.z.npy and DIR/<case>.xhat.npy:
SAELens's encode(x) and decode(encode(x)). Prints one JSON line listing the cases written.
This script deliberately does not import saelab.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import warnings


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--inputs", required=True, help=".npy of inputs x [rows, d_in]")
    ap.add_argument("--out", required=True, help="folder to write the SAE folders and outputs into")
    ap.add_argument("--d-sae", type=int, default=48)
    args = ap.parse_args(argv)
    with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pathlib import Path

        import numpy as np
        import torch
        from sae_lens import (
            BatchTopKTrainingSAE,
            BatchTopKTrainingSAEConfig,
            GatedSAE,
            GatedSAEConfig,
            JumpReLUSAE,
            JumpReLUSAEConfig,
            StandardSAE,
            StandardSAEConfig,
            TopKSAE,
            TopKSAEConfig,
        )

        torch.manual_seed(0)
        x = torch.from_numpy(np.load(args.inputs)).float()
        d_in, n = x.shape[-1], args.d_sae
        meta = {
            "model_name": "tiny-gpt2",
            "hook_name": "blocks.1.hook_resid_post",
            "context_size": 32,
            "prepend_bos": True,
        }
        cases = {
            "standard": StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=n)),
            "standard_no_bdec": StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=n, apply_b_dec_to_input=False)),
            "topk": TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=n, k=6)),
            "topk_rescaled": TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=n, k=6, rescale_acts_by_decoder_norm=True)),
            "jumprelu": JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=n)),
            "batchtopk": BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=d_in, d_sae=n, k=6)),
            "gated": GatedSAE(GatedSAEConfig(d_in=d_in, d_sae=n)),
            "gated_no_bdec": GatedSAE(GatedSAEConfig(d_in=d_in, d_sae=n, apply_b_dec_to_input=False)),
        }
        out = Path(args.out)
        written = []
        for name, sae in cases.items():
            with torch.no_grad():
                for p in sae.parameters():
                    p.copy_(torch.randn_like(p) * 0.4)
                if hasattr(sae, "threshold"):
                    sae.threshold.copy_(torch.rand_like(sae.threshold) * 0.5)
                if hasattr(sae, "topk_threshold"):
                    sae.topk_threshold.fill_(0.3)
            for key, value in meta.items():
                sae.cfg.metadata[key] = value
            sae.eval()
            if name == "batchtopk":
                sae.save_inference_model(out / "batchtopk_inference")  # SAELens saves it as JumpReLU
                inference = JumpReLUSAE.load_from_disk(out / "batchtopk_inference")
                targets = [("batchtopk_inference", inference)]
            else:
                sae.save_model(out / name)
                targets = [(name, sae)]
            for folder, model in targets:
                with torch.no_grad():
                    z = model.encode(x)
                    x_hat = model.decode(z)
                np.save(out / f"{folder}.z.npy", z.numpy())
                np.save(out / f"{folder}.xhat.npy", x_hat.numpy())
                written.append(folder)
    print(json.dumps({"written": written}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
