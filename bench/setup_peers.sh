#!/usr/bin/env bash
# Build the git-ignored virtual environments that bench/peers.py times the other libraries in.
#
#   bash bench/setup_peers.sh              # all three
#   bash bench/setup_peers.sh sparsify     # one of: saelens sparsify dictlearn
#
# Each venv gets torch==2.13.0 first (the CPU wheel on this machine) and is then held to it by a
# constraints file, so no peer's dependency tree can pull a CUDA build or nvidia-* packages.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
torch_spec="${TORCH_SPEC:-torch==2.13.0}"

build() {  # build <venv dir> <pip requirement...>
    local venv="$repo/$1"; shift
    local py="$venv/bin/python"
    [ -x "$py" ] || "$python" -m venv "$venv"
    local constraints; constraints="$(mktemp)"
    echo "$torch_spec" >"$constraints"
    "$py" -m pip install -q --disable-pip-version-check -c "$constraints" "$torch_spec"
    "$py" -m pip install -q --disable-pip-version-check -c "$constraints" "$@"
    rm -f "$constraints"
    if "$py" -m pip list 2>/dev/null | grep -qi '^nvidia-'; then
        echo "error: CUDA packages ended up in $venv; remove it and re-run" >&2
        exit 1
    fi
    echo "ready: $venv"
}

want="${1:-all}"
if [ "$want" = all ] || [ "$want" = saelens ]; then bash "$repo/scripts/setup_saelens_venv.sh"; fi
if [ "$want" = all ] || [ "$want" = sparsify ]; then build .venv-sparsify "eai-sparsify==1.3.3"; fi
if [ "$want" = all ] || [ "$want" = dictlearn ]; then
    build .venv-dictlearn "dictionary-learning==0.1.0"
    # nnsight pulls a torchvision built for another torch; its broken ops make `import transformers`
    # fail. dictionary_learning's trainers never use it, so it goes.
    "$repo/.venv-dictlearn/bin/python" -m pip uninstall -q -y torchvision || true
fi
