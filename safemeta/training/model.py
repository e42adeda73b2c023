"""The learnable pieces of a run: actor architecture, critic architecture, meta-parameters theta.

``MetaParams`` holds theta (the meta-policy's parameters, unstacked leaf tensors an outer optimizer
updates) and the critics' initialization that every task's critics start from.

The critics' initialization is carried across meta-iterations the same way for every method
(`fit_meta_critics`): after each iteration's adaptation, V_R and V_C are regressed on the meta-policy's own
rollouts on the iteration's tasks (batch 0, all tasks pooled), starting from their previous value. Every
task's critics in the next iteration, and at meta-test, start from them. C-MAML's global safety critic
(its eq. 12) is this V_C.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from safemeta.rollout.batch import Batch
from safemeta.config.schema import Config
from safemeta.rollout.critics import CriticParams, Critics, single
from safemeta.rollout.params import Params, stack
from safemeta.rollout.policy import Critic, GaussianActor, init_params


@dataclass
class MetaParams:
    theta: Params  # unstacked, requires_grad leaves
    critic_reward: Params  # unstacked initialization of V_R
    critic_cost: Params  # unstacked initialization of V_C

    def critics_for(self, n: int) -> CriticParams:
        return CriticParams(reward={k: v.clone() for k, v in stack(self.critic_reward, n).items()},
                            cost={k: v.clone() for k, v in stack(self.critic_cost, n).items()})

    def state_dict(self) -> dict:
        return {"theta": {k: v.detach().clone() for k, v in self.theta.items()},
                "critic_reward": self.critic_reward, "critic_cost": self.critic_cost}

    @classmethod
    def from_state_dict(cls, d: dict) -> "MetaParams":
        return cls({k: v.clone().requires_grad_(True) for k, v in d["theta"].items()},
                   d["critic_reward"], d["critic_cost"])


def build_modules(cfg: Config, obs_dim: int, act_dim: int) -> tuple[GaussianActor, Critics]:
    """The architectures (their own parameters, on the CPU, only seed the initializations: the run's parameters
    live outside them, on ``trainer.device``)."""
    with torch.device("cpu"):
        actor = GaussianActor(obs_dim, act_dim, cfg.policy.hidden_sizes, cfg.policy.activation, cfg.policy.init_log_std)
        return actor, Critics(obs_dim, cfg.critic)


def init_meta_params(actor: GaussianActor, critics: Critics, obs_dim: int, cfg: Config) -> MetaParams:
    """Fresh theta and critic initializations (drawn from torch's global RNG, seeded by the trainer, on the CPU,
    then moved to ``trainer.device``: the same numbers on every device)."""
    device = cfg.trainer.device
    with torch.device("cpu"):
        critic = lambda: Critic(obs_dim, cfg.critic.hidden_sizes, cfg.critic.activation)  # noqa: E731
        theta, reward, cost = init_params(actor), init_params(critic()), init_params(critic())
    to = lambda p: {k: v.to(device) for k, v in p.items()}  # noqa: E731
    return MetaParams({k: v.requires_grad_(True) for k, v in to(theta).items()}, to(reward), to(cost))


def stacked_theta(meta: MetaParams, n: int, keep_graph: bool = False) -> Params:
    src = meta.theta if keep_graph else {k: v.detach() for k, v in meta.theta.items()}
    return stack(src, n) if keep_graph else {k: v.clone() for k, v in stack(src, n).items()}


def fit_meta_critics(meta: MetaParams, critics: Critics, meta_batch: Batch) -> Batch:
    """Fit the critics' initialization on the meta-policy's rollouts ``meta_batch`` (``[N, T, E]``, pooled into
    one task here) from its previous value, in place; returns the pooled batch annotated by the fitted pair.
    ``critics.last_fit`` then holds the fit's explained variances."""
    annotated, fitted = critics.fit_and_annotate(meta_batch.pooled(), single(meta.critic_reward, meta.critic_cost),
                                                 critics.cfg.meta_max_minibatches)
    meta.critic_reward = {k: v[0].clone() for k, v in fitted.reward.items()}
    meta.critic_cost = {k: v[0].clone() for k, v in fitted.cost.items()}
    return annotated
