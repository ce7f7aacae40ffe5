"""Fuzzing the CLI: malformed configs, flags, files, manifests and names.

Every entry point must either succeed or exit 2 with one `saelab: error:` line (never a traceback),
and nothing outside the run's own folder may change. The default run is short (a fixed set of
examples); `make test-slow` runs the long profile of the same properties.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from cli_harness import cli, ok_or_one_line_error, snapshot
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

from saelab.config import SAEConfig, TrainConfig
from saelab.data.cache import CacheMeta, CacheWriter
from saelab.methods import ACTIVATIONS, PENALTIES, param_names

# No shrinking in the default run: a failure is reported at once, with the example that found it.
FAST = settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate],
)
LONG = settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))

ROWS, D_IN = 240, 6
BUDGETS = ("steps", "tokens", "epochs", "warmup_steps")
CONFIG_KEYS = sorted(
    (
        {f.name for f in dataclasses.fields(TrainConfig)}
        | {f.name for f in dataclasses.fields(SAEConfig)}
        | set(param_names())
        | {"sae", "unknown_key"}
    )
    - {"activations"}
)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict:
    """An arena holding good inputs of every kind: data files, a trained SAE with its checkpoint, a cache."""
    root = tmp_path_factory.mktemp("fuzz")
    arena = root / "arena"
    arena.mkdir()
    x = np.random.default_rng(0).standard_normal((ROWS, D_IN)).astype(np.float32)
    np.save(arena / "x.npy", x)
    save_file({"activations": x}, str(arena / "x.safetensors"))
    np.save(arena / "dictionary.npy", np.random.default_rng(1).standard_normal((10, D_IN)).astype(np.float32))
    meta = CacheMeta(
        model="m", site="resid_post", layer=0, dtype="float32", d_in=D_IN, context=8, tokenizer="t", text_source="s"
    )
    writer = CacheWriter(str(arena / "cache"), meta, shard_rows=100)
    for lo in range(0, ROWS, 100):
        writer.append(x[lo : lo + 100])
    writer.close()
    run = arena / "sae"
    assert (
        cli(
            "train",
            "--activations",
            arena / "x.npy",
            "--n-latents",
            "8",
            "--steps",
            "3",
            "--batch-size",
            "16",
            "--method",
            "topk",
            "--k",
            "2",
            "--checkpoint-every",
            "2",
            "--out",
            run,
            "--no-progress",
        )[0]
        == 0
    )
    (arena / "cases").mkdir()
    return {"root": root, "arena": arena, "data": arena / "x.npy", "sae": run}


def _guarded(base: dict, run_folder: Path, *argv) -> None:
    """Run `saelab ARGV`; it succeeds or says one line, and touches nothing outside `run_folder`."""
    before = snapshot(base["root"], skip=run_folder)
    ok_or_one_line_error(cli(*argv))
    assert snapshot(base["root"], skip=run_folder) == before


def _case(base: dict) -> Path:
    return Path(tempfile.mkdtemp(dir=base["arena"] / "cases"))


# ---- strategies ---------------------------------------------------------------------------------

WORDS = [
    "none",
    "null",
    "true",
    "0.1",
    "../x",
    "/etc/passwd",
    "relu",
    "topk",
    "l1",
    "scalar",
    "cosine",
    "",
    "k=4",
    "a/b",
    "..",
    *ACTIVATIONS,
    *PENALTIES,
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 40),
    st.floats(-2.0, 4.0),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e300, -0.0, 2**63]),
    st.sampled_from(WORDS),
    st.text(max_size=6),
)
values = st.one_of(
    scalars,
    st.lists(st.one_of(st.integers(-2, 5), st.floats(0, 1), st.sampled_from(WORDS)), max_size=3),
    st.dictionaries(st.sampled_from(["k", "p", "eps", "n_latents", "method", "x"]), scalars, max_size=2),
    st.lists(
        st.dictionaries(st.sampled_from(["n_latents", "method", "k", "name", "penalty", "alpha"]), scalars, max_size=3),
        max_size=2,
    ),
)


def _bounded(mapping: dict) -> bool:
    # Budgets above a few dozen steps are valid requests that only cost time; keep examples quick.
    for key in BUDGETS:
        v = mapping.get(key)
        if (
            isinstance(v, (int, float))
            and not isinstance(v, bool)
            and math.isfinite(v)
            and v > (1 if key == "epochs" else 40)
        ):
            return False
    return True


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v == math.inf else "-inf" if v == -math.inf else repr(v))
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v if x is not None) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items() if x is not None) + "}"
    raise TypeError(v)


def _write_config(path: Path, mapping: dict, fmt: str) -> Path:
    if fmt == "json":
        path = path.with_suffix(".json")
        path.write_text(json.dumps(mapping))
    else:
        path = path.with_suffix(".toml")
        path.write_text("".join(f"{json.dumps(k)} = {_toml_value(v)}\n" for k, v in mapping.items() if v is not None))
    return path


# ---- configs ------------------------------------------------------------------------------------


def _config_case(base, changes, fmt):
    mapping = {
        "activations": str(base["data"]),
        "steps": 3,
        "batch_size": 16,
        "n_latents": 8,
        "log_every": 1,
        **changes,
    }
    assume(_bounded(mapping))
    case = _case(base)
    cfg = _write_config(case / "run", mapping, fmt)
    _guarded(base, case / "out", "train", "--config", cfg, "--out", case / "out", "--no-progress")
    shutil.rmtree(case)


config_changes = st.dictionaries(st.sampled_from(CONFIG_KEYS), values, max_size=3)
formats = st.sampled_from(["json", "toml"])
test_fuzz_config_files = FAST(given(changes=config_changes, fmt=formats)(_config_case))
test_fuzz_config_files_long = pytest.mark.slow(LONG(given(changes=config_changes, fmt=formats)(_config_case)))


# ---- flags --------------------------------------------------------------------------------------

FLAG_VALUES = ["0", "-1", "2", "0.5", "nan", "inf", "-inf", "none", "1e308", "abc", "", "../x", "topk", "l1", "scalar"]
TRAIN_FLAGS = [
    "--n-latents",
    "--method",
    "--penalty",
    "--alpha",
    "--k",
    "--p",
    "--eps",
    "--p-threshold",
    "--lr",
    "--seed",
    "--batch-size",
    "--steps",
    "--epochs",
    "--normalize",
    "--decay",
    "--decay-fraction",
    "--grad-clip",
    "--log-every",
    "--checkpoint-every",
    "--shuffle-buffer-mb",
    "--eval-fraction",
    "--betas",
    "--auxk",
    "--k-aux",
    "--dead-tokens",
    "--name",
    "--threads",
    "--resume",
    "--overwrite",
    "--bogus",
]
EVAL_FLAGS = [
    "--batch-size",
    "--k",
    "--eps-l0",
    "--true-dictionary",
    "--activations",
    "--all-rows",
    "--json",
    "--threads",
]
TOY_FLAGS = ["--n-features", "--d", "--n-samples", "--mean-active", "--noise", "--decay", "--seed"]


def _flags(pairs) -> list[str]:
    return [x for flag, value in pairs for x in (flag, value)]


def _train_flags_case(base, pairs):
    args = _flags(pairs)
    assume(
        "--epochs" not in args
        or args[args.index("--epochs") + 1] in ("0", "-1", "0.5", "nan", "inf", "-inf", "1e308", "abc", "")
    )
    case = _case(base)
    _guarded(
        base,
        case / "out",
        "train",
        "--activations",
        base["data"],
        "--n-latents",
        "8",
        "--steps",
        "3",
        "--batch-size",
        "16",
        "--out",
        case / "out",
        "--no-progress",
        *args,
    )
    shutil.rmtree(case)


def _eval_flags_case(base, pairs):
    _guarded(base, None, "eval", "--sae", base["sae"], "--activations", base["data"], *_flags(pairs))


def _toy_flags_case(base, pairs):
    case = _case(base)
    _guarded(
        base,
        case / "toy",
        "toy",
        "--out",
        case / "toy",
        "--n-samples",
        "50",
        "--n-features",
        "16",
        "--d",
        "8",
        *_flags(pairs),
    )
    shutil.rmtree(case)


def _pairs(flags):
    return st.lists(st.tuples(st.sampled_from(flags), st.sampled_from(FLAG_VALUES)), max_size=3)


test_fuzz_train_flags = FAST(given(pairs=_pairs(TRAIN_FLAGS))(_train_flags_case))
test_fuzz_train_flags_long = pytest.mark.slow(LONG(given(pairs=_pairs(TRAIN_FLAGS))(_train_flags_case)))
test_fuzz_eval_flags = FAST(given(pairs=_pairs(EVAL_FLAGS))(_eval_flags_case))
test_fuzz_eval_flags_long = pytest.mark.slow(LONG(given(pairs=_pairs(EVAL_FLAGS))(_eval_flags_case)))
test_fuzz_toy_flags = FAST(given(pairs=_pairs(TOY_FLAGS))(_toy_flags_case))
test_fuzz_toy_flags_long = pytest.mark.slow(LONG(given(pairs=_pairs(TOY_FLAGS))(_toy_flags_case)))


# ---- files: truncated, bit-flipped, oversized ---------------------------------------------------


def _corrupt(raw: bytes, how: str, where: float, bits: list[int], junk: bytes) -> bytes:
    at = int(where * len(raw))
    if how == "truncate":
        return raw[:at]
    if how == "flip":
        out = bytearray(raw)
        for b in bits:
            i = (at + b // 8) % len(out)
            out[i] ^= 1 << (b % 8)
        return bytes(out)
    if how == "oversize":
        return raw + junk * 4096
    if how == "length":  # a safetensors-style length prefix that claims a huge header
        return (2**62 + len(junk)).to_bytes(8, "little") + raw[8:]
    return b""


TARGETS = ["npy", "safetensors", "weights", "cfg", "record", "checkpoint", "manifest", "shard", "dictionary"]


def _file_case(base, target, how, where, bits, junk):
    case = _case(base)
    arena = base["arena"]
    run = case / "run"
    if target in ("npy", "safetensors"):
        path = case / f"x.{target}"
        shutil.copy(arena / path.name, path)
        argv = [
            "train",
            "--activations",
            path,
            "--n-latents",
            "8",
            "--steps",
            "3",
            "--batch-size",
            "16",
            "--out",
            run,
            "--no-progress",
        ]
    elif target in ("manifest", "shard"):
        shutil.copytree(arena / "cache", case / "cache")
        path = case / "cache" / ("manifest.json" if target == "manifest" else "shard-00001.npy")
        argv = [
            "train",
            "--activations",
            case / "cache",
            "--n-latents",
            "8",
            "--steps",
            "3",
            "--batch-size",
            "16",
            "--out",
            run,
            "--no-progress",
        ]
    elif target == "dictionary":
        path = case / "dictionary.npy"
        shutil.copy(arena / path.name, path)
        argv = ["eval", "--sae", base["sae"], "--activations", base["data"], "--true-dictionary", path, "--json"]
    elif target == "checkpoint":
        shutil.copytree(base["sae"], run)
        path = run / "checkpoint.safetensors"
        argv = [
            "train",
            "--activations",
            base["data"],
            "--n-latents",
            "8",
            "--steps",
            "5",
            "--batch-size",
            "16",
            "--method",
            "topk",
            "--k",
            "2",
            "--checkpoint-every",
            "2",
            "--out",
            run,
            "--no-progress",
            "--resume",
        ]
    else:
        shutil.copytree(base["sae"], run)
        path = run / {"weights": "sae_weights.safetensors", "cfg": "cfg.json", "record": "saelab.json"}[target]
        argv = ["eval", "--sae", run, "--activations", base["data"], "--json"]
    path.write_bytes(_corrupt(path.read_bytes(), how, where, bits, junk))
    # Only the run folder may change; the corrupted inputs themselves must stay as they are.
    _guarded(base, run, *argv)
    shutil.rmtree(case)


file_strategies = dict(
    target=st.sampled_from(TARGETS),
    how=st.sampled_from(["truncate", "flip", "oversize", "length", "empty"]),
    where=st.floats(0, 1),
    bits=st.lists(st.integers(0, 4095), min_size=1, max_size=4),
    junk=st.binary(min_size=1, max_size=8),
)
test_fuzz_corrupted_files = FAST(given(**file_strategies)(_file_case))
test_fuzz_corrupted_files_long = pytest.mark.slow(LONG(given(**file_strategies)(_file_case)))


# ---- hostile manifests --------------------------------------------------------------------------

HOSTILE_PATHS = [
    "../x.npy",
    "/etc/passwd",
    "shard-00000.npy/../../x.npy",
    "..",
    "",
    ".",
    "sub/../../../x.npy",
    "\\..\\x.npy",
    "shard-00000.npy",
    "shard-00001.npy",
    "nul\x00.npy",
    "~/x.npy",
]
MANIFEST_KEYS = [
    "format",
    "model",
    "site",
    "layer",
    "dtype",
    "d_in",
    "context",
    "tokenizer",
    "text_source",
    "options",
    "n_rows",
    "shards",
    "complete",
    "cursor",
]


def _manifest_case(base, edits, shard_edits, drop):
    case = _case(base)
    shutil.copytree(base["arena"] / "cache", case / "cache")
    path = case / "cache" / "manifest.json"
    manifest = json.loads(path.read_text())
    for key, value in edits:
        manifest[key] = value
    for index, key, value in shard_edits:
        shards = manifest.get("shards")
        if isinstance(shards, list) and shards and isinstance(shards[index % len(shards)], dict):
            shards[index % len(shards)][key] = value
    for key in drop:
        manifest.pop(key, None)
    path.write_text(json.dumps(manifest))
    run = case / "run"
    _guarded(
        base,
        run,
        "train",
        "--activations",
        case / "cache",
        "--n-latents",
        "8",
        "--steps",
        "3",
        "--batch-size",
        "16",
        "--out",
        run,
        "--no-progress",
    )
    shutil.rmtree(case)


manifest_values = st.one_of(values, st.sampled_from(HOSTILE_PATHS))
manifest_strategies = dict(
    edits=st.lists(st.tuples(st.sampled_from(MANIFEST_KEYS), manifest_values), max_size=2),
    shard_edits=st.lists(
        st.tuples(
            st.integers(0, 5),
            st.sampled_from(["file", "rows", "sha256", "index_file", "extra"]),
            st.one_of(st.sampled_from(HOSTILE_PATHS), values),
        ),
        max_size=3,
    ),
    drop=st.lists(st.sampled_from(MANIFEST_KEYS), max_size=2),
)
test_fuzz_hostile_manifests = FAST(given(**manifest_strategies)(_manifest_case))
test_fuzz_hostile_manifests_long = pytest.mark.slow(LONG(given(**manifest_strategies)(_manifest_case)))


# ---- hostile SAE names --------------------------------------------------------------------------

names = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        [
            "..",
            "../up",
            "/abs",
            "a/b",
            "a\\b",
            ".hidden",
            "TopK",
            "topk",
            "x" * 300,
            "café",
            "cafe\u0301",
            " ",
            "name\x00",
            "con",
        ]
    ),
)


def _names_case(base, first, second):
    case = _case(base)
    cfg = case / "run.json"
    cfg.write_text(
        json.dumps(
            {
                "activations": str(base["data"]),
                "steps": 2,
                "batch_size": 16,
                "n_latents": 8,
                "sae": [{"name": first, "method": "topk", "k": 2}, {"name": second, "method": "topk", "k": 3}],
            }
        )
    )
    run = case / "out"
    _guarded(base, run, "train", "--config", cfg, "--out", run, "--no-progress")
    shutil.rmtree(case)


test_fuzz_sae_names = FAST(given(first=names, second=names)(_names_case))
test_fuzz_sae_names_long = pytest.mark.slow(LONG(given(first=names, second=names)(_names_case)))
