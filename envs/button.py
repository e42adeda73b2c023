"""``point-button``: touch the goal button among n_b buttons; other buttons and hazards cost.

Per task (from its layout seed): n_b buttons and n_h hazards placed in [-r_s, r_s]^2, kept apart and
away from the spawn disk at the origin. Per step (Safety-Gym's button task):
    reward = (dist_{t-1} - dist_t) to the goal button + 1 when the goal button is touched,
after which another button becomes the goal (drawn with the env's generator);
    cost = 1 when touching a button that is not the goal (while the buttons timer is 0) + 1 inside a hazard.
Buttons timer (Safety-Gym's ``buttons_timer`` / Safety-Gymnasium 1.0.0's ``Buttons.timer``,
``assets/geoms/buttons.py`` and ``tasks/safe_navigation/button/button_level0.py``): a press sets a per-env
timer to ``resampling_delay`` (10 there); each later step first tests the button cost (charged only when the
timer is 0), then counts the timer down by one, so the ``resampling_delay`` steps after a press pay no
button cost (the robot still on the old goal, now a "wrong" button, paid about 9 per press at full speed
without it), and the button lidar reads 0 while the timer is non-zero, as Safety-Gymnasium blanks
``buttons_lidar`` (the goal-button lidar stays on). An episode reset sets the timer to 0.
Task ranges (Meta-CPO): train (n_b, n_h) in [3, 6], r_s in [1.75, 2.0]; test (n_b, n_h) in [6, 10],
r_s in [2.5, 3.0]; 1000-step episodes. Observation: proprioception + 16-bin lidar of the goal button,
of all buttons and of the hazards.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from safemeta.config.schema import spec
from safemeta.envs.planar import LIDAR_BINS, PROPRIO_DIM, PointObjects, Robot, lidar_hits, pad_objects, place_objects
from safemeta.registry import register_env
from safemeta.rollout.task import IntRange, Range, Task, TaskFamily, draw
from safemeta.rollout.vec_cmdp import BatchedCMDP


class ButtonEnv(BatchedCMDP):
    can_terminate = False  # terminated is always false
    obs_dim = PROPRIO_DIM + 3 * LIDAR_BINS
    act_dim = 2

    def __init__(self, buttons: list[np.ndarray], hazards: list[np.ndarray], cfg: "PointButtonConfig",
                 envs_per_task: int, device: str, seed: int):
        super().__init__(len(buttons), envs_per_task, cfg.horizon, device, seed)
        self.cfg = cfg
        self.buttons, self.button_mask = pad_objects(buttons, envs_per_task, self.device)
        hazards, hazard_mask = pad_objects(hazards, envs_per_task, self.device)
        self.n_buttons = self.button_mask.sum(1)
        self.goal = torch.zeros(self.num_envs, dtype=torch.long, device=self.device)
        # buttons timer: steps left during which buttons cost nothing and the button lidar reads 0.
        # ``_timer_live`` (a Python int) bounds max(button_timer): while it is 0 every timer is 0 and a step
        # spends no tensor op on the timers (issue 16: at small batches a step costs its op count)
        self.button_timer = torch.zeros(self.num_envs, dtype=torch.long, device=self.device)
        self._timer_live = 0
        self.robot = Robot("point", self.num_envs, self.device)
        self.rows = torch.arange(self.num_envs, device=self.device)
        # observation: proprio | goal-button lidar | button lidar | hazard lidar; the goal button's reading
        # is gathered from the button group's (the goal changes within an episode, the buttons do not)
        self.objects = PointObjects([(self.buttons, self.button_mask, PROPRIO_DIM + LIDAR_BINS),
                                     (hazards, hazard_mask, PROPRIO_DIM + 2 * LIDAR_BINS)])
        self.button_cols = self.objects.slices[0]
        self.button_lidar = slice(PROPRIO_DIM + LIDAR_BINS, PROPRIO_DIM + 2 * LIDAR_BINS)
        self._lidar_zeros = torch.zeros(self.num_envs, self.obs_dim - PROPRIO_DIM, device=self.device)

    def _new_goal(self, mask: Tensor, avoid: Tensor | None = None) -> None:
        u = torch.rand(self.num_envs, generator=self.gen, device=self.device)
        if avoid is None:
            pick = (u * self.n_buttons).long()
        else:  # another button than the current goal
            pick = (avoid + 1 + (u * (self.n_buttons - 1)).long()) % self.n_buttons
        self.goal = torch.where(mask, pick, self.goal)

    def goal_pos(self) -> Tensor:
        return self.buttons[self.rows, self.goal]

    def _reset_envs(self, mask: Tensor) -> None:
        u = torch.rand(self.num_envs, 3, generator=self.gen, device=self.device)
        radius, angle = 0.3 * u[:, 0].sqrt(), 2 * math.pi * u[:, 1]
        pos = radius.unsqueeze(-1) * torch.stack([angle.cos(), angle.sin()], -1)
        self.robot.reset(mask, pos, (u[:, 2] * 2 - 1) * math.pi)
        self._new_goal(mask)
        if self._timer_live:  # a new episode starts with its timer at 0 (Safety-Gymnasium's specific_reset)
            self.button_timer = self.button_timer.masked_fill(mask, 0)

    def _observe(self) -> Tensor:
        r = self.robot
        bins, value = lidar_hits(*self.objects.scan(r.pos), r.heading)
        obs = r.proprio(self._lidar_zeros)
        obs.scatter_reduce_(1, bins + self.objects.column, value, reduce="amax")
        goal, buttons = self.goal.unsqueeze(1), self.button_cols
        if self._timer_live:  # the button lidar is blank while an env's timer runs
            obs[:, self.button_lidar] *= (self.button_timer == 0).unsqueeze(1)
        return obs.scatter_(1, bins[:, buttons].gather(1, goal) + PROPRIO_DIM, value[:, buttons].gather(1, goal))

    def _goal_distance(self) -> Tensor:
        return self.objects.scan(self.robot.pos)[2][:, self.button_cols].gather(1, self.goal.unsqueeze(1)).squeeze(1)

    def _transition(self, act: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        before = self._goal_distance()
        self.robot.step(act)
        dist = self.objects.scan(self.robot.pos)[2]  # shared with this step's observation
        reward = before - self._goal_distance()
        touching = dist[:, self.button_cols] < self.cfg.touch_radius
        reached = touching.gather(1, self.goal.unsqueeze(1)).squeeze(1)
        wrong = touching.scatter(1, self.goal.unsqueeze(1), False).any(1)
        # Safety-Gymnasium's order: the button cost is tested with the timer as it stood before this step,
        # then the timer counts down, then a press sets it to the delay
        if self._timer_live:
            wrong &= self.button_timer == 0
            self.button_timer = self.button_timer.sub(1).clamp_(min=0)
            self._timer_live -= 1
        cost = wrong.float() + (self.objects.nearest(self.robot.pos, 1) < self.cfg.hazard_radius).float()
        reward = reward + reached.float() * self.cfg.goal_bonus
        if bool(reached.any()):
            self.button_timer = self.button_timer.masked_fill(reached, self.cfg.resampling_delay)
            self._timer_live = self.cfg.resampling_delay
            self._new_goal(reached, avoid=self.goal)
        return reward, cost, torch.zeros_like(reached)


@dataclass
class PointButtonSplit:
    n_b: IntRange = spec((3, 6), ge=2, doc="number of buttons")
    n_h: IntRange = spec((3, 6), ge=0, doc="number of hazards")
    r_s: Range = spec((1.75, 2.0), gt=0, doc="spawn range: objects in [-r_s, r_s]^2")


@dataclass
class PointButtonConfig:
    horizon: int = spec(1000, ge=1)
    cost_limit: float = spec(25.0, ge=0)
    touch_radius: float = spec(0.25, gt=0)
    hazard_radius: float = spec(0.2, gt=0)
    goal_bonus: float = spec(1.0, ge=0)
    resampling_delay: int = spec(10, ge=0, doc="buttons timer: steps after a press with no button cost and a "
                                 "blank button lidar (Safety-Gym's buttons_resampling_delay, 10)")
    train: PointButtonSplit = field(default_factory=PointButtonSplit)
    test: PointButtonSplit = field(default_factory=lambda: PointButtonSplit((6, 10), (6, 10), (2.5, 3.0)))


@register_env("point-button", "Point robot touches the goal button among n_b buttons and n_h hazards (Meta-CPO)")
class PointButton(TaskFamily):
    name = "point-button"
    Config = PointButtonConfig

    def sample_params(self, split: str, rng: np.random.Generator) -> dict:
        ranges = getattr(self.cfg, split)
        return {"n_b": draw(rng, ranges.n_b, integer=True), "n_h": draw(rng, ranges.n_h, integer=True),
                "r_s": draw(rng, ranges.r_s), "layout_seed": int(rng.integers(2**31))}

    def layout(self, task: Task) -> tuple[np.ndarray, np.ndarray]:
        """(buttons, hazards) of a task, reproducible from its layout seed."""
        p = task.params
        rng = np.random.default_rng(p["layout_seed"])
        objects = place_objects(rng, p["n_b"] + p["n_h"], p["r_s"], 0.45, keepout=[(np.zeros(2), 0.6)])
        return objects[: p["n_b"]], objects[p["n_b"]:]

    def make(self, tasks: list[Task], envs_per_task: int, device: str = "cpu", seed: int = 0) -> ButtonEnv:
        layouts = [self.layout(t) for t in tasks]
        return ButtonEnv([b for b, _ in layouts], [h for _, h in layouts], self.cfg, envs_per_task, device, seed)
