"""Meta-TRPO, the unconstrained baseline of Meta-CPO (Cho & Sun, AAAI-24): MAML (Finn et al. 2017) with
TRPO inner steps and a TRPO meta step, i.e. Meta-CPO (`dco_cpo`) without any constraint.

Inner loop (MAML eq. 1 with the TRPO step in place of the gradient step; Meta-CPO eq. 9 without the cost
constraint): per task p, phi_p^0 = theta and K differentiable TRPO steps phi_p^{k+1} = TRPO(phi_p^k, D_p^k)
(`inner.trpo`, ``step(..., differentiable=True)``).

Meta-objective (MAML eq. 2; Meta-CPO eq. 10's F) on the post-adaptation rollouts D_p^K,

    F(theta) = 1/M sum_p E_{D_p^K}[ pi_phi(a|s) / pi_{phi_p^K}(a|s) * A_R ],   phi = phi_p^K(theta),

and its meta-gradient dF/dtheta through all K steps (Meta-CPO eq. 11; `dco_cpo.meta_gradients`).
G, the post-adaptation constraint value of eq. 10, is logged but plays no part.

Meta step (Meta-CPO eq. 12 without the constraint; MAML eq. 3 with TRPO as the meta-optimizer, as in
Finn et al.'s RL experiments): with H the Fisher matrix of pi_theta on its own rollouts D^0 (all tasks
pooled; conjugate gradient) or the identity (``metric: euclidean``),

    dtheta = sqrt(2 delta_theta / g^T H^-1 g) H^-1 g,   g = dF/dtheta,

then a backtracking line search keeps the largest fraction whose KL on D^0 is <= delta_theta (Fisher metric)
and, with ``replay_line_search``, whose replayed F (`adaptation.replay`) does not decrease.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from safemeta.training.adaptation import AdaptationResult
from safemeta.algorithms.outer.dco_cpo import DCOCPO, DCOCPOConfig, meta_gradients
from safemeta.algorithms.outer.meta_optimizer import meta_fisher_solve
from safemeta.config.schema import spec
from safemeta.registry import register_outer
from safemeta.rollout.task import Task


@dataclass
class DCOTRPOConfig(DCOCPOConfig):
    max_kl: float = spec(0.01, gt=0, doc="delta_theta, the meta trust-region radius")


@register_outer("dco_trpo", "Meta-TRPO: meta-gradient through K differentiable TRPO steps, a TRPO meta step "
                            "(no constraint)")
class DCOTRPO(DCOCPO):
    Config = DCOTRPOConfig

    def update(self, result: AdaptationResult, tasks: list[Task]) -> dict[str, float]:
        cfg, inner = self.cfg, self.ctx.inner
        theta = self.ctx.meta.theta
        if result.meta_terms is not None:  # computed by the shards (Ray workers)
            t = result.meta_terms
            grad_f, f_val, g_val = (t[k] / t["n"] for k in ("grad_f", "f", "g"))
        else:
            grad_f, _, f_val, g_val = meta_gradients(inner, theta, result, cfg.meta_grad == "first_order")
        theta1 = {k: v.detach().unsqueeze(0) for k, v in theta.items()}
        meta_batch = result.batches[0].pooled()  # the meta-policy's own rollouts, all tasks as one
        fisher = cfg.metric == "fisher"
        hinv_f = meta_fisher_solve(inner, theta1, meta_batch, cfg.cg_damping, cfg.cg_iters)(grad_f) if fisher \
            else grad_f
        step = torch.sqrt(2 * cfg.max_kl / (grad_f * hinv_f).sum().clamp(min=1e-12)) * hinv_f
        if cfg.replay_line_search:
            f0, _ = self.replayed_objectives(theta1, result)
        replay_ok = (lambda cand: bool(self.replayed_objectives(cand, result)[0] >= f0)) if cfg.replay_line_search \
            else None
        frac, kl = self.line_search(theta1, step, meta_batch, replay_ok)
        return {"meta_grad_norm": float(grad_f.norm()), "meta/F": float(f_val), "meta/G": float(g_val),
                "meta/step_fraction": frac, "meta/kl": float(kl) if frac > 0 else 0.0}
