"""Meta-CPO's outer loop (Cho & Sun, AAAI-24, eq. 9-12 and Algorithm 1): meta-gradients through K
differentiable CPO steps, and a meta step that is itself a CPO step with a meta-level safety constraint.

Per iteration the trainer samples M fresh training tasks and the adapter runs, for every task p, K local
CPO steps (eq. 9) from a copy of theta, phi_p^0 = theta, each on fresh rollouts D_p^k of phi_p^k, with
``differentiable=True`` (backend ``inner_cfg.cpo.backend``), then one post-adaptation rollout D_p^K.

Meta-objective and meta-constraint (eq. 10), as surrogates on D_p^K:

    F(theta) = 1/M sum_p E_{D_p^K}[ pi_phi(a|s) / pi_{phi_p^K}(a|s) * A_R ]            (A_R standardized)
    G(theta) = 1/M sum_p ( J_C(phi_p^K) - d + E_{D_p^K}[ pi_phi / pi_{phi_p^K} * A_C ] ) (A_C per episode)

with phi = phi_p^K(theta); the surrogates are 0 at the sampling policy, so F and G have the values of
the estimates and the policy-gradient as gradient in phi. The meta-gradients (eq. 11)

    dF/dtheta = 1/M sum_p (d phi_p^K / d theta)^T grad_phi F_p,    dG/dtheta likewise,

are vector-Jacobian products through all K steps, including how each step's g, a, b and Fisher matrix
depend on the local parameters (second order); ``meta_grad: first_order`` drops d phi / d theta.

The meta step (eq. 12) is the CPO subproblem at the meta level,

    max_dtheta  dF^T dtheta   s.t.   1/2 dtheta^T H dtheta <= delta_theta,   G + dG^T dtheta <= 0,

solved in closed form by `cpo_step.solve_cpo` (the eq. 4 recovery step when infeasible), with H the
Fisher matrix of the meta-policy on its own rollouts D^0 (all tasks pooled; conjugate gradient) or the
identity (``metric: euclidean``). A backtracking line search keeps the largest fraction of the step
whose exact KL on D^0 is <= delta_theta (Fisher metric) and, with ``replay_line_search``, whose
*replayed* objectives (the K steps re-run from the candidate on the stored rollouts, `adaptation.replay`)
do not lower F (except on a recovery step) and do not raise G beyond max(-G, 0).

What this implements differently from the public Meta-CPO code (each has a regression test in
``tests/test_meta_cpo_regressions.py``): the local learners are functional copies of theta, never the
meta-policy object; every local step samples fresh rollouts of the current local policy; GAE stops at
time-limit truncations and bootstraps them; episodes draw fresh seeds; tasks are resampled every
iteration; the cost limit is a per-task state value that is never annealed in place; and the
meta-gradient is the full vector-Jacobian product, not a per-element diagonal, computed afresh (no
gradient accumulates across calls).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from safemeta.adaptation import AdaptationResult, replay
from safemeta.algorithms.inner.base import InnerSolver, State, episode_cost_advantages
from safemeta.algorithms.inner.cpo_step import solve_cpo
from safemeta.algorithms.outer.base import OuterUpdater
from safemeta.algorithms.outer.meta_optimizer import meta_fisher_solve
from safemeta.batch import Batch
from safemeta.config.schema import spec
from safemeta.params import Params, add, flat, stack, unflat
from safemeta.registry import register_outer
from safemeta.task import Task


@dataclass
class DCOCPOConfig:
    max_kl: float = spec(0.01, gt=0, doc="delta_theta, the meta trust-region radius (eq. 12)")
    metric: Literal["fisher", "euclidean"] = "fisher"
    meta_grad: Literal["full", "first_order"] = "full"
    cg_iters: int = spec(10, ge=1)
    cg_damping: float = spec(0.1, ge=0)
    backtrack_decay: float = spec(0.8, gt=0, lt=1)
    max_backtracks: int = spec(10, ge=1)
    replay_line_search: bool = spec(True, doc="check candidates by replaying the K steps on the stored rollouts")


def post_adaptation_objectives(inner: InnerSolver, phi: Params, batch: Batch, state: State) -> tuple[Tensor, Tensor]:
    """Per task ``[M]``: F_p, the reward surrogate the inner solver ascends, and G_p = J_C - d + cost surrogate."""
    f = inner.objective(phi, batch, state)
    g = batch.ep_constraint_cost - state["cost_limit"] + \
        inner.surrogate(phi, batch, episode_cost_advantages(batch).detach())
    return f, g


def meta_gradients(inner: InnerSolver, theta: Params, result: AdaptationResult, first_order: bool = False
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dF/dtheta, dG/dtheta) as ``[1, P]`` rows and the values (F, G), from an adaptation whose
    parameters keep their graph to the unstacked leaves ``theta`` (eq. 11). Nothing accumulates in
    ``.grad``: each call computes the products afresh."""
    phi = result.params[-1]
    if first_order:
        phi = {k: v.detach().requires_grad_(True) for k, v in phi.items()}
    f, g = post_adaptation_objectives(inner, phi, result.batches[-1], result.state)
    wrt = phi if first_order else theta
    rows = []
    for value in (f.mean(), g.mean()):
        grads = torch.autograd.grad(value, list(wrt.values()), retain_graph=True, allow_unused=True)
        grads = {k: torch.zeros_like(v) if gr is None else gr for (k, v), gr in zip(wrt.items(), grads)}
        rows.append(flat(grads).sum(0, keepdim=True) if first_order else flat(stack(grads, 1)))
    return rows[0].detach(), rows[1].detach(), f.mean().detach(), g.mean().detach()


