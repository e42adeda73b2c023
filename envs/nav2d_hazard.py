"""``nav2d-hazard``: MAML's 2-D navigation (Finn et al. 2017, Sec. 5.3) with a hazard disk on the way.

A point starts at the origin; the action is a velocity, clipped to [-0.1, 0.1] per step; the reward is
minus the distance to the task's goal; 100-step episodes; the observation is the position only (the
goal and the hazard must be inferred from reward and cost, as in MAML). Each task adds a hazard disk of
radius rho centred at fraction f of the way to the goal; cost 1 per step inside it. Goals are drawn at
distance [0.2, 0.5]; train goal bearings in [0, 1.5 pi], test in [1.5 pi, 2 pi] (MAML used one
distribution; the split makes meta-test tasks held out).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from safemeta.config.schema import spec
from safemeta.registry import register_env
from safemeta.rollout.task import Range, Task, TaskFamily, draw
from safemeta.rollout.vec_cmdp import BatchedCMDP


class Nav2DHazardEnv(BatchedCMDP):
    can_terminate = False  # terminated is always false
    obs_dim = 2
    act_dim = 2

    def __init__(self, goal: Tensor, hazard: Tensor, radius: Tensor, horizon: int, envs_per_task: int,
                 device: str, seed: int):
        super().__init__(goal.shape[0], envs_per_task, horizon, device, seed)
        rep = lambda x: x.to(self.device).repeat_interleave(envs_per_task, 0)  # noqa: E731
        self.goal, self.hazard, self.radius = rep(goal), rep(hazard), rep(radius)
        self.pos = torch.zeros(self.num_envs, 2, device=self.device)

    def _reset_envs(self, mask: Tensor) -> None:
        self.pos = torch.where(mask.unsqueeze(-1), torch.zeros_like(self.pos), self.pos)

    def _observe(self) -> Tensor:
        return self.pos.clone()

    def _transition(self, act: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        self.pos = self.pos + 0.1 * act
        reward = -(self.pos - self.goal).norm(dim=-1)
        cost = ((self.pos - self.hazard).norm(dim=-1) < self.radius).float()
        return reward, cost, torch.zeros_like(cost, dtype=torch.bool)


@dataclass
class Nav2DHazardSplit:
    bearing: Range = spec((0.0, 1.5 * math.pi), doc="goal direction, radians")
    distance: Range = spec((0.2, 0.5), gt=0, doc="goal distance from the start")
    hazard_fraction: Range = spec((0.4, 0.6), ge=0, le=1, doc="f: hazard centre along the way to the goal")
    hazard_radius: Range = spec((0.05, 0.1), gt=0, doc="rho")


@dataclass
class Nav2DHazardConfig:
    horizon: int = spec(100, ge=1)
    cost_limit: float = spec(5.0, ge=0)
    train: Nav2DHazardSplit = field(default_factory=Nav2DHazardSplit)
    test: Nav2DHazardSplit = field(default_factory=lambda: Nav2DHazardSplit(bearing=(1.5 * math.pi, 2 * math.pi)))


@register_env("nav2d-hazard", "MAML's 2-D point navigation with a hazard disk on the way (sanity family)")
class Nav2DHazard(TaskFamily):
    name = "nav2d-hazard"
    Config = Nav2DHazardConfig

    def sample_params(self, split: str, rng: np.random.Generator) -> dict:
        r = getattr(self.cfg, split)
        return {k: draw(rng, getattr(r, k)) for k in ("bearing", "distance", "hazard_fraction", "hazard_radius")}

    def make(self, tasks: list[Task], envs_per_task: int, device: str = "cpu", seed: int = 0) -> Nav2DHazardEnv:
        p = {k: torch.tensor([t.params[k] for t in tasks], device="cpu") for k in tasks[0].params}
        goal = p["distance"].unsqueeze(-1) * torch.stack([p["bearing"].cos(), p["bearing"].sin()], -1)
        return Nav2DHazardEnv(goal, p["hazard_fraction"].unsqueeze(-1) * goal, p["hazard_radius"], self.cfg.horizon,
                              envs_per_task, device, seed)
