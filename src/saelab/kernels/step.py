"""The training objective on the sparse path: objective.dense_step's losses from sparse codes.

Per SparsePlan (all ReLU'd, as the dense activations are):
  k per row           z = ReLU(P at the per-row top-k)                       (topk, leaky_topk ε=0)
  batch               z = P at the k·B largest positive entries of the batch (batchtopk; ragged rows)
  extra_multiple m    top-(m·k) sorted: its first k columns are the k code (the k largest of the
                      m·k largest are the k largest), both decoded; mse + extra_weight · L(m·k)
                      under the name extra_name                              (multi_topk)
  AuxK                top-k_aux among the dead latents of P, decoded without bias against the
                      detached residual, scaled as objective.auxk_loss (losses.auxk_term).
Loss terms keep the dense path's names and order, so `StepOutput.total` sums them the same way.
"""

from __future__ import annotations

from torch import Tensor

from saelab.kernels.decode import DecodeItem, decode
from saelab.kernels.topk_encode import EncodePlan, encode
from saelab.losses import auxk_term, squared_error
from saelab.methods.base import SparsePlan
from saelab.step_output import StepOutput


def sparse_step(sae, x_raw: Tensor, alpha: float, dead: Tensor | None, spec: SparsePlan | None = None) -> StepOutput:
    """The sparse-path counterpart of objective.dense_step (same losses, same gradients)."""
    cfg = sae.cfg
    spec = spec if spec is not None else sae.activation.sparse_plan()
    if spec is None:
        raise ValueError(f"method {cfg.method!r} has no sparse plan in this mode")  # callers check kernels.supports first
    k = spec.k
    x, _ = sae.normalizer.normalize(x_raw)
    n = cfg.n_latents

    extra = spec.extra_multiple is not None
    plan = EncodePlan()
    if spec.batch:
        plan.batch_k = k
    elif extra:
        plan.k = min(k * spec.extra_multiple, n)
        plan.sorted = True
    else:
        plan.k = k
    use_aux = cfg.auxk and dead is not None
    if use_aux and bool(dead.any()):
        plan.dead = dead.nonzero().squeeze(1).to(x.device)
        plan.k_aux = cfg.k_aux

    z_main, z_aux = encode(x, sae.W_enc, sae.b_enc, sae.b_dec, plan)
    items, values = [], []
    if extra:
        # The k code is the first k columns of the sorted multiple·k code.
        cols = plan.main.latents.view(x.shape[0], -1)
        items += [DecodeItem(plan.main.fixed_width(cols[:, :k].contiguous(), z_main[:, :k].detach())), DecodeItem(plan.main)]
        values += [z_main[:, :k], z_main]
    else:
        items.append(DecodeItem(plan.main))
        values.append(z_main)
    if plan.aux is not None:
        block = plan.dead if plan.aux_block else None
        items.append(DecodeItem(plan.aux, block, plan.aux_local if block is not None else None))
        values.append(z_aux)
    decoded = decode(sae.W_dec, items, values, plan)

    x_hat = decoded[0] + sae.b_dec
    losses = {"mse": squared_error(x_hat, x)}
    if extra:
        x_big = decoded[1] + sae.b_dec
        losses[spec.extra_name] = spec.extra_weight * squared_error(x_big, x)
    if use_aux:
        if plan.aux is None:
            losses["auxk"] = cfg.aux_coef * x.new_zeros(())
        else:
            residual = (x - x_hat).detach()
            losses["auxk"] = cfg.aux_coef * auxk_term(decoded[-1], residual, x)
    code = items[0].code.with_values(values[0])
    return StepOutput(losses=losses, x=x, pre=None, z=code, x_hat=x_hat)
