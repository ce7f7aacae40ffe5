"""Batches read ahead in a thread: the same batches in the same order, errors where they happened, no thread left behind."""

import json
import signal
import threading
import time

import numpy as np
import pytest
import torch

from saelab.config import RunConfig, SAEConfig, TrainConfig
from saelab.data.prefetch import Prefetcher
from saelab.data.store import ActivationStore
from saelab.data.stream import BatchStream
from saelab.training.interrupt import TrainingInterrupted
from saelab.training.member import THROUGHPUT_KEYS
from saelab.training.trainer import Trainer


class _Broken(Exception):
    pass


class _BreaksAt:
    """A stream whose batch `at` raises (a bad block on disk, say)."""

    def __init__(self, stream, at):
        self.stream, self.at = stream, at

    def __getattr__(self, name):
        return getattr(self.stream, name)

    def batch(self, position):
        """The wrapped stream's batch, or _Broken at `at`."""
        if position == self.at:
            raise _Broken(f"bad block under batch {position}")
        return self.stream.batch(position)


def _prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "saelab-prefetch" and t.is_alive()]


@pytest.fixture
def stream_parts(tmp_path):
    x = np.random.default_rng(0).standard_normal((5000, 8), dtype=np.float32)
    np.save(tmp_path / "a.npy", x)
    # 700-row buffers: the batches cross buffer boundaries, and 120 positions cross an epoch.
    return lambda: BatchStream(ActivationStore(tmp_path / "a.npy"), (0, 5000), 100, seed=3, buffer_rows=700)


@pytest.mark.parametrize("start", [0, 37])
def test_the_prefetcher_yields_exactly_the_stream_batches_in_order(stream_parts, start):
    ahead, reference = stream_parts(), stream_parts()
    with Prefetcher(lambda p: ahead.batch(p)[0], start, 120) as batches:
        for p in range(start, 120):
            got, want = batches.get(p), reference.batch(p)[0]
            assert got.dtype == want.dtype and np.array_equal(got, want), p
        with pytest.raises(IndexError):
            batches.get(120)
    assert not batches.running


def test_positions_must_come_in_order():
    with Prefetcher(lambda p: p, 0, 10) as batches:
        assert batches.get(0) == 0
        with pytest.raises(ValueError, match="next one is 1"):
            batches.get(2)


@pytest.mark.parametrize("depth", [0, 2])
def test_an_error_in_the_thread_is_raised_by_the_get_of_its_position(stream_parts, depth):
    broken = _BreaksAt(stream_parts(), 7)
    reference = stream_parts()
    batches = Prefetcher(lambda p: broken.batch(p)[0], 0, 20, depth)
    for p in range(7):
        assert np.array_equal(batches.get(p), reference.batch(p)[0])
    with pytest.raises(_Broken, match="^bad block under batch 7$") as e:
        batches.get(7)
    assert any(frame.name == "batch" for frame in e.traceback)  # raised where it happened, in the stream
    batches.close()
    assert not batches.running and not _prefetch_threads()


def test_close_stops_a_thread_waiting_on_a_full_queue_or_inside_a_batch():
    batches = Prefetcher(lambda p: p, 0, 10**9)
    assert [batches.get(p) for p in range(3)] == [0, 1, 2]
    time.sleep(0.05)  # the queue fills and the thread waits on it
    batches.close()
    assert not batches.running

    def slow(p):
        time.sleep(0.3)
        return p

    batches = Prefetcher(slow, 0, 10**9)
    began = time.perf_counter()
    batches.close()  # waits for the batch being produced, then the thread ends
    assert not batches.running and time.perf_counter() - began < 2.0
    batches.close()  # twice is harmless
    with pytest.raises(RuntimeError, match="closed"):
        batches.get(0)


# ---- in the trainer ---------------------------------------------------------------------------
def _run(toy_dir, out, steps=30, **train):
    t = TrainConfig(
        activations=str(toy_dir / "activations.npy"), out=str(out), batch_size=128, log_every=10, steps=steps, **train
    )
    return RunConfig(t, [SAEConfig(n_latents=32, method="topk", method_params={"k": 3}, lr=2e-3)])


