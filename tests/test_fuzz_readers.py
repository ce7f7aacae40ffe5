"""Fuzzing every file saelab reads, and disks that fill up or turn read-only (issue 35, item 8).

Each input class below generates files of one kind (foreign SAELens and sparsify folders, saelab's
cfg.json / saelab.json, checkpoint indexes, sweep.json, results.jsonl, source.json) or a writer that
fails after N writes, and runs the command that reads them. The properties, for every example:
success (with correct results where the class says what they are) or exit 2 with one `saelab:
error:` line that names a file or a field; never a traceback; nothing outside the command's output
folder changes; an old run is never lost. The default run is short; `make test-slow` runs the long
profile (`--hypothesis-profile=long` or SAELAB_HYPOTHESIS_PROFILE=long for more examples).
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_harness import cli, snapshot
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

import saelab
import saelab.util.atomic
from saelab.experiments.sweep_state import PLAN, RESULTS
from saelab.training.checkpoint import load_checkpoint, save_checkpoint

FAST = settings(
    max_examples=8,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate],
)
# The loaded profile decides the long run's length (conftest's "long": 300 examples per class).
LONG = settings(
    max_examples=max(settings.default.max_examples, 100),
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)

ROWS, D_IN = 240, 6
NAMES_A_FILE_OR_FIELD = re.compile(r"(/|\w=|\.json|\.safetensors|\.npy)")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict:
    """Good inputs of every kind: data, a trained run with its checkpoint, a finished sweep, a harvest folder."""
    root = tmp_path_factory.mktemp("fuzz-readers")
    arena = root / "arena"
    arena.mkdir()
    x = np.random.default_rng(0).standard_normal((ROWS, D_IN)).astype(np.float32)
    np.save(arena / "x.npy", x)
    run = arena / "run"
    assert cli(*train(arena / "x.npy", run, "--checkpoint-every", "2"))[0] == 0
    sweep_cfg = arena / "sweep.toml"
    sweep_cfg.write_text(
        f"activations = {json.dumps(str(arena / 'x.npy'))}\nsteps = 3\nbatch_size = 16\nn_latents = 8\n"
        '[[sae]]\nmethod = "topk"\nk = [2, 3]\n'
    )
    assert cli("sweep", sweep_cfg, "--out", arena / "sweep", "--no-progress", "--no-report")[0] == 0
    harvest = arena / "harvest"
    harvest.mkdir()
    np.save(harvest / "acts.npy", x)
    (harvest / "source.json").write_text(json.dumps({"source": "user", "files": {"activations": "acts.npy"}}))
    (arena / "cases").mkdir()
    return {
        "root": root,
        "arena": arena,
        "data": arena / "x.npy",
        "run": run,
        "sweep": arena / "sweep",
        "sweep_cfg": sweep_cfg,
        "harvest": harvest,
    }


def train(data, out, *extra, steps=3):
    return [
        "train",
        "--activations",
        data,
        "--n-latents",
        "8",
        "--steps",
        str(steps),
        "--batch-size",
        "16",
        "--method",
        "topk",
        "--k",
        "2",
        "--out",
        out,
        "--no-progress",
        *extra,
    ]


def case_dir(base) -> Path:
    return Path(tempfile.mkdtemp(dir=base["arena"] / "cases"))


def check(base, result, writes: Path | None = None, before: dict | None = None) -> bool:
    """The properties every example must have; True when the command succeeded."""
    code, _, err = result
    assert not any("Traceback" in line for line in err), err
    if code != 0:
        assert code == 2, (code, err)
        errors = [line for line in err if line.startswith("saelab: error: ")]
        assert len(errors) == 1 and err[-1] == errors[0], err
        assert NAMES_A_FILE_OR_FIELD.search(errors[0]), errors[0]
    if before is not None:
        assert snapshot(base["root"], skip=writes) == before
    event("succeeded" if code == 0 else "refused in one line (exit 2)")  # --hypothesis-show-statistics counts them
    return code == 0


def guarded(base, writes: Path | None, *argv) -> bool:
    before = snapshot(base["root"], skip=writes)
    return check(base, cli(*argv), writes, before)


# ---- values -------------------------------------------------------------------------------------

WORDS = [
    "",
    "none",
    "topk",
    "standard",
    "jumprelu",
    "gated",
    "batchtopk",
    "relu",
    "blocks.0.hook_resid_post",
    "../x",
    "/etc/passwd",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 12),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.sampled_from(WORDS),
    st.text(max_size=5),
)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.dictionaries(st.sampled_from(["a", "k", "name", "hook_name"]), scalars, max_size=2),
)
shapes = st.lists(st.integers(0, 9), min_size=0, max_size=3).map(tuple)
fills = st.sampled_from(["randn", "nan", "inf", "zero", "tiny"])
dtypes = st.sampled_from([torch.float32, torch.float16, torch.int64, torch.bfloat16])


def tensor(shape: tuple, fill: str, dtype) -> torch.Tensor:
    t = {
        "randn": torch.randn(shape),
        "nan": torch.full(shape, math.nan),
        "inf": torch.full(shape, math.inf),
        "zero": torch.zeros(shape),
        "tiny": torch.full(shape, 1e-42),
    }[fill]
    return t.to(dtype) if dtype != torch.int64 else torch.zeros(shape, dtype=dtype)


tensor_edits = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "W_enc",
                "b_enc",
                "W_dec",
                "b_dec",
                "threshold",
                "r_mag",
                "b_mag",
                "b_gate",
                "topk_threshold",
                "encoder.weight",
                "encoder.bias",
            ]
        ),
        st.one_of(st.none(), st.tuples(shapes, fills, dtypes)),
    ),
    max_size=3,
)


def good_tensors(n: int = 8, d: int = D_IN) -> dict[str, torch.Tensor]:
    return {
        "W_enc": torch.randn(d, n),
        "b_enc": torch.zeros(n),
        "W_dec": torch.randn(n, d),
        "b_dec": torch.zeros(d),
        "threshold": torch.full((n,), 0.1),
        "r_mag": torch.zeros(n),
        "b_mag": torch.zeros(n),
        "b_gate": torch.zeros(n),
    }


def apply_tensor_edits(tensors: dict, edits) -> dict:
    out = dict(tensors)
    for name, how in edits:
        if how is None:
            out.pop(name, None)
        else:
            out[name] = tensor(*how)
    return out


# ---- 1, 2. foreign folders ---------------------------------------------------------------------------

SAELENS_KEYS = [
    "architecture",
    "d_in",
    "d_sae",
    "k",
    "apply_b_dec_to_input",
    "normalize_activations",
    "rescale_acts_by_decoder_norm",
    "activation_fn_str",
    "activation_fn_kwargs",
    "metadata",
]


def _saelens_case(base, arch, edits, t_edits):
    case = case_dir(base)
    folder = case / "sae"
    folder.mkdir()
    cfg = {
        "architecture": arch,
        "d_in": D_IN,
        "d_sae": 8,
        "k": 2,
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "metadata": {"hook_name": "blocks.0.hook_resid_post"},
    }
    cfg.update(dict(edits))
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file(
        {k: v.contiguous() for k, v in apply_tensor_edits(good_tensors(), t_edits).items()},
        str(folder / "sae_weights.safetensors"),
    )
    guarded(base, None, "eval", "--sae", folder, "--activations", base["data"], "--json")
    shutil.rmtree(case)


saelens_strategies = dict(
    arch=st.sampled_from(["standard", "topk", "batchtopk", "jumprelu", "gated", "bogus"]),
    edits=st.lists(st.tuples(st.sampled_from(SAELENS_KEYS), values), max_size=2),
    t_edits=tensor_edits,
)
test_fuzz_saelens_folders = FAST(given(**saelens_strategies)(_saelens_case))
test_fuzz_saelens_folders_long = pytest.mark.slow(LONG(given(**saelens_strategies)(_saelens_case)))


def _sparsify_case(base, edits, t_edits):
    case = case_dir(base)
    folder = case / "sae"
    folder.mkdir()
    (folder / "cfg.json").write_text(json.dumps({"k": 2, "activation": "topk", **dict(edits)}))
    good = {
        "encoder.weight": torch.randn(8, D_IN),
        "encoder.bias": torch.zeros(8),
        "W_dec": torch.randn(8, D_IN),
        "b_dec": torch.zeros(D_IN),
    }
    save_file(
        {k: v.contiguous() for k, v in apply_tensor_edits(good, t_edits).items()}, str(folder / "sae.safetensors")
    )
    guarded(base, None, "eval", "--sae", folder, "--activations", base["data"], "--json")
    shutil.rmtree(case)


sparsify_strategies = dict(
    edits=st.lists(
        st.tuples(st.sampled_from(["k", "activation", "transcode", "skip_connection", "multi_topk", "d_in"]), values),
        max_size=2,
    ),
    t_edits=tensor_edits,
)
test_fuzz_sparsify_folders = FAST(given(**sparsify_strategies)(_sparsify_case))
test_fuzz_sparsify_folders_long = pytest.mark.slow(LONG(given(**sparsify_strategies)(_sparsify_case)))


# ---- 3. saelab's own folder: cfg.json and saelab.json --------------------------------------------------

RECORD_PATHS = [
    ("sae",),
    ("sae", "n_latents"),
    ("sae", "method"),
    ("sae", "method_params"),
    ("sae", "d_in"),
    ("sae", "normalize"),
    ("sae", "normalization_factor"),
    ("files",),
    ("files", "sae_weights.safetensors"),
    ("source",),
    ("eval",),
    ("train",),
    ("saelab_version",),
]


def _set(record: dict, path: tuple, value) -> None:
    here = record
    for key in path[:-1]:
        if not isinstance(here.get(key), dict):
            return
        here = here[key]
    if value is _DROP:
        here.pop(path[-1], None)
    else:
        here[path[-1]] = value


_DROP = object()


def _saelab_folder_case(base, target, edits):
    case = case_dir(base)
    folder = case / "sae"
    shutil.copytree(base["run"], folder)
    path = folder / target
    record = json.loads(path.read_text())
    for where, value in edits:
        _set(record, where if target == "saelab.json" else where[-1:], value)
    path.write_text(json.dumps(record))
    ok = guarded(base, None, "eval", "--sae", folder, "--activations", base["data"], "--json")
    if ok and target == "saelab.json":
        assert saelab.load(folder).cfg.n_latents == 8  # what its weights hold, whatever else the record says
    shutil.rmtree(case)


saelab_folder_strategies = dict(
    target=st.sampled_from(["saelab.json", "cfg.json"]),
    edits=st.lists(st.tuples(st.sampled_from(RECORD_PATHS), st.one_of(values, st.just(_DROP))), min_size=1, max_size=3),
)
test_fuzz_saelab_folders = FAST(given(**saelab_folder_strategies)(_saelab_folder_case))
test_fuzz_saelab_folders_long = pytest.mark.slow(LONG(given(**saelab_folder_strategies)(_saelab_folder_case)))


# ---- 4. checkpoint indexes ------------------------------------------------------------------------------

CHECKPOINT_PATHS = [
    ("step",),
    ("run",),
    ("run", "train"),
    ("run", "train", "seed"),
    ("run", "saes"),
    ("members",),
    ("data",),
    ("data", "activations"),
    ("data", "activations", "sha256"),
    ("rng",),
    ("rng", "python"),
    ("rng", "numpy"),
]


def _checkpoint_case(base, edits, member_edits):
    case = case_dir(base)
    run = case / "run"
    shutil.copytree(base["run"], run)
    state = load_checkpoint(run / "checkpoint.safetensors")
    for where, value in edits:
        _set(state, where, value)
    members = state.get("members")
    if isinstance(members, list) and members and isinstance(members[0], dict):
        for key, value in member_edits:
            value = tensor(*value) if isinstance(value, tuple) else value
            if key in ("W_enc", "W_dec", "b_enc", "b_dec") and isinstance(members[0].get("model"), dict):
                members[0]["model"][key] = value
            else:
                members[0][key] = value
    save_checkpoint(run / "checkpoint.safetensors", state)
    before_weights = (run / "sae_weights.safetensors").read_bytes()
    ok = guarded(base, run, *train(base["data"], run, "--checkpoint-every", "2", "--resume", steps=5))
    if not ok:  # a refused resume leaves the run it found
        assert (run / "sae_weights.safetensors").read_bytes() == before_weights
    shutil.rmtree(case)


checkpoint_strategies = dict(
    edits=st.lists(st.tuples(st.sampled_from(CHECKPOINT_PATHS), st.one_of(values, st.just(_DROP))), max_size=3),
    member_edits=st.lists(
        st.tuples(
            st.sampled_from(["W_enc", "W_dec", "b_enc", "cfg", "tracker", "control"]),
            st.one_of(values, st.tuples(shapes, fills, st.just(torch.float32))),
        ),
        max_size=2,
    ),
)
test_fuzz_checkpoint_indexes = FAST(given(**checkpoint_strategies)(_checkpoint_case))
test_fuzz_checkpoint_indexes_long = pytest.mark.slow(LONG(given(**checkpoint_strategies)(_checkpoint_case)))


# ---- 5, 6. sweep.json and results.jsonl ---------------------------------------------------------------

PLAN_PATHS = [
    ("config",),
    ("saes",),
    ("inputs",),
    ("inputs", "activations"),
    ("inputs", "activations", "sha256"),
    ("inputs", "source"),
    ("config", "steps"),
    ("config", "sae"),
    ("spread_over_ranks",),
    ("spread_deal",),
]
ROW_KEYS = ["name", "folder", "nmse", "l0", "ci", "seed", "method", "params", "good_findable", "steps"]


def _truth(sweep: Path) -> dict[str, float]:
    out = {}
    for line in (sweep / RESULTS).read_text().splitlines():
        row = json.loads(line)
        out[row["name"]] = json.loads((sweep / row["folder"] / "saelab.json").read_text())["eval"]["nmse"]
    return out


def _sweep_state_case(base, target, edits, row_edits, raw):
    case = case_dir(base)
    sweep = case / "sweep"
    shutil.copytree(base["sweep"], sweep)
    if target == PLAN:
        plan = json.loads((sweep / PLAN).read_text())
        for where, value in edits:
            _set(plan, where, value)
        (sweep / PLAN).write_text(json.dumps(plan) if raw is None else raw)
    else:
        rows = [json.loads(line) for line in (sweep / RESULTS).read_text().splitlines()]
        for index, key, value in row_edits:
            rows[index % len(rows)][key] = value
        (sweep / RESULTS).write_text("".join(json.dumps(r) + "\n" for r in rows) + ("" if raw is None else raw + "\n"))
    ok = guarded(base, sweep, "sweep", base["sweep_cfg"], "--out", sweep, "--resume", "--no-progress", "--no-report")
    if ok:  # a resumed sweep's table says what its folders say, forged rows or not
        truth = _truth(sweep)
        assert {
            json.loads(line)["name"]: json.loads(line)["nmse"] for line in (sweep / RESULTS).read_text().splitlines()
        } == truth
    shutil.rmtree(case)


sweep_state_strategies = dict(
    target=st.sampled_from([PLAN, RESULTS]),
    edits=st.lists(st.tuples(st.sampled_from(PLAN_PATHS), st.one_of(values, st.just(_DROP))), max_size=2),
    row_edits=st.lists(st.tuples(st.integers(0, 3), st.sampled_from(ROW_KEYS), values), max_size=3),
    raw=st.one_of(
        st.none(),
        st.sampled_from(
            ["{", "[]", "[1, 2]", "null", '{"name": "x"}', "\x00", '{"name": "topk-k2-s0", "folder": "../x"}']
        ),
    ),
)
test_fuzz_sweep_state = FAST(given(**sweep_state_strategies)(_sweep_state_case))
test_fuzz_sweep_state_long = pytest.mark.slow(LONG(given(**sweep_state_strategies)(_sweep_state_case)))


# ---- 7. source.json ------------------------------------------------------------------------------------


def _source_case(base, files, extra, link):
    case = case_dir(base)
    harvest = case / "harvest"
    shutil.copytree(base["harvest"], harvest)
    if link:
        (harvest / "acts.npy").unlink()
        (harvest / "acts.npy").symlink_to(base["data"])
    record = {"source": "user", "files": files, **dict(extra)}
    (harvest / "source.json").write_text(json.dumps(record))
    run = case / "run"
    ok = guarded(base, run, *train(harvest, run))
    assert not (ok and link)  # a shard that links outside the folder is never read
    shutil.rmtree(case)


source_strategies = dict(
    files=st.one_of(
        values,
        st.fixed_dictionaries(
            {
                "activations": st.one_of(
                    values, st.sampled_from(["acts.npy", "../x.npy", "/etc/passwd", "sub/../acts.npy", "acts.npy\x00"])
                )
            }
        ),
    ),
    extra=st.lists(st.tuples(st.sampled_from(["layer", "site", "model", "seed", "shards"]), values), max_size=2),
    link=st.booleans(),
)
test_fuzz_source_json = FAST(given(**source_strategies)(_source_case))
test_fuzz_source_json_long = pytest.mark.slow(LONG(given(**source_strategies)(_source_case)))


# ---- 8, 9. full and read-only disks ---------------------------------------------------------------------


@contextlib.contextmanager
def failing_disk(after: int, code: int):
    """Every atomic write from the (after+1)-th on fails as a full (ENOSPC) or read-only (EROFS) disk answers."""
    real = saelab.util.atomic._replacing
    calls = {"n": 0}

    @contextlib.contextmanager
    def replacing(path):
        calls["n"] += 1
        if calls["n"] > after:
            raise OSError(code, os.strerror(code), str(path))
        with real(path) as tmp:
            yield tmp

    saelab.util.atomic._replacing = replacing
    try:
        yield
    finally:
        saelab.util.atomic._replacing = real


def _disk_case(base, command, after, code):
    case = case_dir(base)
    out = case / "out"
    if command == "overwrite":
        shutil.copytree(base["run"], out)
        argv = train(base["data"], out, "--overwrite", "--n-latents", "12")
    elif command == "resume":
        shutil.copytree(base["run"], out)
        argv = train(base["data"], out, "--checkpoint-every", "2", "--resume", steps=6)
    elif command == "sweep":
        argv = ["sweep", base["sweep_cfg"], "--out", out, "--no-progress", "--no-report"]
    elif command == "report":
        shutil.copytree(base["sweep"], case / "sweep")
        argv = ["report", case / "sweep", "--out", out]
    else:
        argv = train(base["data"], out)
    old = snapshot(out) if out.exists() else None
    before = snapshot(base["root"], skip=out)
    with failing_disk(after, code):
        result = cli(*argv)
    ok = check(base, result, out, before)
    if command == "overwrite":  # the old run, whole, unless the new one replaced it completely
        if ok:
            assert saelab.load(out).cfg.n_latents == 12
        else:
            assert snapshot(out) == old and saelab.load(out).cfg.n_latents == 8
    if command == "resume" and not ok:  # the last checkpoint survives: the same command resumes once the disk has room
        assert cli(*argv)[0] == 0
    shutil.rmtree(case)


disk_strategies = dict(
    command=st.sampled_from(["new", "overwrite", "resume", "sweep", "report"]),
    after=st.integers(0, 25),
    code=st.sampled_from([errno.ENOSPC, errno.EROFS]),
)
test_fuzz_full_and_read_only_disks = FAST(given(**disk_strategies)(_disk_case))
test_fuzz_full_and_read_only_disks_long = pytest.mark.slow(LONG(given(**disk_strategies)(_disk_case)))

# The input classes above, counted in the closing note of issue 35.
INPUT_CLASSES = (
    "saelens_folders",
    "sparsify_folders",
    "saelab_folders",
    "checkpoint_indexes",
    "sweep_state",
    "source_json",
    "full_and_read_only_disks",
)
