"""FOCOPS inner solver (Zhang, Vuong & Ross 2020, "First Order Constrained Optimization in Policy Space"), batched
over tasks, on the PPO base's minibatch machinery (``ppo.MinibatchSolver``: per-task minibatch Adam on the
``[N, P]`` stack, per-task KL early stop).

FOCOPS solves the KL-constrained CMDP step in the nonparametric policy space (its optimal update pi*, eq. 5) and
then projects pi* back onto the parametric policies by minimizing KL(pi_theta || pi*) with first-order steps.
Per task and inner step (Algorithm 1):
- nu (the cost multiplier): nu <- clip(nu + nu_lr * (J_C - d), 0, nu_max), projected dual ascent on the dual of
  the CMDP step (eq. 7's gradient is d - J_C, the paper's update nu - alpha (b - J_C)), before the policy
  update; J_C is ``Batch.ep_constraint_cost`` (cost shaping reaches it);
- policy: ``epochs`` passes of minibatch Adam descending (eq. 8 / Algorithm 1's loss)

      L(theta) = 1/B sum_i [ KL(pi_theta || pi_old)[s_i] - (1/lambda) r_i(theta) (A_R,i - nu A_C,i) ]
                             * 1[ KL(pi_theta || pi_old)[s_i] <= delta ],

  the indicator held fixed (no gradient through it): a sample whose state's policy already moved more than delta
  drops out of the minibatch's loss (the paper's per-state trust region; the 1/B stays the minibatch size);
  A_R and A_C standardized per task (OmniSafe's ``standardized_rew_adv`` / ``standardized_cost_adv``);
- early stop: after each pass, a task whose mean KL(pi_old || pi) on its whole batch exceeds ``target_kl``
  stops there (Algorithm 1 stops at delta; both default to 0.02, as OmniSafe's ``target_kl`` and
  ``focops_eta``), the others continue.

Defaults: lambda 1.5, delta 0.02 (OmniSafe's ``focops_lam`` / ``focops_eta`` and the paper's), nu_max 2
(OmniSafe's ``lagrangian_upper_bound``, the paper's), nu_0 = 0 and a plain projected step (the authors' code;
OmniSafe moves nu with Adam at lr 0.035 from 0.001) of nu_lr 0.05 per unit of J_C - d: the authors' 0.01 is for
MuJoCo budgets where J_C - d runs to hundreds; with d = 25 on point-circle it takes nu ~20 steps to reach its cap,
and the slow test's protocol (4 tasks, 25 steps, seed 0; tests/test_inner_p3o_focops.py) ended at a mean cost
of 27.2 > d (one task at 90.9) with 0.01, 12.6 with 0.05 and 15.8 with 0.1 (one task at 35.4), so 0.05;
lr 3e-4, minibatch 64, grad-norm clip 40, 10 passes (OmniSafe's 40 ``update_iters``; the KL early stop ends most steps sooner). Difference from
OmniSafe's FOCOPS besides nu's optimizer: it divides A_R - nu A_C by 1 + nu; here the paper's A_R - nu A_C.

nu is the state key ``lagrange``, as trpolag / ppolag's lambda: C-MAML's meta multiplier seeds it through
``inner_overrides`` (its first update clamps it into [0, nu_max]) and C-MAML's meta-gradient reads the adapted
nu from ``result.state``; a meta-test's ``eval.multipliers: inherit`` starts from it.

No differentiable step (``supports_differentiable = False``): Meta-CPO's and Meta-TRPO's outer updaters refuse it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from safemeta.algorithms.inner.base import State, normalize, output_field
from safemeta.algorithms.inner.ppo import MinibatchSolver, PPOConfig
from safemeta.algorithms.inner.trpolag import LagrangianDualAscent
from safemeta.config.schema import spec
from safemeta.registry import register_inner
from safemeta.rollout.batch import Batch
from safemeta.rollout.policy import gaussian_kl


@dataclass
class FOCOPSConfig(PPOConfig):
    target_kl: float = spec(0.02, ge=0, doc="a task stops after the pass that takes its mean KL(pi_old || pi) on the "
                                            "batch above this (Algorithm 1 stops at delta; 0: no early stop)")
    lam: float = spec(1.5, gt=0, doc="lambda, the temperature of the nonparametric update (OmniSafe's focops_lam)")
    delta: float = spec(0.02, gt=0, doc="per-state KL bound of the indicator (OmniSafe's focops_eta)")
    lagrange_init: float = spec(0.0, ge=0, doc="nu_0, the cost multiplier at the start")
    lagrange_lr: float = spec(0.05, ge=0, doc="nu's projected dual step per unit of J_C - d (the authors' nu_lr "
                                                   "is 0.01, for MuJoCo's larger episode costs; module docstring)")
    lagrange_max: float = spec(2.0, gt=0, doc="nu_max, upper clamp of nu (the paper's and OmniSafe's 2)")
    output: Literal["last", "feasible"] = output_field("last")


def focops_weights(kl: Tensor, delta: float) -> Tensor:
    """1[KL(pi_theta || pi_old)[s] <= delta] per sample, without gradient."""
    return (kl.detach() <= delta).to(kl.dtype)


def focops_loss(kl: Tensor, ratio: Tensor, adv_r: Tensor, adv_c: Tensor, nu: Tensor, lam: float,
                delta: float) -> Tensor:
    """Per sample (KL[s] - (1/lambda) r (A_R - nu A_C)) * 1[KL[s] <= delta] (eq. 8 / Algorithm 1, before the mean);
    ``nu`` broadcasts against the samples (``[N, 1]`` for ``[N, B]``)."""
    return (kl - ratio * (adv_r - nu * adv_c) / lam) * focops_weights(kl, delta)


@register_inner("focops", "FOCOPS: minibatch Adam on KL(pi||pi_old) - (1/lambda) r (A_R - nu A_C) on states with "
                           "KL <= delta, nu by dual ascent")
class FOCOPS(LagrangianDualAscent, MinibatchSolver):
    """nu's state, dual step and clamp are `LagrangianDualAscent`'s (trpolag / ppolag's lambda); the advantage is
    FOCOPS' own (A_R - nu A_C, both standardized, no 1 + nu)."""

    Config = FOCOPSConfig

    def advantages(self, batch: Batch, state: State) -> Tensor:
        return normalize(batch.adv_r) - state["lagrange"].reshape(-1, 1, 1) * normalize(batch.adv_c)

    def sample_terms(self, batch: Batch, state: State) -> dict[str, Tensor]:
        return {"adv_r": normalize(batch.adv_r), "adv_c": normalize(batch.adv_c)}

    def minibatch_objective(self, logp, mean, log_std, mb, state) -> Tensor:
        kl = gaussian_kl(mean, log_std, mb["old_mean"], mb["old_log_std"])  # KL(pi_theta || pi_old)[s], [N, B]
        ratio = torch.exp(logp - mb["logp_old"])
        nu = state["lagrange"].reshape(-1, 1).to(ratio.dtype)
        return -focops_loss(kl, ratio, mb["adv_r"], mb["adv_c"], nu, self.cfg.lam, self.cfg.delta).mean(1)
