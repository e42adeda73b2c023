"""``point-goal``: reach a goal among hazards and obstacles (C-MAML's environments 1 and 2).

A task is a layout drawn from a seed: a start pose, a goal inside the 140-degree arc seen from the start
(relative bearing in [-70, 70] degrees, distance in [1.5, 2.5]), 10 hazards and 1 (level 1) or 10
(level 2) obstacles in [-3, 3]^2 away from start and goal. Obstacles are hard pillars (the robot is
pushed out) whose contact costs 1; a hazard costs 1 while inside it. Reward: progress toward the goal
(dist_{t-1} - dist_t) + 1 on reaching it (within 0.3), which ends the episode (terminated). Train and
test layout seeds come from disjoint ranges. Observation: proprioception + 16-bin lidar of the goal,
the hazards and the obstacles.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from safemeta.config.schema import spec
from safemeta.envs.planar import (LIDAR_BINS, PROPRIO_DIM, PointObjects, Robot, heading_direction, lidar_into,
                                  pad_objects, place_objects, proprio, push_out_of_disks, relative)
from safemeta.registry import register_env
from safemeta.errors import UserError
from safemeta.rollout.task import IntRange, Range, Task, TaskFamily, draw
from safemeta.rollout.vec_cmdp import PureStepCMDP

OBSTACLES_PER_LEVEL = {1: 1, 2: 10}
DEFAULT_COST_LIMIT = {1: 0.75, 2: 5.0}  # C-MAML's environments 1 and 2


class GoalEnv(PureStepCMDP):
    obs_dim = PROPRIO_DIM + 3 * LIDAR_BINS
    act_dim = 2
    reset_draws = 3  # start offset (x, y) and heading offset

    def __init__(self, layouts: list[dict], cfg: "PointGoalConfig", envs_per_task: int, device: str, seed: int):
        super().__init__(len(layouts), envs_per_task, cfg.horizon, device, seed)
        self.cfg = cfg
        rep = lambda key: torch.as_tensor(np.stack([l[key] for l in layouts]), dtype=torch.float32,  # noqa: E731,E741
                                          device=self.device).repeat_interleave(envs_per_task, 0)
        self.start, self.start_heading, self.goal = rep("start"), rep("heading"), rep("goal")
        hazards = pad_objects([l["hazards"] for l in layouts], envs_per_task, self.device)  # noqa: E741
        pillars = pad_objects([l["pillars"] for l in layouts], envs_per_task, self.device)  # noqa: E741
        goal_mask = torch.ones(self.num_envs, 1, dtype=torch.bool, device=self.device)
        self.robot = Robot("point", self.num_envs, self.device)
        # observation: proprio | goal lidar | hazard lidar | pillar lidar
        self.objects = PointObjects([(self.goal.unsqueeze(1), goal_mask, PROPRIO_DIM),
                                     (*hazards, PROPRIO_DIM + LIDAR_BINS), (*pillars, PROPRIO_DIM + 2 * LIDAR_BINS)])
        self.hazards, self.pillars = self.objects.slices[1:]
        self.pillar_x = self.objects.x[:, self.pillars].contiguous()
        self.pillar_y = self.objects.y[:, self.pillars].contiguous()
        self.push_radius = cfg.pillar_radius + cfg.robot_radius
        c = lambda x: torch.tensor(x, dtype=torch.float32, device=self.device)  # noqa: E731
        self._goal_radius, self._hazard_radius = c(cfg.goal_radius), c(cfg.hazard_radius)
        self._push_f32 = float(c(self.push_radius))  # compared as the float32 distances are
        self._pushed = False  # whether the last step pushed a robot out of a pillar
        self._lidar_zeros = torch.zeros(self.num_envs, self.obs_dim - PROPRIO_DIM, device=self.device)

    def _reset_envs(self, mask: Tensor) -> None:
        u = torch.rand(self.num_envs, self.reset_draws, generator=self.gen, device=self.device)
        self.robot.reset(mask, *self._start_pose(u))

    def _start_pose(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """Start positions and headings ``[B, 2], [B]`` from uniforms ``u [B, 3]``: the layout's start pose, within
        +-0.1 in position and +-0.25 rad in heading."""
        return self.start + (u[:, :2] - 0.5) * 0.2, self.start_heading + (u[:, 2] - 0.5) * 0.5

    def _observe(self) -> Tensor:
        r = self.robot
        return self._observation(r.motion, r.direction(), r.heading, self.objects.scan(r.pos))

    def _observation(self, motion: Tensor, direction: Tensor, heading: Tensor, scan: tuple[Tensor, Tensor, Tensor]
                     ) -> Tensor:
        """proprio | goal lidar | hazard lidar | pillar lidar, from the robot's state and its scan of the objects."""
        return lidar_into(proprio(motion, direction, self._lidar_zeros), *scan, heading, self.objects.column)

    def _transition(self, act: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        before = self.objects.scan(self.robot.pos)[2][:, 0]  # the previous observation's scan
        self.robot.step(act)
        pos, contact = self.robot.pos, None
        if self._pushed or self._near_pillar(pos):
            self.robot.pos, contact = push_out_of_disks(pos, *relative(pos, self.pillar_x, self.pillar_y),
                                                        self.push_radius)
            self._pushed = bool(contact.any())
        # the scan is shared with this step's observation
        return self._outcome(before, self.objects.scan(self.robot.pos)[2], contact)

    def _outcome(self, before: Tensor, dist: Tensor, contact: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """Reward, cost and whether the goal was reached, from the goal distance ``before`` the step and the
        distances ``dist [B, M]`` to every object after it (``contact``: pillar contact, None when not tested)."""
        hazard = dist[:, self.hazards].amin(1) < self._hazard_radius
        cost = hazard.float() if contact is None else contact.float().add_(hazard)
        after = dist[:, 0]
        reached = after < self._goal_radius
        reward = (before - after).add_(reached, alpha=self.cfg.goal_bonus)  # + bonus * 1 or 0: exact
        return reward, cost, reached

    def _pure_state(self) -> dict[str, Tensor]:
        return {**self.robot.state(), "goal_dist": self.objects.scan(self.robot.pos)[2][:, 0]}

    def _load_pure_state(self, state: dict[str, Tensor]) -> None:
        self.robot.load(state)
        self._pushed = True  # not known: the next eager step tests the pillars

    def _pure_transition(self, state: dict[str, Tensor], act: Tensor
                         ) -> tuple[dict[str, Tensor], Tensor, Tensor, Tensor, Tensor]:
        """`_transition` + `_observe` on ``state``; the pillar push runs on every step (a robot that touches no
        pillar is pushed by exactly 0)."""
        r = self.robot
        motion = r.actuate(state["motion"], act)
        pos, heading, direction = r.move(state["pos"], state["heading"], motion)
        contact = None
        if self.push_radius > 1e-6:  # as `_near_pillar`: no contact below that radius
            pos, contact = push_out_of_disks(pos, *relative(pos, self.pillar_x, self.pillar_y), self.push_radius)
        scan = relative(pos, self.objects.x, self.objects.y)
        reward, cost, reached = self._outcome(state["goal_dist"], scan[2], contact)
        moved = {"pos": pos, "heading": heading, "motion": motion, "goal_dist": scan[2][:, 0]}
        return moved, self._observation(motion, direction, heading, scan), reward, cost, reached

    def _pure_start(self, u: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        pos, heading = self._start_pose(u)
        motion = torch.zeros_like(self.robot.motion)
        direction = heading_direction(heading)
        scan = relative(pos, self.objects.x, self.objects.y)
        start = {"pos": pos, "heading": heading, "motion": motion, "goal_dist": scan[2][:, 0]}
        return start, self._observation(motion, direction, heading, scan)

    def _near_pillar(self, pos: Tensor) -> bool:
        """Whether any robot at ``pos`` is inside a pillar's push radius, from the scan the step shares.

        Pushing leaves a robot that touches no pillar where it is, so the push (with its own scan of the
        pillars) runs only on steps that need it and while the last one pushed (large batches push on
        nearly every step). Distances are clamped at 1e-6 in the push: no contact below that radius.
        """
        return self.push_radius > 1e-6 and float(self.objects.scan(pos)[2][:, self.pillars].amin()) < self._push_f32


@dataclass
class PointGoalSplit:
    layout_seed: IntRange = spec((0, 999_999), ge=0, doc="seed of the task's layout")


@dataclass
class PointGoalConfig:
    level: int = spec(2, ge=1, le=2, doc="1: 10 hazards + 1 obstacle; 2: 10 hazards + 10 obstacles")
    horizon: int = spec(1000, ge=1)
    cost_limit: float | None = spec(None, ge=0, doc="d; unset: 0.75 at level 1, 5 at level 2 (C-MAML)")
    goal_arc_deg: float = spec(140.0, gt=0, le=360, doc="the goal lies within this arc seen from the start")
    goal_distance: Range = spec((1.5, 2.5), ge=0, doc="start-goal distance")
    n_hazards: int = spec(10, ge=0)
    goal_radius: float = spec(0.3, gt=0)
    hazard_radius: float = spec(0.2, gt=0)
    pillar_radius: float = spec(0.15, gt=0)
    robot_radius: float = spec(0.1, ge=0)
    goal_bonus: float = spec(1.0, ge=0)
    train: PointGoalSplit = field(default_factory=PointGoalSplit)
    test: PointGoalSplit = field(default_factory=lambda: PointGoalSplit((1_000_000, 1_999_999)))


@register_env("point-goal", "Point robot reaches a goal among hazards and obstacles, level 1 or 2 (C-MAML)")
class PointGoal(TaskFamily):
    name = "point-goal"
    Config = PointGoalConfig

    def __init__(self, cfg: PointGoalConfig):
        super().__init__(cfg)
        (a, b), (c, d) = cfg.train.layout_seed, cfg.test.layout_seed
        if a <= d and c <= b:
            raise UserError(f"{self.name}: the train layout seeds [{a}, {b}] and the test layout seeds [{c}, {d}] "
                            "overlap; give them disjoint ranges.")

    @property
    def cost_limit(self) -> float:
        return float(self.cfg.cost_limit if self.cfg.cost_limit is not None else DEFAULT_COST_LIMIT[self.cfg.level])

    def sample_params(self, split: str, rng: np.random.Generator) -> dict:
        return {"level": self.cfg.level, "layout_seed": draw(rng, getattr(self.cfg, split).layout_seed, integer=True)}

    def layout(self, task: Task) -> dict:
        rng = np.random.default_rng(task.params["layout_seed"])
        start = rng.uniform(-1.0, 1.0, size=2)
        heading = rng.uniform(-math.pi, math.pi)
        half_arc = self.cfg.goal_arc_deg / 2
        bearing = heading + math.radians(rng.uniform(-half_arc, half_arc))
        goal = start + rng.uniform(*self.cfg.goal_distance) * np.array([math.cos(bearing), math.sin(bearing)])
        keep = [(start, 0.6), (goal, 0.5)]
        n_pillars = OBSTACLES_PER_LEVEL[task.params["level"]]
        objects = place_objects(rng, self.cfg.n_hazards + n_pillars, 3.0, 0.45, keepout=keep)
        return {"start": start, "heading": np.float32(heading), "goal": goal,
                "hazards": objects[: self.cfg.n_hazards], "pillars": objects[self.cfg.n_hazards:]}

    def make(self, tasks: list[Task], envs_per_task: int, device: str = "cpu", seed: int = 0) -> GoalEnv:
        return GoalEnv([self.layout(t) for t in tasks], self.cfg, envs_per_task, device, seed)


@dataclass
class PointGoalLevel1Config(PointGoalConfig):
    level: int = spec(1, ge=1, le=2, doc="1: 10 hazards + 1 obstacle; 2: 10 hazards + 10 obstacles")


@register_env("point-goal-level1", "point-goal at level 1 (10 hazards, 1 obstacle, d = 0.75): C-MAML's Environment 1")
class PointGoalLevel1(PointGoal):
    """`point-goal` with level 1 as its default, under its own name so its runs and board stay apart."""

    name = "point-goal-level1"
    Config = PointGoalLevel1Config
