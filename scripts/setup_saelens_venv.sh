#!/usr/bin/env bash
# Create (or reuse) the separate SAELens venv used by scripts/saelens_check.py.
#
#   bash scripts/setup_saelens_venv.sh            # -> <repo>/.venv-saelens
#
# Environment overrides:
#   SAELENS_VENV   venv path                       (default: <repo>/.venv-saelens, git-ignored)
#   SAELENS_SPEC   pip requirement for sae-lens    (default: sae-lens==6.54.12, the version checked)
#   TORCH_SPEC     pip requirement for torch       (default: torch==2.13.0, resolves to the CPU wheel)
#   PYTHON         interpreter to build it from    (default: python3)
#
# torch is installed FIRST and then held with a constraints file, so sae-lens's dependency
# tree (transformer-lens, transformers, accelerate, ...) sees torch satisfied and never pulls
# a CUDA build or nvidia-* packages. Idempotent: an existing venv that already has the wanted
# torch and sae-lens is left as it is. Takes ~1.5 minutes on a fresh venv (wheels cached: less)
# and ~1.9 GB of disk.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SAELENS_VENV:-$repo/.venv-saelens}"
saelens_spec="${SAELENS_SPEC:-sae-lens==6.54.12}"
torch_spec="${TORCH_SPEC:-torch==2.13.0}"
python="${PYTHON:-python3}"

py="$venv/bin/python"
pip=("$py" -m pip --disable-pip-version-check)

# Fast path: the venv already has versions matching both specs (checked offline).
satisfied() {
    [ -x "$py" ] && "$py" - "$torch_spec" "$saelens_spec" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
from packaging.requirements import Requirement
for spec in sys.argv[1:]:
    req = Requirement(spec)
    if not req.specifier.contains(version(req.name), prereleases=True):
        sys.exit(1)
import importlib.util, torch  # noqa: E401,F401
if importlib.util.find_spec("sae_lens") is None:
    sys.exit(1)
PY
}
if satisfied; then
    echo "saelens venv ready (already): $venv"
    exit 0
fi

if [ ! -x "$py" ]; then
    echo "creating $venv"
    "$python" -m venv "$venv"
fi

constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
echo "$torch_spec" >"$constraints"

# 1) torch alone first (the CPU wheel), 2) then sae-lens with torch held by the constraint.
"${pip[@]}" install -q -c "$constraints" "$torch_spec"
"${pip[@]}" install -q -c "$constraints" "$saelens_spec"

if "${pip[@]}" list 2>/dev/null | grep -qi '^nvidia-'; then
    echo "error: CUDA (nvidia-*) packages ended up in $venv; remove it and re-run" >&2
    exit 1
fi

"$py" -c 'import torch, sae_lens; print(f"saelens venv ready: sae-lens {sae_lens.__version__}, torch {torch.__version__}")'
