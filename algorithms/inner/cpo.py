"""CPO inner solver (Achiam et al. 2017; Meta-CPO, Cho & Sun 2024, eq. 3, 4, 9), batched over tasks.

Per task, from the batch:
- g = grad of the reward surrogate E[ratio * A_R] (A_R standardized);
- a = grad of the per-episode cost surrogate L * E[ratio * A_C] (A_C centered; L = env steps per finished
  episode, so that a^T x is a change of the episode cost J_C, in the units of b; ``cost_gradient: step``
  drops L, as OmniSafe's CPO does, whose linearized constraint is then L times steeper);
- b = J_C - d, the batch's mean episode cost minus the task's cost limit;
- with ``constraint: discounted`` (CPO's and Meta-CPO's eq. 3 form) J_C is instead the discounted cost
  return from the start states, the mean over finished episodes of sum_t gamma_c^t c_t (gamma_c =
  ``cost_gamma``, = ``critic.cost_gamma``), and a the gradient of 1/#episodes sum_t gamma_c^t ratio_t A_C,t
  (centered), the policy gradient of that J_C in its units (`constraint_terms`). The default ``episode``
  constrains what the meta-tests and boards score against d; at gamma_c = 0.99 a cost at step 500 weighs
  0.007 in the discounted J_C, so on the 500-1000-step horizons a policy can meet a discounted budget d
  while its episode cost is far above d;
then the step x* of ``cpo_step.solve_cpo`` (all cases, recovery step of eq. 4 when infeasible) in the
metric H = Fisher matrix (conjugate gradient with Fisher-vector products) or the identity
(``metric: euclidean``, as the Meta-CPO code), followed by a backtracking line search that accepts the
largest fraction of x* with KL <= delta (Fisher metric), a cost-surrogate change <= max(-b, 0) and, except
for a recovery step, a reward surrogate that does not decrease.

``step(..., differentiable=True)`` keeps the graph from the new parameters back to the old ones, through
g, a, b's surrogates (second order) and the subproblem's solution, by one of three backends (Meta-CPO
eq. 9-11): ``analytic`` (the closed form differentiated by autograd; Fisher metric through CG, whose
solves H^-1 g, H^-1 a are differentiated implicitly (``cg_grad: implicit``, the default: exact for a converged
CG, no graph through its iterations) or by backpropagating through the iterations (``unrolled``); the path
that scales), ``cvxpylayers`` (the paper's convex layer, DPP form) and ``qpth`` (a batched QP with the
trust region in Lagrangian form, lambda* from the dual). The layer backends use the Euclidean metric and
take the closed-form recovery step on infeasible tasks instead of calling a solver that would fail.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from safemeta.algorithms.inner.base import (InnerSolver, State, episode_cost_advantages, fvp_subsample_field, normalize,
                                           output_field)
from safemeta.algorithms.inner.cpo_backends import solve_with_backend
from safemeta.algorithms.inner.cpo_step import solve_cpo
from safemeta.algorithms.inner.natural_gradient import (backtracking_line_search, conjugate_gradient,
                                                        flat_grad, implicit_solve)
from safemeta.rollout.batch import Batch
from safemeta.config.schema import spec
from safemeta.errors import UserError
from safemeta.rollout.params import Params, add, detach, unflat
from safemeta.registry import register_inner


@dataclass
class CPOConfig:
    max_kl: float = spec(0.01, gt=0, doc="delta, the trust-region radius")
    metric: Literal["fisher", "euclidean"] = "fisher"
    backend: Literal["analytic", "cvxpylayers", "qpth"] = "analytic"
    cg_iters: int = spec(10, ge=1)
    cg_damping: float = spec(0.1, ge=0)
    cg_grad: Literal["implicit", "unrolled"] = spec("implicit", doc="differentiable Fisher steps: H^-1 v by the "
                                                    "implicit function theorem, or backprop through the CG iterations")
    backtrack_decay: float = spec(0.8, gt=0, lt=1)
    max_backtracks: int = spec(15, ge=1)
    fvp_subsample: int = fvp_subsample_field()
    cost_gradient: Literal["episode", "step"] = spec(
        "episode", doc="units of a: 'episode' scales the cost surrogate by env steps per episode so that a^T x is a "
        "change of J_C, in the units of b (eq. 3); 'step' leaves it per step, as OmniSafe's CPO does "
        "(for cross-checks)")
    output: Literal["last", "feasible"] = output_field("last")
    constraint: Literal["episode", "discounted"] = spec(
        "episode", doc="what J_C in b = J_C - d is: 'episode', the undiscounted episode cost (what meta-tests score "
        "against d); 'discounted', the discounted cost return from the start states, sum_t cost_gamma^t c_t, as "
        "CPO and Meta-CPO's eq. 3 write it (a then in the same units); Meta-CPO's meta constraint follows it")
    cost_gamma: float = spec(0.99, ge=0, le=1, doc="gamma_c of constraint 'discounted'; keep it equal to "
                             "critic.cost_gamma, the discount of the cost advantages (dco_cpo refuses a mismatch)")


def discounted_cost_advantages(batch: Batch, gamma: float) -> Tensor:
    """``[N, T, E]``: gamma^t A_C (t the step's index in its episode), centered, times env steps per finished
    episode. The surrogate E[ratio * this] is then 1/#episodes sum over steps of gamma^t ratio A_C (minus a
    constant, so 0 at the sampling policy, as b's surrogate must be), whose gradient is the policy gradient of
    the discounted J_C = E[sum_t gamma^t c_t] from the start states, in its units."""
    steps_per_episode = batch.rew[0].numel() / batch.ep_count.clamp(min=1)
    discount = torch.pow(torch.as_tensor(gamma, dtype=batch.adv_c.dtype), batch.step_in_episode.to(batch.adv_c.dtype))
    return normalize(batch.adv_c * discount, center_only=True) * steps_per_episode.reshape(-1, 1, 1)


def constraint_terms(batch: Batch, constraint: str = "episode", cost_gamma: float | None = None
                     ) -> tuple[Tensor, Tensor]:
    """(J_C ``[N]``, cost advantages ``[N, T, E]``) of a constraint b = J_C - d + E[ratio * A]: the episode
    cost with `episode_cost_advantages`, or (``discounted``) the discounted cost return from the start states
    with `discounted_cost_advantages`. Both pairs have the surrogate's gradient in the units of J_C."""
    if constraint == "episode":
        return batch.ep_constraint_cost, episode_cost_advantages(batch)
    if constraint != "discounted" or cost_gamma is None:
        raise ValueError(f"constraint '{constraint}' (episode, or discounted with a cost_gamma)")
    return batch.ep_discounted_constraint_cost(cost_gamma), discounted_cost_advantages(batch, cost_gamma)


@register_inner("cpo", "CPO: reward step in a trust region under a linearized cost constraint, recovery when infeasible")
class CPO(InnerSolver):
    Config = CPOConfig
    supports_differentiable = True

    def __init__(self, cfg: CPOConfig, actor):
        super().__init__(cfg, actor)
        if cfg.backend != "analytic" and cfg.metric != "euclidean":
            raise UserError(f"inner_cfg.cpo.backend '{cfg.backend}' solves the subproblem with the Euclidean metric "
                            "only (it would need the dense Fisher matrix); set inner_cfg.cpo.metric=euclidean, "
                            "or use backend analytic for the Fisher metric.")
        if cfg.constraint == "discounted" and cfg.cost_gradient == "step":
            raise UserError("inner_cfg.cpo.cost_gradient 'step' applies to constraint 'episode' only; the discounted "
                            "constraint's cost gradient is in its own units. Set inner_cfg.cpo.cost_gradient=episode.")

    def advantages(self, batch: Batch, state: State) -> Tensor:
        return normalize(batch.adv_r)

    def step(self, params: Params, batch: Batch, state: State, differentiable: bool = False
             ) -> tuple[Params, State, dict[str, Tensor]]:
        cfg = self.cfg
        adv_r = self.advantages(batch, state).detach()
        j_c, adv_c = constraint_terms(batch, cfg.constraint, cfg.cost_gamma)
        if cfg.cost_gradient == "step":
            adv_c = normalize(batch.adv_c, center_only=True)
        adv_c = adv_c.detach()
        p = params if differentiable else {k: v.requires_grad_(True) for k, v in detach(params).items()}
        old = detach(params)
        dist = self.policy_on(p, batch)
        old_dist = tuple(v.detach() for v in dist)  # pi_old on the batch, for every KL below
        if differentiable:  # two passes: the meta-gradient then sums the two paths at the parameters, as it always has
            surr_r, surr_c = self.surrogate(p, batch, adv_r, dist), self.surrogate(p, batch, adv_c)
        else:
            surr_r, surr_c = self.surrogates(p, batch, adv_r, adv_c, dist=dist)
        g = flat_grad(surr_r.sum(), p, create_graph=differentiable, retain_graph=True)
        a = flat_grad(surr_c.sum(), p, create_graph=differentiable, retain_graph=differentiable)
        # b(phi) = J_C - d + L_C(phi): its value is J_C - d at the sampling policy (the centered surrogate is
        # 0 there) and its gradient is a, so a differentiable step sees how b moves with the local parameters
        b = (j_c - state["cost_limit"]).to(g.dtype) + \
            (surr_c if differentiable else surr_c.detach())
        if cfg.metric == "fisher":
            fisher = self.fisher_batch(batch)

            def make_fvp(q: Params, create_graph: bool):
                return self.fisher_product(q, fisher, cfg.cg_damping, create_graph)

            if differentiable and cfg.cg_grad == "implicit":
                hinv_g, hinv_a = (implicit_solve(make_fvp, p, v, cfg.cg_iters) for v in (g, a))
            else:
                fvp = make_fvp(p, differentiable)
                hinv_g, hinv_a = conjugate_gradient(fvp, g, cfg.cg_iters), conjugate_gradient(fvp, a, cfg.cg_iters)
        else:
            hinv_g, hinv_a = g, a
        sol = solve_cpo(g, a, b, hinv_g, hinv_a, cfg.max_kl)
        x = solve_with_backend(cfg.backend, g, a, b, sol, cfg.max_kl) if differentiable else sol.step.detach()
        surr_r0, surr_c0 = surr_r.detach(), surr_c.detach()
        recovery = sol.case == 0
        allowed_cost_change = torch.clamp(-b.detach(), min=0.0)

        def accept(cand: Params) -> Tensor:
            kl, surr_r1, surr_c1 = self.trial(old_dist, cand, batch, adv_r, adv_c)
            ok = (surr_c1 - surr_c0 <= allowed_cost_change) & (recovery | (surr_r1 >= surr_r0))
            if cfg.metric == "fisher":
                ok &= kl <= cfg.max_kl
            return ok

        _, frac, accepted = backtracking_line_search(old, x.detach(), accept, cfg.backtrack_decay, cfg.max_backtracks)
        new = add(p if differentiable else old, unflat(x, old), frac.to(x.dtype))
        with torch.no_grad():
            kl = self.mean_kl(old, new, batch, old_dist=old_dist)
        info = {"kl": kl, "case": sol.case.float(), "step_fraction": frac, "accepted": accepted.float(),
                "constraint_value": b.detach(), "lagrange_trust": sol.lagrange_trust.detach(),
                "lagrange_cost": sol.lagrange_cost.detach()}
        return new, state, info
