"""The shape of the house: no import circles, commands only in commands/, methods own their sparse plans."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "saelab"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every saelab module `path` imports, anywhere in the file: TYPE_CHECKING blocks and function bodies
    count, and so does each parent package an import runs (`import saelab.a.b` runs saelab/a/__init__.py)."""
    tree = ast.parse(path.read_text())
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    named = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            named |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            for alias in node.names:
                full = f"{base}.{alias.name}"
                named.add(full if full in modules else base)
    found = set()
    for name in named:
        parts = name.split(".")
        for i in range(2, len(parts) + 1):
            parent = ".".join(parts[:i])
            if parent in modules and parent != me and not me.startswith(parent + "."):
                found.add(parent)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, on_stack, stack, out, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_has_no_circles():
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_planted_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_loads_another_by_string():
    for path in PACKAGE.rglob("*.py"):
        assert "importlib" not in path.read_text(), f"{path} imports by string"


def test_sources_hold_no_command_code_and_othello_is_a_source():
    for path in (PACKAGE / "sources").rglob("*.py"):
        text = path.read_text()
        assert "argparse" not in text and "def register(" not in text, f"{path} holds command-line code"
    assert (PACKAGE / "sources" / "othello" / "score.py").exists() and not (PACKAGE / "othello").exists()


