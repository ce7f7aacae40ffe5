"""`saelab reproduce` under torchrun: every sweep's SAEs and the search's finalist scores are spread over
2 gloo ranks, and the claims equal the one-process reproduction's (each SAE trains alone on the
batches its seed draws, as in one process, so every number is the same)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from _reproduce_worker import TINY
from cli_harness import run_torchrun

from saelab.experiments.reproduce.run import run_reproduce
from saelab.experiments.sweep_state import RESULTS

WORKER = Path(__file__).with_name("_reproduce_worker.py")


def _torchrun(name: str, out: Path) -> subprocess.CompletedProcess:
    done = run_torchrun(
        [str(WORKER), name, str(out)],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _claims(out: Path) -> list[dict]:
    return json.loads((out / "claims.json").read_text())["claims"]


@pytest.mark.slow  # the search paper twice (2 ranks, then one process) at a tiny budget: ~3 min here
def test_two_ranks_reproduce_the_one_process_claims_and_search(tmp_path):
    spread = tmp_path / "spread"
    done = _torchrun("sparsity-methods", spread)
    assert done.stdout.count("claims: ") == 2  # both ranks returned; only rank 0 wrote
    one = tmp_path / "one"
    run_reproduce("sparsity-methods", TINY, out=one, say=lambda m: None)
    assert _claims(spread) == _claims(one)
    s_search, o_search = (json.loads((d / "search" / "search.json").read_text()) for d in (spread, one))
    assert s_search == o_search  # the same screen numbers, finalists, scores and choices
    # `best` trains only the chosen settings the matched sweep does not (ReLU without penalty never is).
    for sweep in ("methods", "best")[: 1 + (spread / "sweeps" / "best").exists()]:
        rows = [json.loads(line) for line in (spread / "sweeps" / sweep / RESULTS).read_text().splitlines()]
        assert rows and all(r.get("good_findable") is not None for r in rows)  # each rank scored its own SAEs
        assert not list((spread / "sweeps" / sweep).glob("results.rank*.jsonl"))  # merged into results.jsonl
        owners = {Path(r["folder"]).parts[1].split("-")[1] for r in rows}
        assert owners == {"rank0", "rank1"}  # runs/seed{S}-rank{r}…: both ranks trained
