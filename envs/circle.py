"""``point-circle`` and ``car-circle-hazard``: run along a circle, stay between the walls (and out of hazards).

Reward (Safety-Gym's circle task): with world position (x, y), velocity (u, v) and r = |(x, y)|,
    r_t = ((-u y + v x) / r) / (1 + |r - r_c|)      (tangential speed, discounted off the circle)
Cost: 1 when |x| >= s r_c (the walls at x = +-s r_c); for ``car-circle-hazard`` also 1 inside any of the
n_h hazard disks, which are placed on an annulus around the circle from the task's layout seed.

Task ranges (Meta-CPO, Table 1): point-circle train r_c in [1.0, 1.5], s in [0.65, 0.75]; test r_c in
[2.0, 2.5], s in [0.55, 0.65]; 500-step episodes. car-circle-hazard train r_c in [0.7, 1.0], n_h in
[3, 7], s in [0.65, 0.75]; test r_c in [1.2, 1.5], n_h in [7, 12], s in [0.55, 0.65] (the wall factor is
drawn per task as for point-circle; it was a fixed 0.8 before issue 18); cost limit 10 in training and 5
at test.
Observation: proprioception, 16-bin lidar of the circle centre, 16-bin wall lidar (+ hazard lidar).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from safemeta.config.schema import spec
from safemeta.envs.planar import (LIDAR_BINS, PROPRIO_DIM, PointObjects, Robot, heading_direction, lidar_into,
                                  pad_objects, place_objects, proprio, relative, wall_lidar)
from safemeta.registry import register_env
from safemeta.rollout.task import IntRange, Range, Task, TaskFamily, draw
from safemeta.rollout.vec_cmdp import PureStepCMDP


class CircleEnv(PureStepCMDP):
    can_terminate = False  # terminated is always false
    reset_draws = 3  # position (x, y) and heading

    def __init__(self, robot: str, r_c: Tensor, wall: Tensor, hazards: list[np.ndarray], hazard_radius: float,
                 horizon: int, envs_per_task: int, device: str, seed: int, spawn: float = 0.4):
        super().__init__(r_c.shape[0], envs_per_task, horizon, device, seed)
        rep = lambda x: x.to(self.device).repeat_interleave(envs_per_task, 0)  # noqa: E731
        self.r_c, self.wall = rep(r_c), rep(wall)
        self.with_hazards = bool(hazards)
        self.hazard_radius = hazard_radius
        self.spawn = spawn
        self.robot = Robot(robot, self.num_envs, self.device)
        self.obs_dim = PROPRIO_DIM + LIDAR_BINS * (3 if self.with_hazards else 2)
        self.act_dim = 2
        # observation: proprio | centre lidar | wall lidar | hazard lidar
        self.wall_cols = slice(PROPRIO_DIM + LIDAR_BINS, PROPRIO_DIM + 2 * LIDAR_BINS)
        centre = torch.zeros(self.num_envs, 1, 2, device=self.device)
        groups = [(centre, torch.ones(self.num_envs, 1, dtype=torch.bool, device=self.device), PROPRIO_DIM)]
        if self.with_hazards:
            groups.append((*pad_objects(hazards, envs_per_task, self.device), PROPRIO_DIM + 2 * LIDAR_BINS))
        self.objects = PointObjects(groups)
        zeros = lambda: torch.zeros(self.num_envs, LIDAR_BINS, device=self.device)  # noqa: E731
        self._centre_zeros, self._hazard_zeros = zeros(), [zeros()] if self.with_hazards else []
        c = lambda x: torch.tensor(x, dtype=torch.float32, device=self.device)  # noqa: E731
        self._one, self._hazard_radius = c(1.0), c(hazard_radius)
        self.r_c, self._wall_column = self.r_c.unsqueeze(1), self.wall.unsqueeze(1)  # [B, 1], as the radius

    def _reset_envs(self, mask: Tensor) -> None:
        u = torch.rand(self.num_envs, self.reset_draws, generator=self.gen, device=self.device)
        self.robot.reset(mask, *self._start_pose(u))

    def _start_pose(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """Start positions and headings ``[B, 2], [B]`` from uniforms ``u [B, 3]``: uniform in the square of half-width
        ``spawn * min(wall, 1)`` around the centre, any heading."""
        return (u[:, :2] * 2 - 1) * self.spawn * self.wall.unsqueeze(-1).clamp(max=1.0), (u[:, 2] * 2 - 1) * math.pi

    def _observe(self) -> Tensor:
        r = self.robot
        return self._observation(r.motion, r.direction(), r.heading, r.pos, self.objects.scan(r.pos))

    def _observation(self, motion: Tensor, direction: Tensor, heading: Tensor, pos: Tensor,
                     scan: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        """proprio | centre lidar | wall lidar | hazard lidar, from the robot's state and its scan of the objects."""
        walls = wall_lidar(pos, heading, self._wall_column, direction=direction)
        obs = proprio(motion, direction, self._centre_zeros, walls, *self._hazard_zeros)
        return lidar_into(obs, *scan, heading, self.objects.column)

    def _transition(self, act: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        self.robot.step(act)
        pos = self.robot.pos  # with hazards, the scan is shared with _observe
        return self._outcome(pos, self.robot.velocity(), self.objects.scan(pos)[2] if self.with_hazards else None)

    def _outcome(self, pos: Tensor, vel: Tensor, dist: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """Reward, cost and (never) terminated at position ``pos`` and world velocity ``vel`` ``[B, 2]``; ``dist``:
        the distances to the objects (None without hazards)."""
        radius = torch.linalg.vector_norm(pos, dim=-1, keepdim=True).clamp_(min=1e-6)
        tangential = torch.diff(vel * pos.flip(1), dim=1) / radius  # v x - u y = -u y + v x
        reward = (tangential / ((radius - self.r_c).abs_() + self._one)).view(-1)
        cost = (pos[:, 0].abs() >= self.wall).float()
        if dist is not None:
            cost = cost.add_(dist[:, self.objects.slices[1]].amin(dim=1) < self._hazard_radius)
        return reward, cost, torch.zeros_like(cost, dtype=torch.bool)

    def _pure_state(self) -> dict[str, Tensor]:
        return self.robot.state()

    def _load_pure_state(self, state: dict[str, Tensor]) -> None:
        self.robot.load(state)

    def _pure_transition(self, state: dict[str, Tensor], act: Tensor
                         ) -> tuple[dict[str, Tensor], Tensor, Tensor, Tensor, Tensor]:
        r = self.robot
        motion = r.actuate(state["motion"], act)
        pos, heading, direction = r.move(state["pos"], state["heading"], motion)
        scan = relative(pos, self.objects.x, self.objects.y)
        reward, cost, terminated = self._outcome(pos, motion[:, :1] * direction, scan[2] if self.with_hazards else None)
        moved = {"pos": pos, "heading": heading, "motion": motion}
        return moved, self._observation(motion, direction, heading, pos, scan), reward, cost, terminated

    def _pure_start(self, u: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        pos, heading = self._start_pose(u)
        motion, direction = torch.zeros_like(self.robot.motion), heading_direction(heading)
        start = {"pos": pos, "heading": heading, "motion": motion}
        return start, self._observation(motion, direction, heading, pos, relative(pos, self.objects.x, self.objects.y))


@dataclass
class PointCircleSplit:
    r_c: Range = spec((1.0, 1.5), gt=0, doc="circle radius")
    s: Range = spec((0.65, 0.75), gt=0, doc="wall position as a fraction of r_c")


@dataclass
class PointCircleConfig:
    horizon: int = spec(500, ge=1)
    cost_limit: float = spec(25.0, ge=0, doc="d, episode cost allowed (steps beyond the walls)")
    train: PointCircleSplit = field(default_factory=PointCircleSplit)
    test: PointCircleSplit = field(default_factory=lambda: PointCircleSplit((2.0, 2.5), (0.55, 0.65)))


@register_env("point-circle", "Point robot runs a circle of radius r_c between walls at +-s r_c (Meta-CPO)")
class PointCircle(TaskFamily):
    name = "point-circle"
    Config = PointCircleConfig

    def sample_params(self, split: str, rng: np.random.Generator) -> dict:
        ranges = getattr(self.cfg, split)
        return {"r_c": draw(rng, ranges.r_c), "s": draw(rng, ranges.s)}

    def make(self, tasks: list[Task], envs_per_task: int, device: str = "cpu", seed: int = 0) -> CircleEnv:
        r_c = torch.tensor([t.params["r_c"] for t in tasks], device="cpu")
        wall = r_c * torch.tensor([t.params["s"] for t in tasks], device="cpu")
        return CircleEnv("point", r_c, wall, [], 0.0, self.cfg.horizon, envs_per_task, device, seed)


@dataclass
class CarCircleHazardSplit:
    r_c: Range = spec((0.7, 1.0), gt=0, doc="circle radius")
    n_h: IntRange = spec((3, 7), ge=0, doc="number of hazards")
    # s per task, as point-circle's: Meta-CPO (Cho & Sun, AAAI-24) Table 1, train [0.65, 0.75], test [0.55, 0.65]
    s: Range = spec((0.65, 0.75), gt=0, doc="wall position as a fraction of r_c")


@dataclass
class CarCircleHazardConfig:
    horizon: int = spec(500, ge=1)
    cost_limit: float = spec(10.0, ge=0, doc="d during meta-training")
    test_cost_limit: float = spec(5.0, ge=0, doc="d at meta-test (the paper tightens it)")
    hazard_radius: float = spec(0.15, gt=0)
    train: CarCircleHazardSplit = field(default_factory=CarCircleHazardSplit)
    test: CarCircleHazardSplit = field(default_factory=lambda: CarCircleHazardSplit((1.2, 1.5), (7, 12), (0.55, 0.65)))


@register_env("car-circle-hazard", "Car robot runs a circle between walls among n_h hazards (Meta-CPO)")
class CarCircleHazard(TaskFamily):
    name = "car-circle-hazard"
    Config = CarCircleHazardConfig

    def cost_limit_for(self, split: str) -> float:
        return float(self.cfg.test_cost_limit if split == "test" else self.cfg.cost_limit)

    def sample_params(self, split: str, rng: np.random.Generator) -> dict:
        ranges = getattr(self.cfg, split)
        params = {"r_c": draw(rng, ranges.r_c), "n_h": draw(rng, ranges.n_h, integer=True),
                  "layout_seed": int(rng.integers(2**31))}
        params["s"] = draw(rng, ranges.s)  # drawn last: a seed still gives the tasks' r_c, n_h and layouts of before
        return params

    def hazards(self, params: dict) -> np.ndarray:
        """Hazard centres on the annulus [0.7 r_c, 1.3 r_c], at least 2.5 hazard radii apart."""
        rng = np.random.default_rng(params["layout_seed"])
        r_c, n = params["r_c"], params["n_h"]
        out: list[np.ndarray] = []
        for _ in range(10000):
            if len(out) == n:
                break
            angle, radius = rng.uniform(0, 2 * math.pi), rng.uniform(0.7 * r_c, 1.3 * r_c)
            p = radius * np.array([math.cos(angle), math.sin(angle)])
            if all(np.linalg.norm(p - q) >= 2.5 * self.cfg.hazard_radius for q in out):
                out.append(p)
        if len(out) < n:  # fall back to a looser square placement
            return place_objects(rng, n, 1.3 * r_c, 2 * self.cfg.hazard_radius)
        return np.array(out, dtype=np.float32).reshape(n, 2)

    def make(self, tasks: list[Task], envs_per_task: int, device: str = "cpu", seed: int = 0) -> CircleEnv:
        r_c = torch.tensor([t.params["r_c"] for t in tasks], device="cpu")
        wall = r_c * torch.tensor([t.params["s"] for t in tasks], device="cpu")
        return CircleEnv("car", r_c, wall, [self.hazards(t.params) for t in tasks],
                         self.cfg.hazard_radius, self.cfg.horizon, envs_per_task, device, seed)
