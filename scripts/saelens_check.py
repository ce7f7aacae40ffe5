#!/usr/bin/env python3
"""Check that SAELens loads a saelab-exported SAE folder and reproduces saelab's outputs.

Run with the SAELens venv's interpreter (see scripts/setup_saelens_venv.sh), never the main one:

    .venv-saelens/bin/python scripts/saelens_check.py --sae DIR --inputs X.npy \
        --expected-latents Z.npy --expected-recon XHAT.npy [--atol 1e-5] [--rtol 0]

DIR holds `cfg.json` and `sae_weights.safetensors`. The script loads it with
`sae_lens.SAE.load_from_disk(DIR)`, computes z = sae.encode(x) and x_hat = sae.decode(z)
(the decode takes SAELens's own latents), and compares them with the expected arrays.

It prints exactly one JSON line on stdout:

    {"architecture": ..., "hook_name": ..., "max_abs_latent_diff": ..., "max_abs_recon_diff": ..., "ok": true/false, ...}

Exit status: 0 when every element is within atol (+ rtol*|expected| if --rtol is given), 1 when they are not (or shapes differ,
or a value is NaN), 2 when the folder could not be loaded or run at all ("error" says why).

This script deliberately does not import saelab: it checks the folder as a SAELens user sees it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import warnings


def _within(got, expected, atol: float, rtol: float) -> bool:
    """Every |got - expected| <= atol + rtol*|expected| (shapes must match, nan never passes)."""
    import numpy as np

    got = np.asarray(got, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if got.shape != expected.shape:
        return False
    return bool(np.all(np.abs(got - expected) <= atol + rtol * np.abs(expected)))


def _max_abs_diff(got, expected) -> float:
    """Largest |got - expected| in float64; inf on a shape mismatch, nan if any value is nan."""
    import numpy as np

    got = np.asarray(got, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if got.shape != expected.shape:
        return math.inf
    if got.size == 0:
        return 0.0
    diff = np.abs(got - expected)
    if np.isnan(diff).any():
        return math.nan
    return float(diff.max())


def _emit(result: dict, code: int) -> int:
    print(json.dumps(result), flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sae", required=True, help="folder with cfg.json and sae_weights.safetensors")
    ap.add_argument("--inputs", required=True, help=".npy of inputs x, shape [..., d_in]")
    ap.add_argument("--expected-latents", required=True, help=".npy of saelab's latents z, shape [..., d_sae]")
    ap.add_argument("--expected-recon", required=True, help=".npy of saelab's reconstruction x_hat, shape [..., d_in]")
    ap.add_argument("--atol", type=float, default=1e-5, help="largest allowed absolute difference (default 1e-5)")
    ap.add_argument(
        "--rtol",
        type=float,
        default=0.0,
        help="also allow rtol*|expected| per element, as numpy.allclose (default 0: pure --atol check)",
    )
    args = ap.parse_args(argv)

    result: dict = {
        "architecture": None,
        "max_abs_latent_diff": None,
        "max_abs_recon_diff": None,
        "ok": False,
    }
    try:
        # Keep stdout to the one JSON line: anything the libraries print goes to stderr.
        with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import numpy as np
            import sae_lens
            import torch
            from sae_lens import SAE

            result["sae_lens_version"] = sae_lens.__version__
            x = np.load(args.inputs)
            z_expected = np.load(args.expected_latents)
            x_hat_expected = np.load(args.expected_recon)

            sae = SAE.load_from_disk(args.sae, device="cpu")
            sae.eval()
            result["architecture"] = sae.cfg.architecture()
            result["dtype"] = str(sae.cfg.dtype)
            metadata = getattr(sae.cfg, "metadata", None)  # SAELens 6: where the model and hook are named
            result["hook_name"] = getattr(metadata, "hook_name", None)
            result["model_name"] = getattr(metadata, "model_name", None)
            with torch.no_grad():
                z = sae.encode(torch.from_numpy(np.ascontiguousarray(x)))
                x_hat = sae.decode(z)
            if z.is_sparse:
                z = z.to_dense()
            z_np = z.float().numpy() if z.dtype == torch.bfloat16 else z.numpy()
            x_hat_np = x_hat.float().numpy() if x_hat.dtype == torch.bfloat16 else x_hat.numpy()
    except Exception as exc:  # noqa: BLE001 - report any load/run failure as one JSON line
        result["error"] = f"{type(exc).__name__}: {exc}"
        return _emit(result, 2)

    latent_diff = _max_abs_diff(z_np, z_expected)
    recon_diff = _max_abs_diff(x_hat_np, x_hat_expected)
    problems = []
    if z_np.shape != z_expected.shape:
        problems.append(f"latent shape {list(z_np.shape)} != expected {list(z_expected.shape)}")
    if x_hat_np.shape != x_hat_expected.shape:
        problems.append(f"recon shape {list(x_hat_np.shape)} != expected {list(x_hat_expected.shape)}")
    # json cannot hold inf/nan: report those as strings.
    result["max_abs_latent_diff"] = latent_diff if math.isfinite(latent_diff) else str(latent_diff)
    result["max_abs_recon_diff"] = recon_diff if math.isfinite(recon_diff) else str(recon_diff)
    result["ok"] = _within(z_np, z_expected, args.atol, args.rtol) and _within(
        x_hat_np, x_hat_expected, args.atol, args.rtol
    )
    result["atol"] = args.atol
    if args.rtol:
        result["rtol"] = args.rtol
    if problems:
        result["error"] = "; ".join(problems)
    return _emit(result, 0 if result["ok"] else 1)


if __name__ == "__main__":
    sys.exit(main())
