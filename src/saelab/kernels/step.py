"""The training objective on the sparse path: objective.dense_step's losses from sparse codes.

Per method (all ReLU'd, as the dense activations are):
  topk        z = ReLU(P at the per-row top-k)
  leaky_topk  the same, for ε = 0 only (see kernels.supports)
  batchtopk   z = P at the k·B largest positive entries of the batch (ragged rows)
  multi_topk  top-(multiple·k) sorted: its first k columns are the k code (the k largest of the
              4k largest are the k largest), both decoded; mse + aux_weight · L(4k)
  AuxK        top-k_aux among the dead latents of P, decoded without bias against the detached
              residual, normalized as objective.auxk_loss.
Loss terms keep the dense path's names and order, so `StepOutput.total` sums them the same way.
"""

from __future__ import annotations

from torch import Tensor

from saelab.kernels.decode import DecodeItem, decode
from saelab.kernels.topk_encode import EncodePlan, encode
from saelab.losses import normalized_squared_error, squared_error
from saelab.objective import StepOutput


def sparse_step(sae, x_raw: Tensor, alpha: float, dead: Tensor | None) -> StepOutput:
    """The sparse-path counterpart of objective.dense_step (same losses, same gradients)."""
    cfg = sae.cfg
    act = sae.activation
    method = act.name
    k = act.params.k
    x, _ = sae.normalizer.normalize(x_raw)
    n = cfg.n_latents

    plan = EncodePlan()
    if method == "batchtopk":
        plan.batch_k = k
    elif method == "multi_topk":
        plan.k = min(k * act.params.multiple, n)
        plan.sorted = True
    else:
        plan.k = k
    use_aux = cfg.auxk and dead is not None
    if use_aux and bool(dead.any()):
        plan.dead = dead.nonzero().squeeze(1).to(x.device)
        plan.k_aux = cfg.k_aux

    z_main, z_aux = encode(x, sae.W_enc, sae.b_enc, sae.b_dec, plan)
    items, values = [], []
    if method == "multi_topk":
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
    if method == "multi_topk":
        x_big = decoded[1] + sae.b_dec
        losses["multi_topk"] = act.params.aux_weight * squared_error(x_big, x)
    if use_aux:
        if plan.aux is None:
            losses["auxk"] = cfg.aux_coef * x.new_zeros(())
        else:
            residual = (x - x_hat).detach()
            losses["auxk"] = cfg.aux_coef * normalized_squared_error(decoded[-1], residual)
    code = items[0].code.with_values(values[0])
    return StepOutput(losses=losses, x=x, pre=None, z=code, x_hat=x_hat)
