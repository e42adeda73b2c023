"""TRPO inner solver (Schulman et al. 2015), batched over tasks.

Per task i (eq. numbers of the TRPO paper):
- surrogate L_i(theta) = E[ pi_theta(a|s) / pi_old(a|s) * A_i ]                           (eq. 14)
- g_i = grad L_i at theta_old; x_i = F_i^{-1} g_i by conjugate gradient, F_i the Hessian of the
  mean KL (the Fisher matrix), with damping                                                 (App. C)
- full step s_i = sqrt(2 delta / x_i^T F_i x_i) x_i, then backtracking until
  KL(pi_old || pi_new) <= delta and L_i improves                                            (App. C)
A = standardized GAE of reward. Unconstrained: the cost is ignored (the baselines `fomaml_trpo`, `meta_trpo`).

``TRPO.step(..., differentiable=True)`` (for Meta-TRPO, `outer.dco_trpo`) keeps the graph from the new
parameters back to the old ones: g_i second order, x_i = F_i^-1 g_i differentiated implicitly (F_i depends
on theta_old through both arguments of the KL; `implicit_solve`), beta_i through x_i^T F_i x_i, and
theta_new = theta_old + f_i beta_i x_i with the line search's fraction f_i held constant (it is piecewise
constant in theta_old). Its values are the non-differentiable step's. TRPOLag keeps the plain step only.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from safemeta.algorithms.inner.base import InnerSolver, State, fvp_subsample_field, normalize
from safemeta.algorithms.inner.natural_gradient import (backtracking_line_search, conjugate_gradient,
                                                        flat_grad, implicit_solve)
from safemeta.rollout.batch import Batch
from safemeta.config.schema import spec
from safemeta.rollout.params import Params, add, detach, unflat
from safemeta.registry import register_inner


@dataclass
class TRPOConfig:
    max_kl: float = spec(0.01, gt=0, doc="delta, the trust-region radius in mean KL")
    cg_iters: int = spec(10, ge=1)
    cg_damping: float = spec(0.1, ge=0)
    backtrack_decay: float = spec(0.8, gt=0, lt=1)
    max_backtracks: int = spec(15, ge=1)
    fvp_subsample: int = fvp_subsample_field()


class TrustRegionSolver(InnerSolver):
    """The TRPO update on ``self.advantages``; subclasses change the advantage and the state."""

    def step(self, params: Params, batch: Batch, state: State, differentiable: bool = False
             ) -> tuple[Params, State, dict[str, Tensor]]:
        if differentiable:
            if not self.supports_differentiable:
                raise NotImplementedError(f"{type(self).__name__} has no differentiable step")
            return self.differentiable_step(params, batch, state)
        state = self.before_step(batch, state)
        adv = self.advantages(batch, state).detach()
        old = detach(params)
        p = {k: v.requires_grad_(True) for k, v in detach(params).items()}
        dist = self.policy_on(p, batch)
        old_dist = tuple(v.detach() for v in dist)  # pi_old on the batch, for every KL below
        surr_old = self.surrogate(p, batch, adv, dist)
        g = flat_grad(surr_old.sum(), p)
        surr_old = surr_old.detach()
        fisher = self.fisher_batch(batch)
        fvp = self.fisher_product(old, fisher, self.cfg.cg_damping)
        x = conjugate_gradient(fvp, g, self.cfg.cg_iters)
        xfx = (x * fvp(x)).sum(-1).clamp(min=1e-12)
        beta = torch.sqrt(2 * self.cfg.max_kl / xfx)
        full_step = (beta.unsqueeze(-1) * x).detach()

        def accept(cand: Params) -> Tensor:
            kl, surr = self.trial(old_dist, cand, batch, adv)
            return (kl <= self.cfg.max_kl) & (surr > surr_old)

        new, frac, ok = backtracking_line_search(old, full_step, accept, self.cfg.backtrack_decay,
                                                 self.cfg.max_backtracks)
        with torch.no_grad():
            kl, surr = self.trial(old_dist, new, batch, adv)
            improve = surr - surr_old
        info = {"kl": kl, "surrogate_gain": improve, "step_fraction": frac, "accepted": ok.float(),
                **{k: v for k, v in state.items() if k != "cost_limit"}}
        return new, state, info

    def differentiable_step(self, params: Params, batch: Batch, state: State
                            ) -> tuple[Params, State, dict[str, Tensor]]:
        """The same step with the graph kept to ``params`` (module docstring)."""
        cfg = self.cfg
        state = self.before_step(batch, state)
        adv = self.advantages(batch, state).detach()
        old, p = detach(params), params
        dist = self.policy_on(p, batch)
        old_dist = tuple(v.detach() for v in dist)
        surr = self.surrogate(p, batch, adv, dist)
        g = flat_grad(surr.sum(), p, create_graph=True)
        surr_old = surr.detach()
        fisher = self.fisher_batch(batch)

        def make_fvp(q: Params, create_graph: bool):
            return self.fisher_product(q, fisher, cfg.cg_damping, create_graph)

        x = implicit_solve(make_fvp, p, g, cfg.cg_iters)
        xfx = (x * make_fvp(p, True)(x)).sum(-1).clamp(min=1e-12)
        step = torch.sqrt(2 * cfg.max_kl / xfx).unsqueeze(-1) * x

        def accept(cand: Params) -> Tensor:
            kl, surr = self.trial(old_dist, cand, batch, adv)
            return (kl <= cfg.max_kl) & (surr > surr_old)

        searched, frac, ok = backtracking_line_search(old, step.detach(), accept, cfg.backtrack_decay,
                                                      cfg.max_backtracks)
        # the graph of theta_old + f beta x; the values are the line search's own candidate (f is stored in
        # float32, which would move a float64 step by ~1e-8 after a backtrack)
        moved = add(p, unflat(step, old), frac.to(step.dtype))
        new = {k: searched[k] + (v - v.detach()) for k, v in moved.items()}
        with torch.no_grad():
            kl, surr = self.trial(old_dist, new, batch, adv)
            improve = surr - surr_old
        info = {"kl": kl, "surrogate_gain": improve, "step_fraction": frac, "accepted": ok.float(),
                **{k: v for k, v in state.items() if k != "cost_limit"}}
        return new, state, info

    def before_step(self, batch: Batch, state: State) -> State:
        return state


@register_inner("trpo", "TRPO: natural gradient + KL trust region on the reward (unconstrained)")
class TRPO(TrustRegionSolver):
    Config = TRPOConfig
    supports_differentiable = True

    def advantages(self, batch: Batch, state: State) -> Tensor:
        return normalize(batch.adv_r)
