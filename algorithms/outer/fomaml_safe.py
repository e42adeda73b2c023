"""C-MAML's outer loop (Daaboul, Kuhm, Joseph, Zöllner 2024; eq. 9-14, 21-22, 28-31 and Algorithm 1 of
its appendix): first-order constrained MAML with a global safety critic, an adaptive eta and a meta lambda.

Per iteration the trainer samples M tasks; per task p the adapter starts pi'_p at pi_theta, the task's
critics at the critics' initialization (`initial_critics`: the global cost critic V_C and its reward
twin), lambda_p at the meta lambda (`inner_overrides`, for an inner solver with a multiplier such as
``trpolag``), and adapts with the inner solver; batch 0 holds the meta-policy's own rollouts, the last
batch the post-adaptation rollouts of pi'_p. Then:

- global cost critic (eq. 12): V_C is regressed on the meta-policy's rollouts across the sampled tasks
  (batch 0, all tasks pooled), from its previous value. The trainer does this for every method before the
  outer update (`safemeta.model.fit_meta_critics`); ``result.meta_batch`` is batch 0 annotated by it;
- meta-gradient (eq. 21 with eq. 14 / 30): the first-order (FOMAML) gradient of each task's
  post-adaptation Lagrangian, averaged over tasks, minus eta times the meta-policy's cost
  policy-gradient with V_C's advantages (the term that does not depend on pi'_p):

      g = 1/M sum_p grad_phi E_{D_p^K}[ratio * (A_R - lambda_p A_C) / (1 + lambda_p)]
          - eta * grad_theta E_{D^0}[ratio * A_C^{V_C}]

  (A_R standardized, A_C centered, the TRPOLag advantage; lambda_p is the task's multiplier after
  adaptation, or the meta lambda for an inner solver without one);
- the meta step: ``step: optimizer`` (SGD/Adam with the meta learning rate) or ``trust_region`` (the
  natural-gradient step of KL radius ``max_kl`` in the meta-policy's Fisher metric on batch 0);
- meta lambda (eq. 22): lambda <- max(0, lambda + lr_lambda * (1/M sum_p J_C(pi'_p) - d));
- eta (eq. 31): eta <- max(0, eta + lr_eta * (E_{s_0}[V_C(s_0)] - d)), V_C at the meta-policy's initial
  states. V_C estimates the *discounted* cost (``critic.cost_gamma``) and is compared with d as in the
  paper; with cost_gamma < 1 this is a looser test than J_C <= d.

``adaptive_eta: false`` fixes eta at 0 and drops the safety critic's term (the paper's Figure 3 ablation).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from safemeta.adaptation import AdaptationResult
from safemeta.algorithms.inner.base import normalize
from safemeta.algorithms.inner.natural_gradient import flat_grad
from safemeta.algorithms.inner.trpolag import lagrangian_advantages
from safemeta.algorithms.outer.base import OuterContext
from safemeta.algorithms.outer.fomaml import FOMAML, first_order_meta_gradient
from safemeta.algorithms.outer.meta_optimizer import MetaOptimizerConfig, ascend, meta_fisher_solve
from safemeta.batch import Batch
from safemeta.config.schema import spec
from safemeta.params import flat, stack, unflat
from safemeta.registry import register_outer
from safemeta.task import Task


@dataclass
class FOMAMLSafeConfig(MetaOptimizerConfig):
    step: Literal["optimizer", "trust_region"] = "optimizer"
    max_kl: float = spec(0.01, gt=0, doc="KL radius of the trust_region meta step")
    cg_iters: int = spec(10, ge=1)
    cg_damping: float = spec(0.1, ge=0)
    lagrange_init: float = spec(0.0, ge=0, doc="meta lambda at the start")
    lagrange_lr: float = spec(0.05, ge=0, doc="step size of the meta lambda (eq. 22)")
    adaptive_eta: bool = spec(True, doc="false: eta = 0 and no safety-critic term (Figure 3 ablation)")
    eta_init: float = spec(0.0, ge=0)
    eta_lr: float = spec(0.01, ge=0, doc="step size of eta (eq. 31)")


def dual_step(value: float, violation: float, lr: float) -> float:
    """Projected gradient ascent of a multiplier: max(0, value + lr * violation) (eq. 22, 31)."""
    return max(0.0, value + lr * violation)


def lagrangian_meta_gradient(result: AdaptationResult, surrogate, lagrange: Tensor) -> Tensor:
    """1/M sum_p grad_phi of the post-adaptation Lagrangian surrogate at phi_p (eq. 21), ``[1, P]``."""
    batch = result.batches[-1]
    adv = lagrangian_advantages(batch, lagrange).detach()
    return flat(stack(first_order_meta_gradient(result, lambda phi: surrogate(phi, batch, adv)), 1))


@register_outer("fomaml_safe", "C-MAML: first-order MAML on the post-adaptation Lagrangian with a global safety critic")
class FOMAMLSafe(FOMAML):
    """FOMAML's meta optimizer and its checkpointed state, plus the safety pieces of the module docstring."""

    Config = FOMAMLSafeConfig

    def __init__(self, cfg: FOMAMLSafeConfig, ctx: OuterContext):
        super().__init__(cfg, ctx)
        self.lagrange = float(cfg.lagrange_init)
        self.eta = float(cfg.eta_init) if cfg.adaptive_eta else 0.0
        self.inner_has_lagrange = "lagrange" in ctx.inner.default_state(1)

    def inner_overrides(self, tasks: list[Task]) -> dict[str, Tensor]:
        return {"lagrange": torch.tensor(self.lagrange)} if self.inner_has_lagrange else {}

    def inherited_state(self, tasks: list[Task]) -> dict[str, Tensor]:
        """The meta lambda, for any fine-tuning solver with a multiplier (not only the run's own)."""
        return {"lagrange": torch.tensor(self.lagrange)}

    def safety_gradient(self, meta_batch: Batch) -> Tensor:
        """grad_theta E_{D^0}[ratio * A_C^{V_C}] of the meta-policy on its pooled rollouts, ``[1, P]``."""
        theta1 = {k: v.detach().unsqueeze(0).requires_grad_(True) for k, v in self.ctx.meta.theta.items()}
        adv_c = normalize(meta_batch.adv_c, center_only=True)
        return flat_grad(self.ctx.inner.surrogate(theta1, meta_batch, adv_c).sum(), theta1)

    def meta_gradient(self, result: AdaptationResult, meta_batch: Batch) -> Tensor:
        """g of eq. 21 minus eta times the safety critic's term (eq. 14 / 30), ``[1, P]``."""
        n = result.batches[-1].n_tasks
        lagrange = result.state["lagrange"] if self.inner_has_lagrange else torch.full((n,), self.lagrange)
        grad = lagrangian_meta_gradient(result, self.ctx.inner.surrogate, lagrange)
        if self.cfg.adaptive_eta and self.eta > 0:
            grad = grad - self.eta * self.safety_gradient(meta_batch)
        return grad

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
        with torch.no_grad():
            v_c0 = float(self.ctx.critics.values(stack(meta.critic_cost, 1), meta_batch.obs[:, :1]).mean())
        self.lagrange = dual_step(self.lagrange, post_cost - d, cfg.lagrange_lr)
        if cfg.adaptive_eta:
            self.eta = dual_step(self.eta, v_c0 - d, cfg.eta_lr)
        return {"meta_grad_norm": norm, "meta/lagrange": self.lagrange, "meta/eta": self.eta,
                "meta/V_C": v_c0, "meta/post_cost": post_cost}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "lagrange": self.lagrange, "eta": self.eta}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.lagrange, self.eta = state["lagrange"], state["eta"]
