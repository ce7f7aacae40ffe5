"""The path of `--k` from the command line to the selection kernel: which modules handle the value.

Measured, not listed by hand: `saelab train --method topk --k K --kernel sparse` runs under a
line tracer. A module is on k's path when one of its lines that names k (`x.k`, `k=`, `"k"`, a
call of a SparsePlan method that reads it: `width`, `leading`) runs with k's value in hand (a
local equal to K, or the Params, SparsePlan, encode state or config holding it), or a function of
it with a parameter called k is called with K. Code that treats every method parameter alike
without naming k (argparse flags generated from the Params fields, typecheck by annotation,
registry.build_params) carries the value without handling it and is not counted.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import saelab
from saelab.cli import main

SRC = Path(saelab.__file__).parent

# docs/architecture.md lists the same modules with what each one does with k. The parser
# (commands/core.py), methods/mapping.py, util/typecheck.py and methods/registry.py carry it unnamed.
K_PATH = {
    "methods/resolve.py",  # the config edge: k's Params built and checked (k ≤ n_latents)
    "methods/topk.py",  # KParams.k (k ≥ 1); TopK.sparse_plan() → SparsePlan(k); the dense forward
    "kernels/plan.py",  # SparsePlan: the one plan type of methods and kernels (width: k per row)
    "kernels/topk_encode.py",  # row_topk(P, plan.width(n)): kernels/step.py hands the plan on untouched
    "kernels/select.py",  # row_topk's k (row_topk_with_bias's with the native kernels): the selection itself
    "methods/base.py",  # topk_mask_values: the dense forward of the final evaluation, into row_topk
}


def _plan_readers() -> set[str]:
    """SparsePlan's members that read its k (a call to one reads k under another name)."""
    tree = ast.parse((SRC / "kernels" / "plan.py").read_text())
    plan = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SparsePlan")
    return {f.name for f in plan.body if isinstance(f, ast.FunctionDef) and _names_k(f, set())}


def _names_k(node: ast.AST, aliases: set[str]) -> bool:
    for n in ast.walk(node):
        if isinstance(n, ast.Attribute) and n.attr == "k":
            return True
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in aliases:
            return True
        if isinstance(n, ast.keyword) and n.arg == "k":
            return True
        if isinstance(n, ast.Constant) and n.value == "k":
            return True
        if isinstance(n, ast.arg) and n.arg == "k":
            return True
    return False


def _holds(value, k: int) -> bool:
    """Whether `value` is k's value or one of the objects that hold it on the way."""
    if type(value) is int:
        return value == k
    if isinstance(value, dict):
        return value.get("k") == k
    for path in (("k",), ("plan", "k"), ("params", "k"), ("method_params",)):
        obj = value
        for name in path:
            obj = getattr(obj, name, None) if not isinstance(obj, dict) else obj.get(name)
        if (obj.get("k") if isinstance(obj, dict) else obj) == k and obj is not None:
            return True
    return False


def _k_lines() -> dict[str, tuple[set[int], set[tuple[str, int]]]]:
    """Per source file: the lines of statements that name k, and the (name, first line) of functions with a parameter k."""
    aliases, out = _plan_readers(), {}
    for path in SRC.rglob("*.py"):
        lines, functions = set(), set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if any(a.arg == "k" for a in node.args.args + node.args.kwonlyargs):
                    # A code object's first line is its first decorator's, when it has one.
                    functions |= {(node.name, line) for line in {node.lineno, *(d.lineno for d in node.decorator_list)}}
            elif isinstance(node, ast.stmt) and not isinstance(node, ast.ClassDef):
                own = [c for c in ast.iter_child_nodes(node) if not isinstance(c, ast.stmt)]
                if any(_names_k(c, aliases) for c in own):
                    lines |= set(range(node.lineno, node.end_lineno + 1))
        out[str(path)] = (lines, functions)
    return out


def _modules_handling_k(argv: list[str], k: int) -> set[str]:
    table = _k_lines()
    seen: set[str] = set()

    def local_trace(frame, event, arg):
        lines, functions = table[frame.f_code.co_filename]
        code = frame.f_code
        hit = (event == "line" and frame.f_lineno in lines) or (
            event == "call" and (code.co_name, code.co_firstlineno) in functions
        )
        if hit and any(_holds(v, k) for v in frame.f_locals.values()):
            seen.add(Path(code.co_filename).relative_to(SRC).as_posix())
        return local_trace

    def global_trace(frame, event, arg):
        if frame.f_code.co_filename not in table:
            return None
        local_trace(frame, event, arg)
        return local_trace

    sys.settrace(global_trace)
    try:
        assert main(argv) == 0
    finally:
        sys.settrace(None)
    return seen


def test_k_reaches_the_kernel_through_six_modules(toy_dir, tmp_path):
    argv = ["train", "--activations", str(toy_dir / "activations.npy"), "--n-latents", "16", "--steps", "3"]
    argv += ["--batch-size", "64", "--out", str(tmp_path / "run"), "--no-progress", "--method", "topk", "--k", "5"]
    argv += ["--kernel", "sparse"]
    seen = _modules_handling_k(argv, 5)
    assert seen == K_PATH
    assert len(seen) <= 6


def test_the_kernels_declare_no_plan_of_their_own():
    """One plan type: SparsePlan (kernels/plan.py) is the only class under kernels/ with a k field."""
    holders = []
    for path in (SRC / "kernels").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                fields = [
                    s.target.id for s in node.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
                ]
                if "k" in fields:
                    holders.append(f"{path.name}:{node.name}")
    assert holders == ["plan.py:SparsePlan"]
