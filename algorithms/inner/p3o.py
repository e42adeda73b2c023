"""P3O inner solver (Zhang, Shen, Yang, Chen, Yuan, Wang & Tao 2022, "Penalized Proximal Policy Optimization for
Safe Reinforcement Learning"), batched over tasks, on the PPO base's minibatch machinery (``ppo.MinibatchSolver``,
shared with ``ppo``, ``ppolag``, ``pidlag`` and ``focops``).

P3O replaces the CMDP max J_R s.t. J_C <= d by the exact-penalty problem (eq. 9) and its clipped surrogate form
(eq. 10), per task:

    min_theta  L^P3O(theta) = -L^CLIP_R(theta) + kappa * max(0, L^CLIP_C(theta) + (J_C - d)),
    L^CLIP_R = E[ min(r A_R, clip(r, 1 - eps, 1 + eps) A_R) ]      (PPO's clip, the optimistic side cut off)
    L^CLIP_C = E[ max(r A_C, clip(r, 1 - eps, 1 + eps) A_C) ]      (the clip taken the pessimistic way for cost)

so the penalty is active only where the cost estimate J_C + L^CLIP_C exceeds d; for kappa above the optimal
multiplier the exact penalty has the CMDP's solution (the paper's Theorem 1). J_C is the batch's constrained
episode cost (``Batch.ep_constraint_cost``, so cost shaping reaches it), held fixed during the step.
A_R is standardized per task; A_C is `episode_cost_advantages` (centered, in per-episode cost units), so that
L^CLIP_C is a first-order estimate of J_C(theta) - J_C(theta_old) in the units of J_C - d. On a minibatch the
samples' mean of A_C (zero in expectation, not in a sample of 64) is subtracted from L^CLIP_C, so that the ReLU's
argument at theta_old is exactly the batch's J_C - d in every minibatch: without it, with kappa 20, minibatch noise
of the cost advantage (a few units of episode cost) switches the penalty on for tasks well within d.

One inner step is PPO's (``ppo.py``): ``epochs`` passes of per-task minibatch Adam (betas 0.9 / 0.999, moments
reset each step, per-task gradient clip ``max_grad_norm``), the ReLU's argument taken per minibatch, each task
stopping after the pass that takes its mean KL(pi_old || pi) above ``target_kl``. Defaults are OmniSafe's P3O
(``configs/on-policy/P3O.yaml``): kappa 20, clip 0.2, lr 3e-4, target_kl 0.02, minibatch 64, 10 passes
(its ``update_iters``). Differences from OmniSafe's P3O: its cost surrogate is the unclipped E[r A_C] with A_C
standardized (so J_C - d and the surrogate have different units; ``cost_advantage: standardized`` takes its A_C),
and its J_C is the mean of its logger's last 50 episodes; here the paper's pessimistic clip, A_C in episode-cost
units and J_C of the current batch.

No differentiable step (``supports_differentiable = False``): Meta-CPO's and Meta-TRPO's outer updaters refuse it.
P3O has no multiplier (no ``lagrange`` state): C-MAML keeps its meta lambda to itself and a meta-test's
``eval.multipliers: inherit`` passes nothing to it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from safemeta.algorithms.inner.base import State, episode_cost_advantages, normalize, output_field
from safemeta.algorithms.inner.ppo import MinibatchSolver, PPOConfig, clipped_surrogate
from safemeta.config.schema import spec
from safemeta.registry import register_inner
from safemeta.rollout.batch import Batch


@dataclass
class P3OConfig(PPOConfig):
    kappa: float = spec(20.0, ge=0, doc="penalty factor of the exact ReLU penalty (eq. 9/10; OmniSafe's P3O kappa)")
    cost_advantage: Literal["episode", "standardized"] = spec(
        "episode", doc="A_C of the cost surrogate: episode (in J_C's units, so L^CLIP_C estimates J_C's change, "
                       "eq. 10) or standardized per task (OmniSafe's; the surrogate then has no units), for the "
                       "cross-check")
    output: Literal["last", "feasible"] = output_field("last")


def cost_clipped_surrogate(logp: Tensor, logp_old: Tensor, adv_c: Tensor, clip: float) -> Tensor:
    """Per sample max(r A_C, clip(r, 1 - eps, 1 + eps) A_C): the pessimistic clip for a cost (P3O eq. 10).
    Its gradient w.r.t. ``logp`` is r A_C inside the range and 0 where the clip binds (A_C > 0 and r < 1 - eps,
    or A_C < 0 and r > 1 + eps)."""
    ratio = torch.exp(logp - logp_old)
    return torch.max(ratio * adv_c, ratio.clamp(1.0 - clip, 1.0 + clip) * adv_c)


def p3o_penalty(cost_surrogate: Tensor, violation: Tensor, kappa: float) -> Tensor:
    """kappa * max(0, L^CLIP_C + (J_C - d)) (eq. 9/10), elementwise: zero (with zero gradient) where the cost
    estimate is within d, kappa times the estimate's excess (gradient kappa) where it is above."""
    return kappa * torch.relu(cost_surrogate + violation)


@register_inner("p3o", "P3O: PPO's clipped reward surrogate minus kappa * ReLU(clipped cost surrogate + J_C - d), "
                       "the exact penalty")
class P3O(MinibatchSolver):
    Config = P3OConfig

    def advantages(self, batch: Batch, state: State) -> Tensor:
        return normalize(batch.adv_r)

    def sample_terms(self, batch: Batch, state: State) -> dict[str, Tensor]:
        adv_r = normalize(batch.adv_r)
        violation = (batch.ep_constraint_cost - state["cost_limit"]).reshape(-1, 1, 1).expand_as(adv_r)
        adv_c = episode_cost_advantages(batch) if self.cfg.cost_advantage == "episode" else normalize(batch.adv_c)
        return {"adv_r": adv_r, "adv_c": adv_c, "violation": violation}

    def minibatch_objective(self, logp, mean, log_std, mb, state) -> Tensor:
        clip = self.cfg.clip
        reward = clipped_surrogate(logp, mb["logp_old"], mb["adv_r"], clip).mean(1)
        # the change of J_C estimated on the minibatch: the samples' mean A_C (zero in expectation) taken off, so
        # that at theta_old the penalty's argument is the batch's J_C - d, not J_C - d plus minibatch noise
        cost = (cost_clipped_surrogate(logp, mb["logp_old"], mb["adv_c"], clip) - mb["adv_c"]).mean(1)
        return reward - p3o_penalty(cost, mb["violation"][:, 0], self.cfg.kappa)  # J_C - d: one value per task

    def step(self, params, batch, state, differentiable=False):
        new, state, info = super().step(params, batch, state, differentiable)
        with torch.no_grad():
            info["penalty_active"] = (batch.ep_constraint_cost > state["cost_limit"]).float()
        return new, state, info
