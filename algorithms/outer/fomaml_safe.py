"""C-MAML's outer loop (Daaboul, Kuhm, Joseph, Zöllner 2024; eq. 9-14, 21-22, 28-31 and Algorithm 1 of
its appendix): first-order constrained MAML with a global safety critic, an adaptive eta and a meta lambda.

Per iteration the trainer samples M tasks; per task p the adapter starts pi'_p at pi_theta, the task's
critics at the critics' initialization (`initial_critics`: the global cost critic V_C and its reward
twin), lambda_p at the meta lambda (`inner_overrides`, for an inner solver with a multiplier such as
``trpolag``), and adapts with the inner solver; batch 0 holds the meta-policy's own rollouts, the last
batch the post-adaptation rollouts of pi'_p. Then:

- global cost critic (eq. 12): V_C is regressed on the meta-policy's rollouts across the sampled tasks
  (batch 0, all tasks pooled), from its previous value. The trainer does this for every method before the
  outer update (`safemeta.training.model.fit_meta_critics`); ``result.meta_batch`` is batch 0 annotated by it;
- meta-gradient (eq. 21 with eq. 14 / 30): the first-order (FOMAML) gradient of each task's
  post-adaptation Lagrangian, averaged over tasks, minus eta times the meta-policy's cost
  policy-gradient with V_C's advantages (the term that does not depend on pi'_p):

      g = 1/M sum_p grad_phi E_{D_p^K}[ratio * (A_R - lambda_p A_C) / (1 + lambda_p)]
          - eta * grad_theta E_{D^0}[ratio * A_C^{V_C}]

  (A_R standardized, A_C centered, the TRPOLag advantage; lambda_p is the task's multiplier after
  adaptation, or the meta lambda for an inner solver without one);
- the meta step: ``step: optimizer`` (SGD/Adam with the meta learning rate) or ``trust_region`` (the
  natural-gradient step of KL radius ``max_kl`` in the meta-policy's Fisher metric on batch 0);
- meta lambda (eq. 22): lambda <- clip(lambda + lr_lambda * (1/M sum_p J_C(pi'_p) - d), 0, lagrange_max),
  J_C the measured undiscounted episode cost of the adapted policies; ``lagrange_max`` (default 100, as
  ``trpolag``'s cap on each task's lambda) keeps the meta lambda in the range the task multipliers it
  starts may take;
- eta (eq. 31): eta <- max(0, eta + lr_eta * (S - d)), S the meta-policy's cost in the units of d
  (``eta_signal``, below).

The eta signal (``eta_signal``). Eq. 31 compares E_{s_0}[V_C(s_0)] with d. Here d is an *undiscounted*
episode budget (what every inner solver and the meta lambda compare with it), while V_C estimates the
*discounted* cost-to-go (``critic.cost_gamma``, bootstrapped at time-limit truncations, so an
infinite-horizon value). The two are not in the same units: on point-goal level 2 the initial policy pays
13.55 per episode against d = 5 while V_C(s_0) is 0.40, so eta never left 0 and C-MAML ran as its own
ablation. The options:

- ``episode_cost`` (default): S = 1/M sum_p J_C(pi_theta) on task p, the meta-policy's measured
  undiscounted episode (constraint) cost on batch 0. It is the quantity d budgets, measured on rollouts
  the method collects anyway, unbiased, and independent of how well V_C fits or where in an episode the
  cost falls; it is the same kind of number the meta lambda (eq. 22) uses for the adapted policies.
- ``critic_episode``: the paper's mechanism (the safety critic's estimate) in episode units:
  S = E[V_C(s_0)] * (1 - gamma_c) * H, H the meta-policy's mean episode length on batch 0.
  (1 - gamma_c) V_C(s_0) is the per-step cost rate V_C implies at s_0 (exact for a constant rate: V_C is
  the infinite-horizon discounted sum, weight 1 / (1 - gamma_c)), times H steps. It still underestimates a
  policy whose cost comes late in long episodes (weights gamma_c^t) and inherits V_C's fit error;
  cost_gamma = 1 takes V_C(s_0) as it is.
- ``critic_discounted``: the paper's eq. 31 as written, E[V_C(s_0)] against d (the behaviour before issue 18).

The ablations:

- ``adaptive_eta: false`` (issue 7's reading of the paper's ablation): eta = 0 and no safety-critic term in
  the meta-gradient; V_C is still fitted and still starts every task's cost critic.
- ``safety_critic: false`` (the paper's "without safety critic" ablation): eta = 0, no safety-critic term, and
  every task's cost critic starts from one fixed random init (``initial_critics``) instead of the carried
  V_C, in meta-training and in a meta-test that inherits the critics. The reward critics keep the
  framework's carried initialization (the ablation removes the *safety* critic only). The fixed init is
  drawn once from the run's seed on a forked RNG, so it needs no checkpoint and leaves the run's random
  streams untouched; a task's critic is fitted from it on the task's own rollouts as in the full method.
  The trainer still fits V_C for every method (`fit_meta_critics`, a framework rule): in this ablation
  nothing reads it (``meta/V_C`` is logged as a diagnostic only).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from safemeta.training.adaptation import AdaptationResult
from safemeta.algorithms.inner.base import normalize
from safemeta.algorithms.inner.natural_gradient import flat_grad
from safemeta.algorithms.inner.trpolag import lagrangian_advantages
from safemeta.algorithms.outer.base import OuterContext
from safemeta.algorithms.outer.fomaml import FOMAML, first_order_meta_gradient
from safemeta.algorithms.outer.meta_optimizer import MetaOptimizerConfig, ascend, meta_fisher_solve
from safemeta.rollout.batch import Batch
from safemeta.config.schema import spec
from safemeta.rollout.critics import CriticParams, Critics
from safemeta.rollout.params import Params, flat, stack, unflat
from safemeta.rollout.policy import Critic, init_params
from safemeta.registry import register_outer
from safemeta.rollout.task import Task

FRESH_COST_CRITIC_SEED_OFFSET = 104729  # the ablation's fixed random cost-critic init, apart from the run's seed


@dataclass
class FOMAMLSafeConfig(MetaOptimizerConfig):
    step: Literal["optimizer", "trust_region"] = "optimizer"
    max_kl: float = spec(0.01, gt=0, doc="KL radius of the trust_region meta step")
    cg_iters: int = spec(10, ge=1)
    cg_damping: float = spec(0.1, ge=0)
    lagrange_init: float = spec(0.0, ge=0, doc="meta lambda at the start")
    lagrange_lr: float = spec(0.05, ge=0, doc="step size of the meta lambda (eq. 22)")
    lagrange_max: float = spec(100.0, gt=0, doc="upper clamp of the meta lambda (trpolag's cap on a task's lambda)")
    safety_critic: bool = spec(True, doc="false: the paper's 'without safety critic' ablation: eta = 0, no "
                                         "safety-critic term, task cost critics start from a fixed random init")
    adaptive_eta: bool = spec(True, doc="false: eta = 0 and no safety-critic term; V_C still seeds the task cost "
                                        "critics (Figure 3 ablation)")
    eta_signal: Literal["episode_cost", "critic_episode", "critic_discounted"] = spec(
        "episode_cost", doc="the meta-policy's cost eta compares with d (eq. 31): its measured undiscounted episode "
                            "cost on batch 0, V_C(s0) in episode units, or V_C(s0) as is (discounted)")
    eta_init: float = spec(0.0, ge=0)
    eta_lr: float = spec(0.01, ge=0, doc="step size of eta (eq. 31)")


def dual_step(value: float, violation: float, lr: float, upper: float = math.inf) -> float:
    """Projected gradient ascent of a multiplier: clip(value + lr * violation, 0, upper) (eq. 22, 31)."""
    return min(upper, max(0.0, value + lr * violation))


def lagrangian_meta_gradient(result: AdaptationResult, surrogate, lagrange: Tensor) -> Tensor:
    """1/M sum_p grad_phi of the post-adaptation Lagrangian surrogate at phi_p (eq. 21), ``[1, P]``."""
    batch = result.batches[-1]
    adv = lagrangian_advantages(batch, lagrange).detach()
    return flat(stack(first_order_meta_gradient(result, lambda phi: surrogate(phi, batch, adv)), 1))


def random_critic_init(critics: Critics, seed: int) -> Params:
    """A fresh critic of ``critics``' architecture (unstacked), drawn from ``seed`` off the global RNG stream."""
    obs_dim = next(m for m in critics.module.modules() if isinstance(m, nn.Linear)).in_features
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return init_params(Critic(obs_dim, critics.cfg.hidden_sizes, critics.cfg.activation))


