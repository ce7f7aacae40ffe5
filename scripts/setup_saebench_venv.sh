#!/usr/bin/env bash
# Add SAEBench and EleutherAI sparsify to the SAELens venv (scripts/setup_saelens_venv.sh), for the
# compat tests tests/compat/test_saebench_compat.py and tests/compat/test_sparsify_compat.py.
#
#   bash scripts/setup_saebench_venv.sh           # -> <repo>/.venv-saelens (built first if missing)
#
# Environment overrides (plus those of setup_saelens_venv.sh: SAELENS_VENV, TORCH_SPEC, PYTHON):
#   SAEBENCH_SPEC   pip requirement for sae-bench     (default: sae-bench==0.6.0, the version checked)
#   SPARSIFY_SPEC   pip requirement for sparsify      (default: eai-sparsify==1.3.3, EleutherAI's;
#                   the PyPI name `sparsify` is Neural Magic's unrelated, deprecated package)
#
# Both are installed with --no-deps: sae-bench 0.6.0 declares numpy<2, datasets<4, torchvision,
# openai, sae-probes, seaborn, ... which would downgrade the SAELens venv's numpy/datasets and pull
# a torchvision matching no CPU torch; the modules the tests import (sae_bench.custom_saes,
# sae_bench.evals.core, sae_bench.sae_bench_utils; sparsify.SparseCoder) need only what the SAELens
# venv has plus the small pure-Python packages in EXTRA below. torch stays held by a constraints
# file. Idempotent: when everything is already there it returns at once (offline check).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SAELENS_VENV:-$repo/.venv-saelens}"
saebench_spec="${SAEBENCH_SPEC:-sae-bench==0.6.0}"
sparsify_spec="${SPARSIFY_SPEC:-eai-sparsify==1.3.3}"
torch_spec="${TORCH_SPEC:-torch==2.13.0}"
# Imported by the modules used, not present in the SAELens venv: tabulate (sae_bench_utils.
# sae_selection_utils, imported by evals.core.main), natsort and schedulefree (sparsify/__init__).
EXTRA=(tabulate natsort schedulefree)

SAELENS_VENV="$venv" bash "$repo/scripts/setup_saelens_venv.sh"

py="$venv/bin/python"
pip=("$py" -m pip --disable-pip-version-check)

satisfied() {
    "$py" - "$saebench_spec" "$sparsify_spec" "$torch_spec" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
from packaging.requirements import Requirement
for spec in sys.argv[1:]:
    req = Requirement(spec)
    if not req.specifier.contains(version(req.name), prereleases=True):
        sys.exit(1)
import importlib.util
for module in ("tabulate", "natsort", "schedulefree", "sae_bench", "sparsify"):
    if importlib.util.find_spec(module) is None:
        sys.exit(1)
PY
}
if satisfied; then
    echo "saebench + sparsify ready (already): $venv"
    exit 0
fi

constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
echo "$torch_spec" >"$constraints"

"${pip[@]}" install -q -c "$constraints" "${EXTRA[@]}"
"${pip[@]}" install -q --no-deps "$saebench_spec" "$sparsify_spec"

if "${pip[@]}" list 2>/dev/null | grep -qi '^nvidia-'; then
    echo "error: CUDA (nvidia-*) packages ended up in $venv; remove it and re-run" >&2
    exit 1
fi

"$py" -c 'import warnings; warnings.simplefilter("ignore")
import torch, sparsify, sae_bench.custom_saes.base_sae, sae_bench.evals.core.main
from importlib.metadata import version
print("saebench + sparsify ready: sae-bench", version("sae-bench"), "eai-sparsify", sparsify.__version__, "torch", torch.__version__)'
