"""Seeds reach every SAE's initialization and the data order, for every registered method (issue 31, item 10)."""

import json

from saelab.config import RunConfig, SAEConfig, TrainConfig
from saelab.formats.folder import SAELAB_CFG
from saelab.methods import ACTIVATIONS, PENALTIES
from saelab.methods.resolve import display_name
from saelab.training.trainer import Trainer, train


def _every_method(d_in: int) -> list[SAEConfig]:
    """One SAE per registered activation (default parameters) and per penalty (on ReLU)."""
    cfgs = [SAEConfig.from_dict({"method": m, "n_latents": 48, "d_in": d_in, "name": m}) for m in sorted(ACTIVATIONS)]
    cfgs += [
        SAEConfig.from_dict({"method": "relu", "penalty": p, "n_latents": 48, "d_in": d_in, "name": f"relu-{p}"})
        for p in sorted(PENALTIES)
    ]
    return cfgs


def _run(toy_dir, seed: int, out, steps: int = 4) -> RunConfig:
    t = TrainConfig.from_dict(
        {
            "activations": str(toy_dir / "activations.npy"),
            "steps": steps,
            "batch_size": 32,
            "seed": seed,
            "out": str(out),
        }
    )
    return RunConfig(t, _every_method(16))


def test_every_method_starts_from_other_weights_under_another_seed_and_the_same_under_the_same(toy_dir, tmp_path):
    hashes = {}
    for seed, tag in ((0, "a"), (0, "b"), (1, "c"), (2, "d")):
        trainer = Trainer(_run(toy_dir, seed, tmp_path / tag), progress=False)
        members = trainer._build_members()
        hashes[tag] = ({display_name(m.cfg): m.init_hash for m in members}, trainer.stream.order_hash())
    names = set(hashes["a"][0])
    assert len(names) == len(ACTIVATIONS) + len(PENALTIES) and "dimred" in names
    assert hashes["a"] == hashes["b"]  # a seed is a reproducible start and order
    for name in names:
        assert len({hashes[t][0][name] for t in "acd"}) == 3, name  # three seeds, three initializations
    assert len({hashes[t][1] for t in "acd"}) == 3  # and three data orders
    # Within one seed the SAEs do not share a start either (each is seeded by its own name).
    assert len(set(hashes["a"][0].values())) == len(names)


def test_saelab_json_records_the_initial_weights_hash_and_the_data_order(toy_dir, tmp_path):
    records = {}
    for seed in (0, 1):
        run = _run(toy_dir, seed, tmp_path / f"s{seed}", steps=3)
        run.saes = [s for s in run.saes if s.method in ("topk", "dimred")]
        members = train(run, progress=False)
        for m in members:
            rec = json.loads((m.out / SAELAB_CFG).read_text())
            records[(seed, display_name(m.cfg))] = rec
            assert rec["init_hash"] == m.init_hash and len(rec["init_hash"]) == 16
    for name in ("topk", "dimred"):
        assert records[(0, name)]["init_hash"] != records[(1, name)]["init_hash"]
        assert records[(0, name)]["data_order_hash"] != records[(1, name)]["data_order_hash"]
    # The SAEs of one run share its batches.
    assert records[(0, "topk")]["data_order_hash"] == records[(0, "dimred")]["data_order_hash"]


def test_sweep_rows_carry_distinct_init_hashes_per_seed(toy_dir, tmp_path):
    from saelab.experiments.sweep import run_sweep

    seeds = (0, 1)
    cfg = {
        "activations": str(toy_dir / "activations.npy"),
        "steps": 4,
        "batch_size": 32,
        "seed": list(seeds),
        "sae": [{"method": "dimred", "n_latents": 48}, {"method": "topk", "k": 2, "n_latents": 24}],
    }
    rows = run_sweep(cfg, tmp_path / "sw", progress=False, say=lambda m: None, report=False)
    by_group: dict[str, set] = {}
    for r in rows:
        assert r["init_hash"] and r["data_order_hash"]
        by_group.setdefault(r["group"], set()).add((r["init_hash"], r["data_order_hash"]))
    assert all(len(v) == len(seeds) for v in by_group.values()) and len(by_group) == 2
