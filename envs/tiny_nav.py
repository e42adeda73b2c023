"""``tiny-nav``: a 2-D point that must reach a goal past a hazard disk (a few dims, milliseconds per
meta-iteration; the test family and the quick-start default).

Task: goal at distance ``goal_dist`` in direction phi, a hazard disk of radius ``hazard_radius``
centred half-way along the straight path (shifted sideways by up to ``hazard_jitter``). Split
``train`` draws phi in [0, 1.5 pi], ``test`` in [1.5 pi, 2 pi] (disjoint up to the shared edge).

Dynamics: x_{t+1} = x_t + step_size * clip(a_t, -1, 1); reward = ||x_t - g|| - ||x_{t+1} - g||
(progress toward the goal); cost = 1 while inside the hazard. The straight path pays ~4 cost per
episode; a detour around the disk is ~12% longer and fits well inside the horizon, so a constrained
solver has a real trade-off to make. Observation: (x, g - x, h - x) in the world frame.
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

@dataclass
class TinyNavSplit:
    angle: Range = spec((0.0, 1.5 * math.pi), ge=0, doc="direction phi of the goal, radians")


@dataclass
class TinyNavConfig:
    horizon: int = spec(20, ge=1)
    cost_limit: float = spec(1.0, ge=0, doc="d, expected episode cost allowed")
    goal_dist: float = spec(1.0, gt=0)
    hazard_radius: float = spec(0.2, ge=0)
    hazard_jitter: float = spec(0.05, ge=0)
    step_size: float = spec(0.1, gt=0)
    train: TinyNavSplit = field(default_factory=TinyNavSplit)
    test: TinyNavSplit = field(default_factory=lambda: TinyNavSplit((1.5 * math.pi, 2.0 * math.pi)))


class TinyNavEnv(BatchedCMDP):
    can_terminate = False  # terminated is always false
    obs_dim = 6
    act_dim = 2

    def __init__(self, goal: Tensor, hazard: Tensor, cfg: TinyNavConfig, envs_per_task: int, device: str, seed: int):
        super().__init__(goal.shape[0], envs_per_task, cfg.horizon, device, seed)
        self.cfg = cfg
        self.goal = goal.to(self.device).repeat_interleave(envs_per_task, 0)
        self.hazard = hazard.to(self.device).repeat_interleave(envs_per_task, 0)
        self.pos = torch.zeros(self.num_envs, 2, device=self.device)

    def _reset_envs(self, mask: Tensor) -> None:
        noise = (torch.rand(self.num_envs, 2, generator=self.gen, device=self.device) - 0.5) * 0.1
        self.pos = torch.where(mask.unsqueeze(-1), noise, self.pos)

    def _observe(self) -> Tensor:
        return torch.cat([self.pos, self.goal - self.pos, self.hazard - self.pos], dim=-1)

    def _transition(self, act: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        before = (self.goal - self.pos).norm(dim=-1)
        self.pos = self.pos + self.cfg.step_size * act
        reward = before - (self.goal - self.pos).norm(dim=-1)
        cost = ((self.pos - self.hazard).norm(dim=-1) < self.cfg.hazard_radius).float()
        return reward, cost, torch.zeros_like(cost, dtype=torch.bool)


@register_env("tiny-nav", "2-D point to a goal past a hazard disk (test/quick-start family)")
class TinyNav(TaskFamily):
    name = "tiny-nav"
    Config = TinyNavConfig

    def sample_params(self, split: str, rng: np.random.Generator) -> dict:
        return {"angle": draw(rng, getattr(self.cfg, split).angle),
                "hazard_shift": float(rng.uniform(-self.cfg.hazard_jitter, self.cfg.hazard_jitter))}

    def make(self, tasks: list[Task], envs_per_task: int, device: str = "cpu", seed: int = 0) -> TinyNavEnv:
        angle = torch.tensor([t.params["angle"] for t in tasks], device="cpu")
        shift = torch.tensor([t.params["hazard_shift"] for t in tasks], device="cpu")
        direction = torch.stack([angle.cos(), angle.sin()], -1)
        normal = torch.stack([-angle.sin(), angle.cos()], -1)
        goal = self.cfg.goal_dist * direction
        hazard = 0.5 * goal + shift.unsqueeze(-1) * normal
        return TinyNavEnv(goal, hazard, self.cfg, envs_per_task, device, seed)