@register_outer("fomaml_safe", "C-MAML: first-order MAML on the post-adaptation Lagrangian with a global safety critic")
class FOMAMLSafe(FOMAML):
    """FOMAML's meta optimizer and its checkpointed state, plus the safety pieces of the module docstring."""

    Config = FOMAMLSafeConfig

    def __init__(self, cfg: FOMAMLSafeConfig, ctx: OuterContext):
        super().__init__(cfg, ctx)
        self.lagrange = min(float(cfg.lagrange_init), float(cfg.lagrange_max))
        self.uses_eta = cfg.adaptive_eta and cfg.safety_critic
        self.eta = float(cfg.eta_init) if self.uses_eta else 0.0
        self.inner_has_lagrange = "lagrange" in ctx.inner.default_state(1)
        self.fresh_cost_critic = None if cfg.safety_critic else random_critic_init(
            ctx.critics, ctx.cfg.seed + FRESH_COST_CRITIC_SEED_OFFSET)
        self.cost_gamma = float(ctx.critics.cfg.cost_gamma)

    def inner_overrides(self, tasks: list[Task]) -> dict[str, Tensor]:
        return {"lagrange": torch.tensor(self.lagrange, device=self.ctx.inner.device)} if self.inner_has_lagrange else {}

    def inherited_state(self, tasks: list[Task]) -> dict[str, Tensor]:
        """The meta lambda, for any fine-tuning solver with a multiplier (not only the run's own)."""
        return {"lagrange": torch.tensor(self.lagrange, device=self.ctx.inner.device)}

    def initial_critics(self, n_tasks: int) -> CriticParams:
        """The carried V_R and V_C; without the safety critic, V_C's place is taken by the fixed random init."""
        carried = super().initial_critics(n_tasks)
        if self.fresh_cost_critic is None:
            return carried
        return CriticParams(carried.reward, {k: v.clone() for k, v in stack(self.fresh_cost_critic, n_tasks).items()})

    def safety_gradient(self, meta_batch: Batch) -> Tensor:
        """grad_theta E_{D^0}[ratio * A_C^{V_C}] of the meta-policy on its pooled rollouts, ``[1, P]``."""
        theta1 = {k: v.detach().unsqueeze(0).requires_grad_(True) for k, v in self.ctx.meta.theta.items()}
        adv_c = normalize(meta_batch.adv_c, center_only=True)
        return flat_grad(self.ctx.inner.surrogate(theta1, meta_batch, adv_c).sum(), theta1)

    def meta_gradient(self, result: AdaptationResult, meta_batch: Batch) -> Tensor:
        """g of eq. 21 minus eta times the safety critic's term (eq. 14 / 30), ``[1, P]``."""
        n = result.batches[-1].n_tasks
        lagrange = result.state["lagrange"] if self.inner_has_lagrange else \
            torch.full((n,), self.lagrange, device=result.batches[-1].rew.device)
        grad = lagrangian_meta_gradient(result, self.ctx.inner.surrogate, lagrange)
        if self.uses_eta and self.eta > 0:
            grad = grad - self.eta * self.safety_gradient(meta_batch)
        return grad

    def initial_cost_value(self, meta_batch: Batch) -> float:
        """E[V_C(s_0)] over the meta-policy's initial states on batch 0 (discounted units)."""
        with torch.no_grad():
            return float(self.ctx.critics.values(stack(self.ctx.meta.critic_cost, 1), meta_batch.obs[:, :1]).mean())

    def eta_signal(self, result: AdaptationResult, meta_batch: Batch, v_c0: float) -> float:
        """The meta-policy's cost that eq. 31 compares with d, in the units of ``cfg.eta_signal``."""
        kind = self.cfg.eta_signal
        if kind == "episode_cost":
            return float(result.batches[0].ep_constraint_cost.mean())
        if kind == "critic_discounted" or self.cost_gamma >= 1.0:
            return v_c0
        horizon = meta_batch.env_steps / max(float(meta_batch.ep_count.sum()), 1.0)  # steps per finished episode
        return v_c0 * (1.0 - self.cost_gamma) * horizon

    def update(self, result: AdaptationResult, tasks: list[Task]) -> dict[str, float]:
        cfg, meta = self.cfg, self.ctx.meta
        meta_batch = result.meta_batch  # pooled batch 0, annotated by the fitted V_C (eq. 12)
        grad = self.meta_gradient(result, meta_batch)
        theta1 = {k: v.detach().unsqueeze(0) for k, v in meta.theta.items()}
        if cfg.step == "trust_region":
            direction = meta_fisher_solve(self.ctx.inner, theta1, meta_batch, cfg.cg_damping, cfg.cg_iters)(grad)
            scale = torch.sqrt(2 * cfg.max_kl / (grad * direction).sum().clamp(min=1e-12))
            with torch.no_grad():
                for k, p in meta.theta.items():
                    p.add_(unflat(scale * direction, theta1)[k][0])
            norm = float(grad.norm())
        else:
            norm = ascend(self.opt, meta.theta, {k: v[0] for k, v in unflat(grad, theta1).items()})
        d = float(result.state["cost_limit"].mean())
        post_cost = float(result.batches[-1].ep_constraint_cost.mean())
        v_c0 = self.initial_cost_value(meta_batch)
        signal = self.eta_signal(result, meta_batch, v_c0)
        self.lagrange = dual_step(self.lagrange, post_cost - d, cfg.lagrange_lr, cfg.lagrange_max)
        if self.uses_eta:
            self.eta = dual_step(self.eta, signal - d, cfg.eta_lr)
        return {"meta_grad_norm": norm, "meta/lagrange": self.lagrange, "meta/eta": self.eta,
                "meta/eta_signal": signal, "meta/V_C": v_c0, "meta/post_cost": post_cost,
                "meta/cost_0": float(result.batches[0].ep_constraint_cost.mean())}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "lagrange": self.lagrange, "eta": self.eta}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.lagrange, self.eta = state["lagrange"], state["eta"]
