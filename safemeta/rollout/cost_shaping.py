"""Cost shaping: constrain an upper bound C+ = C + Delta of the cost instead of C (Achiam et al. 2017,
"Constrained Policy Optimization", Sec. 6.3 "Tightening constraints via cost shaping").

The approximations between the trust-region problem and a sampled, linearized step make every
practical constrained solver hover around the limit d, half of the time above it. CPO builds a factor
of safety into the constraint: with Delta >= 0 correlated with C, the constraint J_{C+} <= d implies
J_C <= d - E[sum_t Delta_t]. The paper's Delta is the probability of entering an unsafe state within a
fixed horizon H, from a learned model updated every iteration (its code regresses a classifier on the
label ``min(1, c_t + ... + c_{t+H-1})``). Here Delta_t is that label itself, the Monte Carlo sample of the
same probability under the policy that collected the batch: unbiased for the on-policy probability, no
extra network to fit, checkpoint or meta-learn. The cost critic then fits the shaped cost, so the value
estimate smooths the label over states as the paper's model does.

``shape(batch, H, coeff)`` fills ``Batch.cost_bonus`` (coeff * Delta, ``[N, T, E]``) and
``Batch.ep_cost_bonus`` (its mean per finished episode, ``[N]``); the true cost and J_C stay in
``cost`` / ``ep_cost`` for every report, and the constraint consumers read ``Batch.constraint_cost`` /
``Batch.ep_constraint_cost``. Enabled by ``critic.cost_shaping_horizon`` (0, the default, is off).
"""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from safemeta.rollout.batch import Batch, episode_means


def hazard_labels(cost: Tensor, terminated: Tensor, truncated: Tensor, horizon: int) -> Tensor:
    """``min(1, sum_{j<H} c_{t+j})`` over the rest of the episode (dim 1 of ``[N, T, E]``), never across a
    termination, truncation or the end of the rollout."""
    t_len = cost.shape[1]
    ends = (terminated | truncated).to(cost.dtype)
    total = torch.zeros_like(cost)
    alive = torch.ones_like(cost)  # alive[:, t] = 1 while t + j is still in the episode that holds t
    for j in range(min(horizon, t_len)):
        total[:, : t_len - j] += alive[:, : t_len - j] * cost[:, j:]
        alive[:, : t_len - j - 1] = alive[:, : t_len - j - 1] * (1.0 - ends[:, j: t_len - 1])
        alive[:, t_len - j - 1] = 0.0
    return total.clamp(0.0, 1.0)


def shape(batch: Batch, horizon: int, coeff: float = 1.0) -> Batch:
    """The batch with its cost bonus coeff * Delta (see the module docstring); unchanged if H = 0."""
    if horizon <= 0 or batch.cost_bonus is not None:
        return batch
    bonus = coeff * hazard_labels(batch.cost, batch.terminated, batch.truncated, horizon)
    return replace(batch, cost_bonus=bonus, ep_cost_bonus=episode_means(bonus, batch.terminated, batch.truncated))
