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

Visitation (``visitation``): ``dualdice`` (default, the paper's way) estimates w = d^{pi_hat_t} / d^D on the
transitions of the M steps (pi_0 .. pi_{M-1}; the data distribution D) with `safemeta.dualdice.feature_dualdice`
on random Fourier features of the standardized (state, action) vector (bandwidth: the median distance
between data points times ``rff_bandwidth``; E_{a' ~ pi_hat} phi(s', a') from ``action_samples`` sampled
actions); the distance term and the distillation then weight the data states by max(w, 0).
``on_policy`` instead uses the post-adaptation rollout of pi_hat_t (on-policy data, each sample weighted by
gamma^(its step in the episode): an unbiased estimate of d^{pi_hat_t} that needs no ratio estimator, at
the cost of that extra rollout). The tasks' critics start from the critics' initialization that the
trainer carries across iterations for every method (`safemeta.model.fit_meta_critics`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal
import numpy as np
import torch
from torch import Tensor

from safemeta.adaptation import AdaptationResult
from safemeta.algorithms.meta_srl.online_dualdice import StepSizeLearning, next_step_size, step_size_bound
from safemeta.algorithms.outer.base import OuterContext, OuterUpdater
from safemeta.batch import Batch
from safemeta.config.schema import spec
from safemeta.dualdice import RandomFourierFeatures, feature_dualdice
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
    visitation: Literal["dualdice", "on_policy"] = "dualdice"
    rff_features: int = spec(256, ge=8, doc="random Fourier features of (s, a) for DualDICE")
    rff_bandwidth: float = spec(1.0, gt=0, doc="multiplies the median-distance bandwidth")
    action_samples: int = spec(4, ge=1, doc="actions sampled from pi_hat per next / initial state")


def episode_starts(batch: Batch) -> Tensor:
    """``[N, T, E]`` bool: the samples that begin an episode (t = 0 or right after a done)."""
    done = batch.terminated | batch.truncated
    start = torch.zeros_like(done)
    start[:, 0] = True
    start[:, 1:] = done[:, :-1]
    return start


def discounted_visitation(batch: Batch, gamma: float) -> Tensor:
    """Weights ``[N, T, E]`` summing to one per task: gamma^(step within the episode), normalized."""
    start = episode_starts(batch)
    step = torch.zeros(batch.rew.shape)
    for i in range(1, step.shape[1]):
        step[:, i] = torch.where(start[:, i], 0.0, step[:, i - 1] + 1)
    w = gamma ** step
    return w / w.sum(dim=(1, 2), keepdim=True)


def concat_time(batches: list[Batch]) -> Batch:
    """The batches of several steps as one (stacked along time), each batch's last step marked as an
    episode boundary (the rollout was cut there); only the fields DualDICE reads."""
    cat = lambda name: torch.cat([getattr(b, name) for b in batches], dim=1)  # noqa: E731
    cut = []
    for b in batches:
        t = b.truncated.clone()
        t[:, -1] = ~b.terminated[:, -1]
        cut.append(t)
    first = batches[0]
    return Batch(obs=cat("obs"), act=cat("act"), logp=cat("logp"), rew=cat("rew"), cost=cat("cost"),
                 terminated=cat("terminated"), truncated=torch.cat(cut, dim=1), next_obs=cat("next_obs"),
                 ep_return=first.ep_return, ep_cost=first.ep_cost, ep_count=first.ep_count)


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

    def inner_overrides(self, tasks: list[Task]) -> dict[str, Tensor]:
        return {"step_size": torch.full((len(tasks),), self.alpha)}

    def weighted_kl(self, target: dict, params: dict, batch: Batch, weights: Tensor) -> Tensor:
        """sum over samples of w * KL(pi_target(.|s) || pi_params(.|s)), per task ``[N]``."""
        n, t, e = weights.shape
        obs = batch.obs.reshape(n, t * e, -1)
        with torch.no_grad():
            m0, s0 = self.ctx.inner.actor_fn(target, obs)
        m1, s1 = self.ctx.inner.actor_fn(params, obs)
        return (gaussian_kl(m0, s0, m1, s1) * weights.reshape(n, t * e)).sum(-1)

    def dualdice_weights(self, pi_hat: dict, data: Batch, gamma: float) -> tuple[Tensor, float]:
        """Per-sample max(w, 0) / sum, w = d^{pi_hat} / d^D by feature DualDICE on ``data`` (one task per row)."""
        cfg = self.cfg
        out, means = torch.zeros(data.rew.shape), []
        for i in range(data.n_tasks):
            obs, act, nxt = data.obs[i].flatten(0, 1), data.act[i].flatten(0, 1), data.next_obs[i].flatten(0, 1)
            obs0 = data.obs[i][episode_starts(data)[i]]
            x = torch.cat([obs, act], -1)
            mu, sd = x.mean(0), x.std(0).clamp(min=1e-6)
            sub = (x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:512]] - mu) / sd
            bandwidth = float(torch.cdist(sub, sub).median().clamp(min=1e-3)) * cfg.rff_bandwidth
            rff = RandomFourierFeatures(x.shape[-1], cfg.rff_features, bandwidth, seed=self.t)
            feat = lambda o, a: rff((torch.cat([o, a], -1) - mu) / sd)  # noqa: E731

            def expected(states: Tensor) -> Tensor:
                with torch.no_grad():
                    mean, log_std = self.ctx.inner.actor_fn({k: v[i:i + 1] for k, v in pi_hat.items()},
                                                            states.unsqueeze(0))
                samples = [feat(states, (mean + log_std.exp() * torch.randn_like(mean))[0])
                           for _ in range(cfg.action_samples)]
                return torch.stack(samples).mean(0)

            w, mean_w = feature_dualdice(feat(obs, act), expected(nxt), expected(obs0), gamma)
            w = w.clamp(min=0.0).float()
            out[i] = (w / w.sum().clamp(min=1e-12)).reshape(data.rew.shape[1:])
            means.append(mean_w)
        return out, float(np.mean(means))

    def update(self, result: AdaptationResult, tasks: list[Task]) -> dict[str, float]:
        cfg, meta = self.cfg, self.ctx.meta
        self.t += 1
        alpha = self.alpha
        gamma = self.ctx.cfg.critic.gamma
        pi_hat = detach(result.params[-1])
        if cfg.visitation == "on_policy":
            final = result.batches[-1]
            weights = discounted_visitation(final, gamma)
            mean_w = 1.0
        else:
            final = concat_time(result.batches[:-1])
            weights, mean_w = self.dualdice_weights(pi_hat, final, gamma)
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
        after = float(self.weighted_kl(pi_hat, stack({k: v.detach() for k, v in meta.theta.items()}, len(tasks)),
                                       final, weights).mean())
        return {"meta_srl/mean_weight": mean_w, "meta_srl/distance": distance, "meta_srl/distance_after": after, "meta_srl/G": math.sqrt(g2),
                "meta_srl/bound": float(step_size_bound(alpha, distance, cfg.eps, g2)),
                "meta_srl/alpha": alpha, "meta_srl/alpha_next": self.alpha}

    def state_dict(self) -> dict:
        return {"alpha": self.alpha, "opt": self.opt.state_dict(), "history": self.history, "t": self.t}

    def load_state_dict(self, state: dict) -> None:
        self.alpha, self.history, self.t = state["alpha"], state["history"], state["t"]
        self.opt.load_state_dict(state["opt"])
