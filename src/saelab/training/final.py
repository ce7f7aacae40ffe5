"""The end of a run: --until-converged's held-out checks, and each SAE's final evaluation and folder."""

from __future__ import annotations

import torch

from saelab.evals.evaluate import evaluate
from saelab.formats.folder import save_sae
from saelab.training.convergence import MAX_ROWS as CONVERGE_ROWS
from saelab.training.convergence import held_out_nmse
from saelab.training.member import (
    THROUGHPUT_KEYS,
    Member,
    training_flops,
)
from saelab.util.atomic import atomic_write_json


class FinishedRun:
    """Mixed into the Trainer: convergence checks during the loop and the final evaluation after it.

    Expects `self.run`, `self.total_steps`, `self.stream`, `self.throughput`, `self._converge_cache`
    (held-out rows per store, read once), `self.data` (which rows evaluate a member, and what its folder
    records of them: training.data) and `self.strategy` (its own folder keys).
    """

    # ---- until_converged ----------------------------------------------------------------------
    @staticmethod
    def _all_converged(members: list[Member]) -> bool:
        return all(m.convergence is not None and m.convergence.converged for m in members)

    def _check_convergence(self, members: list[Member], done: int) -> bool:
        """Measure held-out NMSE when due (until_converged); True once every SAE has converged."""
        monitors = [m.convergence for m in members if m.convergence is not None]
        if not monitors or not monitors[0].due(done):
            return self._all_converged(members)
        for m in members:
            m.convergence.observe(done * self.run.train.batch_size, held_out_nmse(m.sae, self._converge_rows(m)))
        return self._all_converged(members)

    def _converge_rows(self, m: Member) -> torch.Tensor:
        """The first CONVERGE_ROWS held-out rows of member m's evaluation data, read once, on the training device."""
        store, (lo, hi) = self.data.eval_data(m)
        cache = self._converge_cache
        if id(store) not in cache:
            cache[id(store)] = torch.from_numpy(store.read_range(lo, min(hi, lo + CONVERGE_ROWS))).to(
                self.run.train.device
            )
        return cache[id(store)]

    def _finish(self, members: list[Member]) -> None:
        for m in members:
            m.sae.eval()
            store, rows = self.data.eval_data(m)
            result = evaluate(m.sae, store, rows=rows, scan=False, eps_l0=self.run.train.eps_l0)
            result.rows = "held-out"
            tokens = self.total_steps * self.run.train.batch_size
            extra = {
                "train": self.run.train.to_dict(),
                "steps": self.total_steps,
                "tokens": tokens,
                "flops": training_flops(m.cfg, tokens),
                "split": self.data.split_record(m),
                "source": self.data.source,
                "eval": result.to_dict(),
                # Distinct seeds must give distinct starts and orders; these let a results table show it.
                "init_hash": m.init_hash or None,
                "data_order_hash": self.stream.order_hash(),
                **self.strategy.folder_extra(),
                **self.data.folder_extra(m),
            }
            if m.control is not None:
                extra["target_l0"] = m.control.record()
            if m.convergence is not None:
                extra["convergence"] = m.convergence.record()
                extra["tokens_to_convergence"] = m.convergence.converged_at
            # This process's loop (a resumed run: the steps since the resume); null when it ran none.
            extra.update(self.throughput.record() if self.throughput is not None else dict.fromkeys(THROUGHPUT_KEYS))
            save_sae(m.sae, m.out, extra)
            atomic_write_json(m.out / "eval.json", result.to_dict())
