"""Sweeps: grid expansion rules, a toy sweep end to end, and a killed sweep that resumes."""

import json

import pytest

from saelab.errors import ConfigError
from saelab.experiments.grid import memory_estimate, pack_by_memory, plan_sweep
from saelab.experiments.sweep import run_sweep
from saelab.experiments.sweep_state import RESULTS
from saelab.training.trainer import Trainer


def _base(**extra):
    return {"activations": "x.npy", "steps": 10, "n_latents": 32, **extra}


def test_lists_expand_as_a_full_product_times_seeds():
    plan = plan_sweep(_base(seed=[0, 1], sae=[{"method": "topk", "k": [2, 4, 8], "n_latents": [32, 64]}]))
    assert len(plan.saes) == 3 * 2 * 2
    assert plan.seeds == [0, 1]
    combos = {(s.cfg.method_params["k"], s.cfg.n_latents, s.seed) for s in plan.saes}
    assert len(combos) == 12
    # Names are unique; the group drops the seed so seeds of one configuration average together.
    assert len({s.name for s in plan.saes}) == 12
    for s in plan.saes:
        assert s.name == f"{s.group}-s{s.seed}"
    assert len({s.group for s in plan.saes}) == 6


def test_zip_varies_lists_together_and_crosses_the_rest():
    plan = plan_sweep(
        _base(
            sae=[
                {
                    "method": "topk",
                    "k": [2, 4],
                    "n_latents": [32, 64],
                    "lr": [1e-3, 3e-4, 1e-4],
                    "zip": ["k", "n_latents"],
                }
            ]
        )
    )
    pairs = {(s.cfg.method_params["k"], s.cfg.n_latents) for s in plan.saes}
    assert pairs == {(2, 32), (4, 64)}
    assert len(plan.saes) == 2 * 3


def test_several_tables_and_defaults_merge():
    plan = plan_sweep(
        _base(n_latents=48, sae=[{"method": "topk", "k": 3}, {"method": "relu", "penalty": "l1", "alpha": [0.1, 1.0]}])
    )
    assert [s.cfg.n_latents for s in plan.saes] == [48, 48, 48]
    assert sorted(s.cfg.method for s in plan.saes) == ["relu", "relu", "topk"]


@pytest.mark.parametrize(
    "data,field",
    [
        (_base(sae=[{"method": "topk", "k": [2, 4], "n_latents": [32], "zip": ["k", "n_latents"]}]), "zip"),
        (_base(sae=[{"method": "topk", "k": [2], "zip": ["lr"]}]), "zip"),
        (_base(sae=[{"method": "topk", "k": []}]), "k"),
        (_base(seed=[0, 0], sae=[{"method": "topk", "k": 2}]), "seed"),
        (_base(seed=[-1], sae=[{"method": "topk", "k": 2}]), "seed"),
        (_base(sae=[{"method": "topk", "k": 2, "name": "a"}, {"method": "topk", "k": 3, "name": "a"}]), "name"),
        (_base(sae=[{"method": "topk", "k": [2, -1]}]), "method.k"),
    ],
)
def test_bad_grids_name_the_field(data, field):
    with pytest.raises(ConfigError) as e:
        plan_sweep(data)
    assert e.value.field.startswith(field), str(e.value)


def test_memory_packing_keeps_order_and_respects_the_budget():
    plan = plan_sweep(_base(sae=[{"method": "topk", "k": 2, "n_latents": [64, 128, 256, 512]}]))
    one = [memory_estimate(s.cfg, 16, 32) for s in plan.saes]
    parts = pack_by_memory(plan.saes, 16, 32, budget=one[0] + one[1])
    assert [s.name for p in parts for s in p] == [s.name for s in plan.saes]
    assert all(sum(memory_estimate(s.cfg, 16, 32) for s in p) <= one[0] + one[1] or len(p) == 1 for p in parts)
    assert len(parts) >= 3


def _sweep_config(toy_dir, seeds):
    return {
        "activations": str(toy_dir / "activations.npy"),
        "steps": 60,
        "batch_size": 64,
        "seed": seeds,
        "sae": [{"method": "topk", "k": [2, 4], "n_latents": 48}],
    }