@register_outer("dco_cpo", "Meta-CPO: meta-gradient through K differentiable CPO steps, a CPO meta step with a safety constraint")
class DCOCPO(OuterUpdater):
    Config = DCOCPOConfig
    needs_differentiable = True

    def replayed_objectives(self, theta1: Params, result: AdaptationResult) -> tuple[Tensor, Tensor]:
        """(F, G) after re-running the K steps from ``theta1`` ``[1, ...]`` on the stored rollouts."""
        n = result.batches[-1].n_tasks
        phi = replay(self.ctx.inner, {k: v.expand(n, *v.shape[1:]) for k, v in theta1.items()},
                     result.batches[:-1], dict(result.initial_state))
        with torch.no_grad():
            f, g = post_adaptation_objectives(self.ctx.inner, phi, result.batches[-1], result.state)
        return f.mean(), g.mean()

    def shard_terms(self, result: AdaptationResult) -> dict[str, Tensor]:
        """eq. 11's task means times the shard's task count, so that shards' terms add up."""
        n = result.batches[-1].n_tasks
        terms = meta_gradients(self.ctx.inner, self.ctx.meta.theta, result, self.cfg.meta_grad == "first_order")
        return {name: value * n for name, value in zip(("grad_f", "grad_g", "f", "g"), terms)} | {
            "n": torch.tensor(float(n))}

    def update(self, result: AdaptationResult, tasks: list[Task]) -> dict[str, float]:
        cfg, inner = self.cfg, self.ctx.inner
        theta = self.ctx.meta.theta
        if result.meta_terms is not None:  # computed by the shards (Ray workers)
            t = result.meta_terms
            grad_f, grad_g, f_val, g_val = (t[k] / t["n"] for k in ("grad_f", "grad_g", "f", "g"))
        else:
            grad_f, grad_g, f_val, g_val = meta_gradients(inner, theta, result, cfg.meta_grad == "first_order")
        theta1 = {k: v.detach().unsqueeze(0) for k, v in theta.items()}
        meta_batch = result.batches[0].pooled()  # the meta-policy's own rollouts, all tasks as one
        if cfg.metric == "fisher":
            solve = meta_fisher_solve(inner, theta1, meta_batch, cfg.cg_damping, cfg.cg_iters)
            hinv_f, hinv_g = solve(grad_f), solve(grad_g)
        else:
            hinv_f, hinv_g = grad_f, grad_g
        b = g_val.reshape(1)
        sol = solve_cpo(grad_f, grad_g, b, hinv_f, hinv_g, cfg.max_kl)
        recovery = bool(sol.case[0] == 0)
        if cfg.replay_line_search:
            f0, g0 = self.replayed_objectives(theta1, result)
        frac, kl = 0.0, torch.zeros(())
        for j in range(cfg.max_backtracks):
            cand = add(theta1, unflat(sol.step, theta1), cfg.backtrack_decay**j)
            with torch.no_grad():
                kl = inner.mean_kl(theta1, cand, meta_batch)[0]
            ok = cfg.metric != "fisher" or bool(kl <= cfg.max_kl)
            if ok and cfg.replay_line_search:
                f1, g1 = self.replayed_objectives(cand, result)
                ok = bool(g1 - g0 <= torch.clamp(-b[0], min=0.0)) and (recovery or bool(f1 >= f0))
            if ok:
                frac = cfg.backtrack_decay**j
                with torch.no_grad():
                    for k, p in theta.items():
                        p.copy_(cand[k][0])
                break
        return {"meta_grad_norm": float(grad_f.norm()), "meta/cost_grad_norm": float(grad_g.norm()),
                "meta/F": float(f_val), "meta/G": float(g_val), "meta/case": float(sol.case[0]),
                "meta/step_fraction": frac, "meta/kl": float(kl) if frac > 0 else 0.0}
