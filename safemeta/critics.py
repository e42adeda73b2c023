"""Reward and cost critics V_R, V_C per task: values, GAE annotation and fitting.

Critic parameters are stacked per task like the actor's. ``annotate`` fills a batch's advantages and
lambda-returns; ``fit`` regresses the critics on those returns with full-batch Adam. Adam is
elementwise, so optimizing the stacked tensors on the sum of per-task losses is N independent fits.
The adaptation loop fits first and then annotates with the fitted critics (as MAML's baseline does).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from safemeta.batch import Batch, gae
from safemeta.config.schema import CriticConfig
from safemeta.cost_shaping import shape
from safemeta.params import Params, detach
from safemeta.policy import Critic, batched


@dataclass
class CriticParams:
    reward: Params  # [N, ...]
    cost: Params  # [N, ...]


class Critics:
    def __init__(self, obs_dim: int, cfg: CriticConfig):
        self.cfg = cfg
        self.module = Critic(obs_dim, cfg.hidden_sizes, cfg.activation)
        self.fn = batched(self.module)

    def values(self, params: Params, obs: Tensor) -> Tensor:
        """``obs[N, T, E, d] -> V[N, T, E]``."""
        n, t, e, d = obs.shape
        return self.fn(params, obs.reshape(n, t * e, d)).reshape(n, t, e)

    def annotate(self, batch: Batch, params: CriticParams) -> Batch:
        """Advantages and lambda-returns; the cost ones of the constraint cost (shaped when
        ``cost_shaping_horizon > 0``: the bonus is added here, once per batch)."""
        cfg = self.cfg
        batch = shape(batch, cfg.cost_shaping_horizon, cfg.cost_shaping_coeff)
        with torch.no_grad():
            v_r, nv_r = self.values(params.reward, batch.obs), self.values(params.reward, batch.next_obs)
            v_c, nv_c = self.values(params.cost, batch.obs), self.values(params.cost, batch.next_obs)
            adv_r, ret_r = gae(batch.rew, v_r, nv_r, batch.terminated, batch.truncated, cfg.gamma, cfg.lam)
            adv_c, ret_c = gae(batch.constraint_cost, v_c, nv_c, batch.terminated, batch.truncated,
                               cfg.cost_gamma, cfg.cost_lam)
        return batch.with_advantages(adv_r, adv_c, ret_r, ret_c)

    def fit(self, batch: Batch, params: CriticParams) -> CriticParams:
        """Regress V_R on ret_r and V_C on ret_c (batch must be annotated)."""
        if self.cfg.iters == 0:
            return params
        reward = {k: v.clone().requires_grad_(True) for k, v in detach(params.reward).items()}
        cost = {k: v.clone().requires_grad_(True) for k, v in detach(params.cost).items()}
        opt = torch.optim.Adam([*reward.values(), *cost.values()], lr=self.cfg.lr)
        for _ in range(self.cfg.iters):
            opt.zero_grad()
            loss_r = (self.values(reward, batch.obs) - batch.ret_r).pow(2).mean(dim=(1, 2))
            loss_c = (self.values(cost, batch.obs) - batch.ret_c).pow(2).mean(dim=(1, 2))
            (loss_r.sum() + loss_c.sum()).backward()
            opt.step()
        return CriticParams(detach(reward), detach(cost))

    def fit_and_annotate(self, batch: Batch, params: CriticParams) -> tuple[Batch, CriticParams]:
        params = self.fit(self.annotate(batch, params), params)
        return self.annotate(batch, params), params
