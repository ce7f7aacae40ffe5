#!/usr/bin/env python3
"""Have EleutherAI sparsify (PyPI `eai-sparsify`) write SparseCoder folders, with its own outputs on given inputs.

Run with the SAELens venv's interpreter after scripts/setup_saebench_venv.sh, never the main one:

    .venv-saelens/bin/python scripts/sparsify_write.py --inputs X.npy --out DIR

For each case it builds `sparsify.SparseCoder(d_in, SparseCoderConfig(...))`, gives it random
weights, saves it with sparsify's own `save_to_disk` (cfg.json + sae.safetensors), and writes
DIR/<case>.z.npy (the dense code: sparsify's top-k values scattered into [rows, n]) and
DIR/<case>.xhat.npy (sparsify's decode of them). Cases whose options saelab refuses (groupmax,
transcode, skip_connection) are written without outputs. Prints one JSON line listing the cases.
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
    args = ap.parse_args(argv)
    with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pathlib import Path

        import numpy as np
        import sparsify
        import torch
        from sparsify import SparseCoder, SparseCoderConfig

        torch.manual_seed(0)
        x = torch.from_numpy(np.load(args.inputs)).float()
        d_in = x.shape[-1]
        cases = {
            "topk": (SparseCoderConfig(num_latents=48, k=6), True),
            "topk_expansion": (SparseCoderConfig(expansion_factor=3, k=4, normalize_decoder=False), True),
            "multi_topk": (SparseCoderConfig(num_latents=40, k=5, multi_topk=True), True),
            "groupmax": (SparseCoderConfig(num_latents=48, k=6, activation="groupmax"), False),
            "transcode": (SparseCoderConfig(num_latents=48, k=6, transcode=True), False),
            "skip_connection": (SparseCoderConfig(num_latents=48, k=6, skip_connection=True), False),
        }
        out = Path(args.out)
        written, with_outputs = [], []
        for name, (cfg, outputs) in cases.items():
            sae = SparseCoder(d_in, cfg)
            with torch.no_grad():
                sae.encoder.weight.normal_(0, 0.4)
                sae.encoder.bias.normal_(0, 0.1)
                sae.W_dec.normal_(0, 0.4)
                sae.b_dec.normal_(0, 0.3)
                if cfg.normalize_decoder:
                    sae.set_decoder_norm_to_unit_norm()
            sae.save_to_disk(out / name)
            written.append(name)
            if outputs:
                with torch.no_grad():
                    top_acts, top_indices, _ = sae.encode(x)
                    x_hat = sae.decode(top_acts, top_indices)
                    z = torch.zeros(x.shape[0], sae.num_latents).scatter_(-1, top_indices, top_acts)
                np.save(out / f"{name}.z.npy", z.numpy())
                np.save(out / f"{name}.xhat.npy", x_hat.numpy())
                with_outputs.append(name)
    print(json.dumps({"written": written, "outputs": with_outputs, "sparsify_version": sparsify.__version__}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
