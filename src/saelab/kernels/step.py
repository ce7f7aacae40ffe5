"""The training objective on the sparse path: objective.dense_step's losses from sparse codes.

Per SparsePlan (all ReLU'd, as the dense activations are):
  k per row           z = ReLU(P at the per-row top-k)                       (topk, leaky_topk ε=0)
  batch               z = P at the k·B largest positive entries of the batch (batchtopk; ragged rows)
  extra_multiple m    top-(m·k) sorted: its first k columns are the k code (the k largest of the
                      m·k largest are the k largest), both decoded; mse + extra_weight · L(m·k)
                      under the name extra_name                              (multi_topk)
  prefixes (m, …)     per size m, the code's entries on latents < m decoded alone (their values a
                      differentiable gather of z's); extra_weight · Σ_m L(prefix m) under the name
                      extra_name                                             (matryoshka_batchtopk)
  positive            z = P at every positive entry (relu; ragged rows), with an entrywise
                      penalty (l1, lp, smoothed_l0, freshman) read from those entries (times
                      ‖W_dec[i]‖ where the config asks) as the dense path's "penalty" term
  AuxK                top-k_aux among the dead latents of P, decoded without bias against the
                      detached residual, scaled as objective.auxk_loss (losses.auxk_term).
Loss terms keep the dense path's names and order, so `StepOutput.total` sums them the same way.

A ReLU code is only as sparse as training has made it (at initialization about half of P is
positive), so `max_density` lets the caller take the dense path for a step whose code is denser
than that: P is computed first, outside the autograd Function, and reused by it when the step stays sparse.

Under autocast (saelab's `--dtype bfloat16`) the step reads the autocast dtype and hands it to the
kernels as EncodeState.low: the encoder's product, the selection's reads and the decoder's row
gathers run in bfloat16, and every loss, sum and gradient is float32. Autocast itself is switched
off inside, so no op here is silently recast: each narrowing is explicit in the kernels.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saelab.kernels import threads
from saelab.kernels.decode import DecodeItem, decode
from saelab.kernels.plan import SparsePlan
from saelab.kernels.sparse_code import SparseCode
from saelab.kernels.topk_encode import EncodeState, encode, narrow, pre_activations
from saelab.losses import auxk_term, squared_error
from saelab.step_output import StepOutput


def sparse_step(
    sae,
    x_raw: Tensor,
    alpha: float,
    dead: Tensor | None,
    plan: SparsePlan | None = None,
    max_density: float | None = None,
) -> StepOutput | None:
    """The sparse-path counterpart of objective.dense_step (same losses, same gradients).

    None (nothing computed that needs undoing) when a `positive` plan's code would fill more than
    `max_density` of the [B, n] entries: the dense path is then the faster one.
    """
    kind = sae.W_enc.device.type
    if not torch.is_autocast_enabled(kind):
        return _sparse_step(sae, x_raw, alpha, dead, plan, max_density, None)
    low = torch.get_autocast_dtype(kind)
    with torch.autocast(kind, enabled=False):
        return _sparse_step(sae, x_raw, alpha, dead, plan, max_density, low)


def _sparse_step(
    sae,
    x_raw: Tensor,
    alpha: float,
    dead: Tensor | None,
    plan: SparsePlan | None,
    max_density: float | None,
    low: torch.dtype | None,
) -> StepOutput | None:
    cfg = sae.cfg
    plan = plan if plan is not None else sae.activation.sparse_plan()
    if plan is None:
        raise ValueError(
            f"method {cfg.method!r} has no sparse plan in this mode"
        )  # callers check methods.plans.supports first
    x, _ = sae.normalizer.normalize(x_raw)

    extra = plan.extra_multiple is not None
    state = EncodeState(plan, low=low)
    if plan.positive:
        with torch.no_grad():
            state.pre = pre_activations(*narrow(low, x - sae.b_dec, sae.W_enc, sae.b_enc))
        if max_density is not None:
            with threads.parallel(state.pre.device):
                state.pre_positive = state.pre > 0
                filled = int(torch.count_nonzero(state.pre_positive))
            if filled > max_density * state.pre.numel():
                state.pre = state.pre_positive = None
                return None
    use_aux = cfg.auxk and dead is not None
    if use_aux and bool(dead.any()):
        state.dead = dead.nonzero().squeeze(1).to(x.device)
        state.k_aux = cfg.k_aux

    z_main, z_aux = encode(x, sae.W_enc, sae.b_enc, sae.b_dec, state)
    items, values = [], []
    if extra:
        # The k code is the first k columns of the sorted multiple·k code.
        cols = state.main.latents.view(x.shape[0], -1)
        items += [
            DecodeItem(state.main.fixed_width(plan.leading(cols).contiguous(), plan.leading(z_main).detach())),
            DecodeItem(state.main),
        ]
        values += [plan.leading(z_main), z_main]
    else:
        items.append(DecodeItem(state.main))
        values.append(z_main)
    first_prefix = len(items)
    for m in plan.prefixes:
        code, z_m = _on_latents_below(state.main, z_main, m)
        items.append(DecodeItem(code))
        values.append(z_m)
    if state.aux is not None:
        block = state.dead if state.aux_block else None
        items.append(DecodeItem(state.aux, block, state.aux_local if block is not None else None))
        values.append(z_aux)
    decoded = decode(sae.W_dec, items, values, state)

    x_hat = decoded[0] + sae.b_dec
    losses = {"mse": squared_error(x_hat, x)}
    if sae.penalty is not None:
        scored = (
            z_main * sae.decoder_norms().index_select(0, state.main.latents) if cfg.penalty_decoder_norm else z_main
        )
        losses["penalty"] = alpha * sae.penalty.on_entries(scored, state.main.rows, x.shape[0])
    if extra:
        x_big = decoded[1] + sae.b_dec
        losses[plan.extra_name] = plan.extra_weight * squared_error(x_big, x)
    if plan.prefixes:
        terms = [squared_error(y + sae.b_dec, x) for y in decoded[first_prefix : first_prefix + len(plan.prefixes)]]
        losses[plan.extra_name] = plan.extra_weight * sum(terms[1:], terms[0])
    if use_aux:
        if state.aux is None:
            losses["auxk"] = cfg.aux_coef * x.new_zeros(())
        else:
            residual = (x - x_hat).detach()
            losses["auxk"] = cfg.aux_coef * auxk_term(decoded[-1], residual, x)
    code = items[0].code.with_values(values[0])
    return StepOutput(losses=losses, x=x, pre=None, z=code, x_hat=x_hat)


def _on_latents_below(code: SparseCode, z: Tensor, m: int) -> tuple[SparseCode, Tensor]:
    """The entries of `code` on latents < m (a ragged code) and their values, gathered from `z` with its gradient."""
    with threads.single(code.latents.device):
        keep = (code.latents < m).nonzero().squeeze(1)
        sub = SparseCode(
            code.n_rows,
            code.latents.index_select(0, keep),
            code.values.index_select(0, keep),
            rows=code.rows.index_select(0, keep),
        )
    return sub, z.reshape(-1).index_select(0, keep)