def _trainer(run, depth):
    trainer = Trainer(run, progress=False)
    trainer.prefetch_depth = depth
    return trainer


def _weights(members):
    return {k: v.clone() for k, v in members[0].sae.state_dict().items()}


def test_training_with_prefetch_gives_the_weights_of_training_without(toy_dir, tmp_path):
    sync = _weights(_trainer(_run(toy_dir, tmp_path / "sync"), 0).fit())
    ahead_trainer = _trainer(_run(toy_dir, tmp_path / "ahead"), 2)
    ahead = _weights(ahead_trainer.fit())
    for name, tensor in sync.items():
        assert torch.equal(tensor, ahead[name]), name
    assert not _prefetch_threads()
    record = json.loads((tmp_path / "ahead" / "saelab.json").read_text())
    assert record["tokens_per_s"] > 0 and record["step_tokens_per_s"] >= record["tokens_per_s"]
    assert 0 < record["throughput_ratio"] <= 1
    th = ahead_trainer.throughput
    assert th.tokens == 30 * 128 and th.step_s <= th.wall_s and "× the bare step loop" in th.summary()


def test_an_interrupted_and_resumed_run_with_prefetch_gives_the_same_weights(toy_dir, tmp_path, monkeypatch):
    sync = _weights(_trainer(_run(toy_dir, tmp_path / "sync"), 0).fit())
    original = Trainer._train_step

    def signalled(self, m, x, step):
        if step == 11:
            self._stop.signum = signal.SIGINT  # what StopSignals records on Ctrl-C during a step
        return original(self, m, x, step)

    monkeypatch.setattr(Trainer, "_train_step", signalled)
    with pytest.raises(TrainingInterrupted):
        _trainer(_run(toy_dir, tmp_path / "cut"), 2).fit()
    assert not _prefetch_threads()
    monkeypatch.setattr(Trainer, "_train_step", original)
    resumed = _trainer(_run(toy_dir, tmp_path / "cut"), 2)
    members = resumed.fit(resume=True)  # the thread starts at batch 12
    assert resumed.throughput.tokens == (30 - 12) * 128
    for name, tensor in sync.items():
        assert torch.equal(tensor, _weights(members)[name]), name


@pytest.mark.parametrize("error", [KeyboardInterrupt, _Broken])
def test_an_error_in_a_step_leaves_no_thread_behind(toy_dir, tmp_path, monkeypatch, error):
    def failing(self, m, x, step):
        if step == 4:
            raise error("in the step")
        return original(self, m, x, step)

    original = Trainer._train_step
    monkeypatch.setattr(Trainer, "_train_step", failing)
    with pytest.raises(error, match="in the step"):
        _trainer(_run(toy_dir, tmp_path / "r"), 2).fit()
    assert not _prefetch_threads()


def test_a_data_error_in_the_thread_stops_training_with_its_type_and_message(toy_dir, tmp_path):
    trainer = _trainer(_run(toy_dir, tmp_path / "r"), 2)
    trainer.stream = _BreaksAt(trainer.stream, 5)
    with pytest.raises(_Broken, match="^bad block under batch 5$"):
        trainer.fit()
    assert not _prefetch_threads()


def test_a_convergence_stop_closes_the_thread_and_records_the_steps_it_ran(toy_dir, tmp_path):
    run = _run(toy_dir, tmp_path / "r", steps=3000, until_converged=True, converge_tol=0.5, converge_window=4 * 5 * 128)
    trainer = _trainer(run, 2)
    trainer.fit()
    assert trainer.total_steps < 3000 and not _prefetch_threads()
    record = json.loads((tmp_path / "r" / "saelab.json").read_text())
    assert trainer.throughput.tokens == record["tokens"] and all(record[k] > 0 for k in THROUGHPUT_KEYS)