def _source_name_tests(path: Path, names) -> list[tuple[int, str]]:
    """(line, name) of every comparison of a string constant in `names` (==, !=, in, not in, is, match/case)."""

    def strings(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.value
        elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            for e in node.elts:
                yield from strings(e)

    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        sides = [node.left, *node.comparators] if isinstance(node, ast.Compare) else []
        sides += [node.value] if isinstance(node, ast.MatchValue) else []
        found += [(node.lineno, s) for side in sides for s in strings(side) if s in names]
    return found


def test_a_source_name_is_tested_only_in_its_own_package_and_the_commands():
    """No `source == "othello"` outside sources/othello (and commands/, which name the command groups): the
    layers above ask the registry (saelab.sources.registry) which source owns a record. experiments/reproduce
    needs no exemption: it imports sources.othello by name, it does not test a record's source string."""
    from saelab.sources.registry import SOURCES

    bad = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith("commands/"):
            continue
        for line, name in _source_name_tests(path, set(SOURCES)):
            if not rel.startswith((f"sources/{name}/", f"sources/{name}.py")):
                bad.append(f"{rel}:{line} tests {name!r}")
    assert bad == []


def test_the_source_name_check_finds_planted_tests(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text(
        "def f(s, k):\n"
        '    a = s.get("source") == "othello"\n'
        '    b = k in ("lm", "x")\n'
        "    match k:\n"
        '        case "toy":\n'
        "            return a, b\n"
        '    return {"othello": 1}, "othello".upper()\n'
    )
    assert _source_name_tests(planted, {"othello", "lm", "toy"}) == [(2, "othello"), (3, "lm"), (5, "toy")]


# The floors of the house, top to bottom. A module imports only from its own group or from a floor
# below; commands and the face may import anything.
FLOORS = [
    ("saelab", "saelab.__main__", "saelab.api", "saelab.cli", "saelab.demo", "saelab.commands"),
    ("saelab.experiments", "saelab.features"),
    ("saelab.sources",),
    ("saelab.report",),
    ("saelab.training",),
    ("saelab.evals",),
    ("saelab.data", "saelab.formats"),
    ("saelab.model",),
    ("saelab.methods",),
    ("saelab.kernels",),
    ("saelab.config",),
    ("saelab.losses", "saelab.step_output", "saelab.devices", "saelab.version"),
    ("saelab.util",),
    ("saelab.errors",),
]


def _place(module: str) -> tuple[int, str]:
    """(floor, group) of a module: the longest group prefix that names it."""
    best = None
    for floor, groups in enumerate(FLOORS):
        for group in groups:
            if (module == group or module.startswith(group + ".")) and (best is None or len(group) > len(best[1])):
                best = (floor, group)
    assert best is not None, f"{module} is on no floor: add it to FLOORS"
    return best


def _upward_arrows(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for a, deps in graph.items():
        fa, ga = _place(a)
        for b in deps:
            fb, gb = _place(b)
            if fa == 0:
                continue
            if fb < fa or (fb == fa and ga != gb):
                bad.append(f"{a} -> {b}")
    return sorted(bad)


def test_imports_point_down_the_floors():
    assert _upward_arrows(_graph()) == []


def test_the_floor_check_finds_a_planted_upward_arrow():
    graph = {
        "saelab.kernels.step": {"saelab.methods.base"},
        "saelab.methods.base": {"saelab.kernels.plan"},
        "saelab.kernels.plan": set(),
        "saelab.evals.x": {"saelab.training.y"},
        "saelab.training.y": set(),
    }
    assert _upward_arrows(graph) == [
        "saelab.evals.x -> saelab.training.y",
        "saelab.kernels.step -> saelab.methods.base",
    ]


def test_no_source_file_is_longer_than_450_lines():
    long = {
        p.relative_to(PACKAGE).as_posix(): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 450
    }
    assert long == {}


def test_the_top_of_the_package_is_small():
    top = [p.name for p in PACKAGE.glob("*.py")]
    assert len(top) <= 12, sorted(top)


def test_evals_import_no_source_and_nothing_imports_commands():
    for name, deps in _graph().items():
        if name.startswith("saelab.evals"):
            assert not any(d.startswith("saelab.sources") for d in deps), f"{name} imports a source"
        if not name.startswith(("saelab.commands", "saelab.cli")):
            assert not any(d.startswith("saelab.commands") for d in deps), f"{name} imports command code"


def test_atomic_writes_are_a_leaf():
    assert _graph()["saelab.util.atomic"] == set()


def test_python_dash_m_saelab_works_like_the_script():
    out = subprocess.run(
        [sys.executable, "-m", "saelab", "methods", "--json"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert any(m["name"] == "topk" for m in __import__("json").loads(out.stdout))


# ---- method names live in methods/ ---------------------------------------------------------------

# Where a registered method or penalty name may stand as a string outside methods/: path (a file, or a folder
# ending in "/") → (the names allowed there, None for any; why).
METHOD_NAME_EXEMPT = {
    "experiments/reproduce/": (None, "experiment definitions: which methods each paper compares"),
    "demo.py": (None, "the demo's definition: which methods it trains"),
    "evals/k_sweep.py": ({"topk"}, "the per-token mode's label in the k-sweep JSON (an interface), not a method"),
    "config/values.py": ({"relu"}, "SAEConfig's default method: plain schema data, below methods/ in the floors"),
}


def _method_name_strings(path: Path, names) -> list[tuple[int, str]]:
    """(line, name) of every string constant in `path` that is exactly one of `names`."""
    return [
        (node.lineno, node.value)
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names
    ]


def _method_names_outside_methods(package: Path, names, exempt) -> list[str]:
    bad = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package).as_posix()
        if rel.startswith("methods/"):
            continue
        keys = [key for key in exempt if rel == key or (key.endswith("/") and rel.startswith(key))]
        allowed = exempt[keys[0]][0] if keys else set()
        bad += [
            f"{rel}:{line} {name!r}"
            for line, name in _method_name_strings(path, names)
            if allowed is not None and name not in allowed
        ]
    return bad


def test_no_method_name_outside_methods():
    """Which method a folder holds, which has a global threshold, the API's default: methods/ says (issue 33).
    An exemption whose files exist but hold none of its names fails too, so the list stays what it claims."""
    from saelab.methods.registry import ACTIVATIONS, PENALTIES

    names = set(ACTIVATIONS) | set(PENALTIES)
    assert _method_names_outside_methods(PACKAGE, names, METHOD_NAME_EXEMPT) == []
    for key, (allowed, _) in METHOD_NAME_EXEMPT.items():
        files = sorted(PACKAGE.glob(key + "**/*.py")) if key.endswith("/") else [PACKAGE / key]
        held = {n for f in files if f.exists() for _, n in _method_name_strings(f, names)}
        assert not any(f.exists() for f in files) or held & (allowed or names), f"exemption {key} is no longer needed"


def test_the_method_name_scan_finds_a_planted_name(tmp_path):
    (tmp_path / "methods").mkdir()
    (tmp_path / "methods" / "topk.py").write_text('NAME = "topk"\n')
    (tmp_path / "evals").mkdir()
    (tmp_path / "evals" / "x.py").write_text('"""topk docs."""\n\ndef f(m):\n    return m == "topk" or {"l1": 1}\n')
    (tmp_path / "demo.py").write_text('METHODS = ("topk", "l1")\n')
    exempt = {"demo.py": ({"topk"}, "planted")}
    assert _method_names_outside_methods(tmp_path, {"topk", "l1"}, exempt) == [
        "demo.py:1 'l1'",
        "evals/x.py:4 'topk'",
        "evals/x.py:4 'l1'",
    ]


# ---- a new TopK-family method is one file plus one registration ---------------------------------


def test_a_new_topk_family_method_needs_one_class_and_one_registration(tmp_path):
    """Register a throwaway method (TopK at k, scaled by 1 — a stand-in for a new member) and train it on the sparse path."""
    from saelab import kernels, methods
    from saelab.config import RunConfig, SAEConfig, TrainConfig
    from saelab.methods import ACTIVATIONS, Activation, SparsePlan, register_activation
    from saelab.methods.base import Params, param, scatter_rows, topk_mask_values
    from saelab.model.sae import SparseAutoencoder
    from saelab.training.objective import dense_step
    from saelab.training.trainer import Trainer

    @dataclasses.dataclass
    class ThrowawayParams(Params):
        k: int = param(4, "active latents")

    @register_activation("throwaway_topk")
    class ThrowawayTopK(Activation):
        description = "test-only TopK"
        Params = ThrowawayParams

        def forward(self, pre):
            values, idx = topk_mask_values(pre, self.params.k)
            return scatter_rows(torch.relu(values), idx, pre.shape[-1])

        def sparse_plan(self):
            return SparsePlan(k=self.params.k)

    try:
        cfg = SAEConfig(n_latents=64, method="throwaway_topk", method_params={"k": 4}, d_in=16, kernel="sparse")
        sae = SparseAutoencoder(cfg)
        assert methods.supports(sae)
        x = torch.randn(128, 16, generator=torch.Generator().manual_seed(0))
        # Same loss and gradients as the dense reference.
        sparse = kernels.sparse_step(sae, x, 0.0, None)
        sparse.total.backward()
        g_sparse = [p.grad.clone() for p in sae.parameters()]
        sae.zero_grad()
        dense = dense_step(sae, x, 0.0, None)
        dense.total.backward()
        assert sparse.total.item() == pytest.approx(dense.total.item(), rel=1e-5)
        for a, p in zip(g_sparse, sae.parameters()):
            torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-5)

        # And it trains through the ordinary trainer on the sparse kernel, learning something.
        data = torch.randn(4096, 16, generator=torch.Generator().manual_seed(1)).numpy().astype(np.float32)
        np.save(tmp_path / "x.npy", data)
        run = RunConfig(
            TrainConfig(
                activations=str(tmp_path / "x.npy"), out=str(tmp_path / "run"), batch_size=256, steps=60, log_every=20
            ),
            [SAEConfig(n_latents=64, method="throwaway_topk", method_params={"k": 4}, kernel="sparse", lr=3e-3)],
        )
        (member,) = Trainer(run, progress=False).fit()
        log = [__import__("json").loads(line) for line in (member.out / "metrics.jsonl").read_text().splitlines()]
        assert log[-1]["nmse"] < log[0]["nmse"] and log[-1]["l0"] == pytest.approx(4.0)
    finally:
        ACTIVATIONS.pop("throwaway_topk", None)


def test_a_subclass_that_redefines_forward_does_not_inherit_the_sparse_plan():
    from saelab import methods
    from saelab.config import SAEConfig
    from saelab.methods.topk import TopK
    from saelab.model.sae import SparseAutoencoder

    sae = SparseAutoencoder(SAEConfig(n_latents=32, method="topk", method_params={"k": 2}, d_in=8))
    assert methods.supports(sae)

    class Doubled(TopK):
        def forward(self, pre):
            return 2 * super().forward(pre)

    sae.activation = Doubled(sae.activation.params, 32)
    assert not methods.supports(sae)


def test_method_params_are_built_once_per_setting():
    from saelab.config import SAEConfig
    from saelab.methods.resolve import resolve, resolve_sae
    from saelab.model.sae import SparseAutoencoder

    cfg = resolve_sae(SAEConfig(n_latents=32, method="topk", method_params={"k": 3}, d_in=8))
    cls, params = resolve(cfg).activation
    assert resolve(cfg).activation[1] is params  # cached, not rebuilt
    assert SparseAutoencoder(cfg).activation.params is params
    cfg.method_params = {"k": 5}
    assert resolve(cfg).activation[1].k == 5  # a changed setting is rebuilt (and validated)


# ---- one evaluation path -----------------------------------------------------------------------


def test_evaluate_on_a_tensor_equals_the_eval_command_on_the_same_rows(tmp_path, capsys):
    import json

    import saelab
    from saelab.cli import main

    data = np.random.default_rng(0).standard_normal((3000, 12)).astype(np.float32)
    np.save(tmp_path / "x.npy", data)
    out = tmp_path / "s"
    assert (
        main(
            [
                "train",
                "--activations",
                str(tmp_path / "x.npy"),
                "--method",
                "topk",
                "--k",
                "3",
                "--n-latents",
                "32",
                "--steps",
                "20",
                "--batch-size",
                "128",
                "--normalize",
                "scalar",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["eval", "--sae", str(out), "--activations", str(tmp_path / "x.npy"), "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert cli["rows"] == "held-out"
    record = json.loads((out / "saelab.json").read_text())
    lo, hi = record["split"]["eval_rows"]
    sae = saelab.load(out)
    py = saelab.evaluate(sae, torch.from_numpy(data[lo:hi])).to_dict()
    py_np = saelab.evaluate(sae, data[lo:hi]).to_dict()
    py_path = saelab.evaluate(out, tmp_path / "x.npy").to_dict()  # the folder form picks the held-out rows itself
    assert py["tokens"] == cli["tokens"] == hi - lo
    for key in (
        "l0",
        "nmse",
        "explained_variance",
        "cos_sim",
        "l2_ratio",
        "relative_reconstruction_bias",
        "dead_fraction",
        "dense_fraction",
    ):
        assert py[key] == pytest.approx(cli[key], rel=1e-9, abs=1e-12)
        assert py_np[key] == pytest.approx(cli[key], rel=1e-9, abs=1e-12)
        assert py_path[key] == pytest.approx(cli[key], rel=1e-9, abs=1e-12)


def test_evaluate_rejects_bad_data_with_one_line_errors():
    import saelab
    from saelab.config import SAEConfig
    from saelab.errors import SaelabError
    from saelab.model.sae import SparseAutoencoder

    sae = SparseAutoencoder(SAEConfig(n_latents=8, d_in=4))
    with pytest.raises(SaelabError, match="d_in is 3"):
        saelab.evaluate(sae, np.zeros((5, 3), np.float32))
    with pytest.raises(SaelabError, match="non-finite"):
        saelab.evaluate(sae, np.full((5, 4), np.nan, np.float32))
    with pytest.raises(SaelabError, match="expected \\[N, d_in\\]"):
        saelab.evaluate(sae, np.zeros(4, np.float32))
    with pytest.raises(SaelabError, match="no held-out rows"):
        saelab.evaluate(sae, np.zeros((5, 4), np.float32), rows="held-out")


def test_tests_mirror_the_package():
    tests = Path(__file__).resolve().parent
    folders = {p.parent.relative_to(tests).as_posix() for p in tests.rglob("test_*.py")} - {"."}
    # compat/: checks against other libraries (SAELens, SAEBench, sparsify), not a part of saelab
    assert {f for f in folders if f != "compat" and not (PACKAGE / f).is_dir()} == set()