def test_a_sweep_writes_one_row_per_sae_with_intervals(toy_dir, tmp_path):
    rows = run_sweep(_sweep_config(toy_dir, [0, 1]), tmp_path / "sw", progress=False, say=lambda m: None, report=True)
    assert len(rows) == 4
    on_disk = [json.loads(line) for line in (tmp_path / "sw" / RESULTS).read_text().splitlines()]
    assert sorted(r["name"] for r in on_disk) == sorted(r["name"] for r in rows)
    for r in on_disk:
        for key in (
            "name",
            "group",
            "method",
            "params",
            "n_latents",
            "seed",
            "l0",
            "nmse",
            "dead_fraction",
            "tokens",
            "flops",
            "folder",
            "ci",
        ):
            assert key in r, key
        assert r["method"] == "topk" and r["tokens"] == 60 * 64
        # TopK's L0 is k exactly; the bootstrap interval of NMSE contains its estimate.
        assert r["l0"] == pytest.approx(r["params"]["k"])
        lo, hi = r["ci"]["nmse"]["lo"], r["ci"]["nmse"]["hi"]
        assert lo <= r["nmse"] <= hi
        assert (tmp_path / "sw" / r["folder"] / "sae_weights.safetensors").exists()
    assert (tmp_path / "sw" / "report" / "report.html").exists()
    # An existing sweep folder is not overwritten without --resume.
    with pytest.raises(ConfigError):
        run_sweep(_sweep_config(toy_dir, [0, 1]), tmp_path / "sw", progress=False, say=lambda m: None)


def test_a_killed_sweep_resumes_without_retraining_finished_parts(toy_dir, tmp_path, monkeypatch):
    cfg = _sweep_config(toy_dir, [0, 1])
    real = Trainer._train_step
    calls = {"n": 0}

    def dying(self, m, x, step):
        calls["n"] += 1
        # Seed 0 trains 2 SAEs × 60 steps; die half-way through seed 1.
        if calls["n"] == 2 * 60 + 2 * 40:
            raise KeyboardInterrupt
        return real(self, m, x, step)

    monkeypatch.setattr(Trainer, "_train_step", dying)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(cfg, tmp_path / "sw", progress=False, say=lambda m: None, report=False)
    monkeypatch.setattr(Trainer, "_train_step", real)
    first = [json.loads(line) for line in (tmp_path / "sw" / RESULTS).read_text().splitlines()]
    assert sorted(r["seed"] for r in first) == [0, 0]

    counted = {"n": 0}

    def counting(self, m, x, step):
        counted["n"] += 1
        return real(self, m, x, step)

    monkeypatch.setattr(Trainer, "_train_step", counting)
    rows = run_sweep(cfg, tmp_path / "sw", resume=True, progress=False, say=lambda m: None, report=False)
    assert len(rows) == 4
    # Seed 0 was not retrained; seed 1 resumed from a checkpoint, not from step 0.
    assert 0 < counted["n"] < 2 * 60
    ref = run_sweep(cfg, tmp_path / "ref", progress=False, say=lambda m: None, report=False)
    by_name = {r["name"]: r for r in ref}
    for r in rows:
        assert r["nmse"] == pytest.approx(by_name[r["name"]]["nmse"], rel=1e-5), r["name"]


def test_a_deleted_member_of_a_finished_part_trains_again_alone(toy_dir, tmp_path, monkeypatch):
    import shutil

    cfg = _sweep_config(toy_dir, [0])
    first = {r["name"]: r for r in run_sweep(cfg, tmp_path / "sw", progress=False, say=lambda m: None, report=False)}
    assert len(first) == 2
    kept_name, gone_name = sorted(first)
    kept_weights = tmp_path / "sw" / first[kept_name]["folder"] / "sae_weights.safetensors"
    before = kept_weights.stat().st_mtime_ns
    shutil.rmtree(tmp_path / "sw" / first[gone_name]["folder"])

    real, counted = Trainer._train_step, {"n": 0}

    def counting(self, m, x, step):
        counted["n"] += 1
        return real(self, m, x, step)

    monkeypatch.setattr(Trainer, "_train_step", counting)
    rows = {
        r["name"]: r
        for r in run_sweep(cfg, tmp_path / "sw", resume=True, progress=False, say=lambda m: None, report=False)
    }
    # Only the deleted SAE trained (60 steps of one member), into a run of its own; its neighbour was read back.
    assert counted["n"] == 60
    assert kept_weights.stat().st_mtime_ns == before and rows[kept_name] == first[kept_name]
    assert rows[gone_name]["folder"].startswith("runs/seed0-redo")
    assert (tmp_path / "sw" / rows[gone_name]["folder"] / "sae_weights.safetensors").exists()
    # Alone, on the same batches from the same init, it trains to what it was beside its neighbour.
    assert rows[gone_name]["nmse"] == pytest.approx(first[gone_name]["nmse"], rel=1e-5)
    on_disk = [json.loads(line) for line in (tmp_path / "sw" / RESULTS).read_text().splitlines()]
    assert sorted(r["name"] for r in on_disk) == sorted(first)
