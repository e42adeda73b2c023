"""P3O inner solver (Zhang, Shen, Yang, Chen, Yuan, Wang & Tao 2022, "Penalized Proximal Policy Optimization for
Safe Reinforcement Learning"), batched over tasks, on the PPO base (``ppo.py``); and `ObjectivePPOSolver`, the PPO
base's minibatch machinery for a per-task objective other than PPO's L^CLIP (also used by ``focops.py``).

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
standardized (so J_C - d and the surrogate have different units); here the paper's pessimistic clip and A_C in
episode-cost units.

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
from safemeta.algorithms.inner.ppo import PPOConfig, PPOSolver, adam_ascent, clipped_surrogate
from safemeta.config.schema import spec
from safemeta.registry import register_inner
from safemeta.rollout.batch import Batch
from safemeta.rollout.params import Params, detach, flat, unflat
from safemeta.rollout.policy import gaussian_log_prob


class ObjectivePPOSolver(PPOSolver):
    """``PPOSolver.ppo_update``'s loop (per-task permutations, minibatch Adam on the ``[N, P]`` stack, per-task KL
    early stop, ``max_minibatches``) ascending ``minibatch_objective`` instead of L^CLIP.

    A subclass gives ``sample_terms(batch, state)`` (per-sample tensors ``[N, T, E, ...]``, held fixed during the
    step), ``minibatch_objective(logp, mean, log_std, mb, state)`` (the per-task ``[N]`` objective to ascend on a
    minibatch; ``mb`` holds the terms, ``logp_old``, ``old_mean`` and ``old_log_std`` of its samples, ``[N, B, ...]``)
    and ``early_stop_kl`` (the threshold on the batch's mean KL(pi_old || pi); 0: none)."""

    def sample_terms(self, batch: Batch, state: State) -> dict[str, Tensor]:
        raise NotImplementedError

    def minibatch_objective(self, logp: Tensor, mean: Tensor, log_std: Tensor, mb: dict[str, Tensor],
                            state: State) -> Tensor:
        raise NotImplementedError

    @property
    def early_stop_kl(self) -> float:
        return float(self.cfg.target_kl)

    def step(self, params: Params, batch: Batch, state: State, differentiable: bool = False
             ) -> tuple[Params, State, dict[str, Tensor]]:
        if differentiable:
            raise NotImplementedError(f"{type(self).__name__} has no differentiable step")
        state = self.before_step(batch, state)
        new, info = self.objective_update(params, batch, state)
        return new, state, {**info, **{k: v for k, v in state.items() if k != "cost_limit"}}

    def whole_batch_terms(self, params: Params, batch: Batch, state: State) -> dict[str, Tensor]:
        """The terms of every sample, flattened to ``[N, S, ...]``, with the old policy's log-prob, mean, log-std."""
        n = batch.logp.shape[0]
        samples = batch.logp[0].numel()
        obs = batch.obs.reshape(n, samples, -1)
        with torch.no_grad():
            old_mean, old_log_std = self.actor_fn(detach(params), obs)
        terms = {k: v.detach().reshape(n, samples, *v.shape[3:]) for k, v in self.sample_terms(batch, state).items()}
        return {**terms, "obs": obs, "act": batch.act.reshape(n, samples, -1),
                "logp_old": batch.logp.reshape(n, samples).detach(), "old_mean": old_mean.detach(),
                "old_log_std": old_log_std.expand_as(old_mean).detach()}

    def evaluate(self, x: Tensor, like: Params, mb: dict[str, Tensor], state: State) -> Tensor:
        mean, log_std = self.actor_fn(unflat(x, like), mb["obs"])
        log_std = log_std.expand_as(mean)
        return self.minibatch_objective(gaussian_log_prob(mb["act"], mean, log_std), mean, log_std, mb, state)

    def objective_update(self, params: Params, batch: Batch, state: State) -> tuple[Params, dict[str, Tensor]]:
        cfg = self.cfg
        n = batch.logp.shape[0]
        samples, size, gens = self.minibatch_plan(batch)
        old = detach(params)
        terms = self.whole_batch_terms(old, batch, state)
        rows = torch.arange(n).unsqueeze(1)
        x = flat(old).clone()
        m1, m2 = torch.zeros_like(x), torch.zeros_like(x)
        active = torch.ones(n, dtype=torch.bool)
        epochs_run = torch.zeros(n)
        steps, cap, limit = 0, cfg.max_minibatches, self.early_stop_kl
        with torch.enable_grad():
            for _ in range(cfg.epochs):
                if size < samples:
                    perm = torch.stack([torch.randperm(samples, generator=g) for g in gens])
                else:
                    perm = torch.arange(samples).expand(n, samples)
                shuffled = {k: v[rows, perm] for k, v in terms.items()}
                for start in range(0, samples, size):
                    if cap and steps >= cap:
                        break
                    mb = {k: v[:, start:start + size] for k, v in shuffled.items()}
                    leaf = x.detach().requires_grad_(True)
                    (grad,) = torch.autograd.grad(self.evaluate(leaf, old, mb, state).sum(), leaf)
                    steps += 1
                    x = adam_ascent(x, grad, m1, m2, steps, cfg.lr, active, cfg.max_grad_norm)
                epochs_run += active.float()
                if limit > 0:
                    with torch.no_grad():
                        active = active & (self.mean_kl(old, unflat(x, old), batch) <= limit)
                if not bool(active.any()) or (cap and steps >= cap):
                    break
        p = unflat(x, old)
        with torch.no_grad():
            gain = self.evaluate(x, old, terms, state) - self.evaluate(flat(old), old, terms, state)
            kl = self.mean_kl(old, p, batch)
        info = {"kl": kl, "objective_gain": gain, "epochs": epochs_run,
                "early_stopped": (~active).float() if limit > 0 else torch.zeros(n)}
        return p, info


@dataclass
class P3OConfig(PPOConfig):
    kappa: float = spec(20.0, ge=0, doc="penalty factor of the exact ReLU penalty (eq. 9/10; OmniSafe's P3O kappa)")
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
class P3O(ObjectivePPOSolver):
    Config = P3OConfig

    def advantages(self, batch: Batch, state: State) -> Tensor:
        return normalize(batch.adv_r)

    def sample_terms(self, batch: Batch, state: State) -> dict[str, Tensor]:
        adv_r = normalize(batch.adv_r)
        violation = (batch.ep_constraint_cost - state["cost_limit"]).reshape(-1, 1, 1).expand_as(adv_r)
        return {"adv_r": adv_r, "adv_c": episode_cost_advantages(batch), "violation": violation}

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
