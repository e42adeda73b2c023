"""``online_dualdice`` for neural policies: Meta-SRL (Khattar et al., arXiv 2405.16601) in the trainer.

One meta-iteration is one task of the online sequence (preset ``meta_srl``: ``trainer.tasks_per_iter: 1``).
CRPO runs K = M steps from theta = phi_t with the per-task step size alpha_t (``inner_overrides`` sets
``state["step_size"]``, hence ``needs_step_size``); then, with pi_hat_t the adapted policy:

* distance term (the tabular learner's D_hat_t, `safemeta.algorithms.meta_srl.online_dualdice`):
  D_hat_t(phi) = E_{s ~ d_hat_t} KL(pi_hat_t(.|s) || pi_phi(.|s)), with d_hat_t the discounted state
  visitation of pi_hat_t;
* phi: an inexact OGD step on D_hat_t, i.e. ``distill_iters`` Adam steps of visitation-weighted
  distillation of theta toward pi_hat_t (learning rate ``lr_phi``, divided by sqrt(t) under
  ``regret: static``, constant under ``dynamic``);
* alpha: FTL (or OGD on log alpha) on U_t(alpha) = (D_hat_t(phi_t) + eps^2) / alpha + alpha G_t^2, where
  G_t^2 = sum_k g_k^T F_k^-1 g_k is the natural-gradient form of the local norm: CRPO's step k is
  x_k = alpha F^-1 g_k, so g^T F^-1 g = 2 KL_k / alpha^2 from the step's quadratic KL (its ``kl`` and
  ``step_scale`` diagnostics); ``dynamic`` discounts past tasks by ``forget``.

Visitation, and what differs from the tabular learner: the trainer rolls out pi_hat_t after adapting
(``needs_post_rollout``); those episodes are on-policy for pi_hat_t, so weighting each sample by
gamma^(its step in the episode) gives an unbiased estimate of d^{pi_hat_t} without a ratio estimator.
DualDICE is what the paper needs when only the M steps' trajectories are kept; its neural variant is not
in `safemeta.dualdice` yet (issue 8's note), so this path uses the on-policy estimate and says so.
The tasks' critics are warm-started from the previous task's (an online learner keeps what it fitted).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
import numpy as np
import torch
from torch import Tensor

from safemeta.adaptation import AdaptationResult
from safemeta.algorithms.meta_srl.online_dualdice import StepSizeLearning, next_step_size, step_size_bound
from safemeta.algorithms.outer.base import OuterContext, OuterUpdater
from safemeta.batch import Batch
from safemeta.config.schema import spec
from safemeta.critics import CriticParams
from safemeta.params import detach, stack
from safemeta.policy import gaussian_kl
from safemeta.registry import register_outer
from safemeta.task import Task


@dataclass
class NeuralOnlineDualDICEConfig(StepSizeLearning):
    lr_phi: float = spec(0.01, gt=0, doc="Adam step size of the distillation toward pi_hat_t")
    distill_iters: int = spec(20, ge=1, doc="Adam steps per task (the inexact OGD step on phi)")
    alpha_min: float = spec(1e-3, gt=0)
    alpha_max: float = spec(10.0, gt=0)


def discounted_visitation(batch: Batch, gamma: float) -> Tensor:
    """Weights ``[N, T, E]`` summing to one per task: gamma^(step within the episode), normalized."""
    n, t, e = batch.rew.shape
    done = batch.terminated | batch.truncated
    step = torch.zeros(n, t, e)
    for i in range(1, t):
        step[:, i] = torch.where(done[:, i - 1], torch.zeros(n, e), step[:, i - 1] + 1)
    w = gamma ** step
    return w / w.sum(dim=(1, 2), keepdim=True)


@register_outer("online_dualdice", "Meta-SRL: CRPO's init and step size by online learning on estimated bounds")
class NeuralOnlineDualDICE(OuterUpdater):
    Config = NeuralOnlineDualDICEConfig
    needs_step_size = True
    needs_post_rollout = True

    def __init__(self, cfg: NeuralOnlineDualDICEConfig, ctx: OuterContext):
        super().__init__(cfg, ctx)
        self.alpha = float(ctx.inner.cfg.step_size)
        self.opt = torch.optim.Adam(list(ctx.meta.theta.values()), lr=cfg.lr_phi)
        self.history: dict[str, list[float]] = {"D": [], "g2": [], "eps": []}
        self.t = 0
        self.critics: CriticParams | None = None

    def inner_overrides(self, tasks: list[Task]) -> dict[str, Tensor]:
        return {"step_size": torch.full((len(tasks),), self.alpha)}

    def initial_critics(self, n_tasks: int) -> CriticParams:
        if self.critics is None:
            return self.ctx.meta.critics_for(n_tasks)
        return CriticParams(stack({k: v[0] for k, v in self.critics.reward.items()}, n_tasks),
                            stack({k: v[0] for k, v in self.critics.cost.items()}, n_tasks))

    def weighted_kl(self, target: dict, params: dict, batch: Batch, weights: Tensor) -> Tensor:
        """sum over samples of w * KL(pi_target(.|s) || pi_params(.|s)), per task ``[N]``."""
        n, t, e = weights.shape
        obs = batch.obs.reshape(n, t * e, -1)
        with torch.no_grad():
            m0, s0 = self.ctx.inner.actor_fn(target, obs)
        m1, s1 = self.ctx.inner.actor_fn(params, obs)
        return (gaussian_kl(m0, s0, m1, s1) * weights.reshape(n, t * e)).sum(-1)

    def update(self, result: AdaptationResult, tasks: list[Task]) -> dict[str, float]:
        cfg, meta = self.cfg, self.ctx.meta
        self.t += 1
        alpha = self.alpha
        final = result.batches[-1]
        weights = discounted_visitation(final, self.ctx.cfg.critic.gamma)
        pi_hat = detach(result.params[-1])
        phi_t = stack({k: v.detach() for k, v in meta.theta.items()}, len(tasks))
        distance = float(self.weighted_kl(pi_hat, phi_t, final, weights).mean())
        g2 = sum(float((2 * info["kl"] / (alpha**2 * info["step_scale"].clamp(min=1e-6) ** 2)).mean())
                 for info in result.infos)
        self.history["D"].append(distance)
        self.history["g2"].append(g2)
        # phi: visitation-weighted distillation toward pi_hat_t (inexact OGD on D_hat_t)
        lr = cfg.lr_phi / (math.sqrt(self.t) if cfg.regret == "static" else 1.0)
        for group in self.opt.param_groups:
            group["lr"] = lr
        for _ in range(cfg.distill_iters):
            self.opt.zero_grad()
            theta = stack(meta.theta, len(tasks))
            self.weighted_kl(pi_hat, theta, final, weights).sum().backward()
            self.opt.step()
        # alpha
        self.history["eps"].append(cfg.eps)
        h = self.history
        self.alpha = float(np.clip(next_step_size(cfg, alpha, h["D"], h["eps"], h["g2"]), cfg.alpha_min, cfg.alpha_max))
        self.critics = CriticParams(detach(result.critics.reward), detach(result.critics.cost))
        after = float(self.weighted_kl(pi_hat, stack({k: v.detach() for k, v in meta.theta.items()}, len(tasks)),
                                       final, weights).mean())
        return {"meta_srl/distance": distance, "meta_srl/distance_after": after, "meta_srl/G": math.sqrt(g2),
                "meta_srl/bound": float(step_size_bound(alpha, distance, cfg.eps, g2)),
                "meta_srl/alpha": alpha, "meta_srl/alpha_next": self.alpha}

    def state_dict(self) -> dict:
        return {"alpha": self.alpha, "opt": self.opt.state_dict(), "history": self.history, "t": self.t,
                "critics": self.critics}

    def load_state_dict(self, state: dict) -> None:
        self.alpha, self.history, self.t, self.critics = state["alpha"], state["history"], state["t"], state["critics"]
        self.opt.load_state_dict(state["opt"])
