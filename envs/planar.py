"""The shared 2-D world of the built-in batched families: robot dynamics, pseudo-lidar, layouts.

Everything is a tensor over ``B = n_tasks * envs_per_task`` envs; objects of a task (hazards, buttons,
pillars) are padded to the largest count in the batch with a mask, so tasks with different object
counts still step as one tensor program.

Robots (state: position p, heading theta, forward speed v, yaw rate omega; step dt):
- ``point``: a0 drives forward, a1 turns; first-order actuators
  v' = v + dt (k_v a0 - d_v v),  omega' = omega + dt (k_w a1 - d_w omega),  theta' = theta + dt omega',
  p' = p + dt v' (cos theta', sin theta').
- ``car``: two wheels, a0 left and a1 right; targets v* = v_max (a0 + a1) / 2 and
  omega* = v_max (a1 - a0) / wheelbase, reached with a first-order lag.

How this differs from Safety-Gymnasium's MuJoCo robots: these are kinematic first-order models with
no contact dynamics, no lateral slip and no inertia coupling; walls in the circle tasks are
non-physical cost lines (as Safety-Gym's "sigwalls" are); obstacles (pillars) are hard disks enforced
by projecting the robot out of them; speeds and time constants are chosen to be of the same order
(about 1 m/s top speed, 0.5 s time constant), not fitted.

Observation (Safety-Gym's spirit, body frame): forward speed v, yaw rate omega, heading (cos, sin),
then a 16-bin pseudo-lidar per object group: bin b covers relative angles [b, b+1) * 2 pi / 16
counter-clockwise from the heading and reads max over the group's objects of exp(-gain * distance)
(Safety-Gym's ``lidar_exp_gain`` form, without bin aliasing); the wall lidar casts a ray along each
bin's centre and reads exp(-gain * distance to the first wall hit), 0 when no wall is hit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

LIDAR_BINS = 16
PROPRIO_DIM = 4  # v, omega, cos(theta), sin(theta)


@dataclass(frozen=True)
class RobotSpec:
    dt: float = 0.05
    speed_gain: float = 2.0  # k_v (point) ; v_max (car)
    speed_damping: float = 2.0  # d_v (point) ; 1 / time constant (car)
    turn_gain: float = 4.0  # k_w
    turn_damping: float = 2.0  # d_w
    wheelbase: float = 0.5  # car only


class Robot:
    """Batched robot state and dynamics; ``kind`` is ``point`` or ``car``."""

    def __init__(self, kind: str, num_envs: int, device: torch.device, spec: RobotSpec = RobotSpec()):
        if kind not in ("point", "car"):
            raise ValueError(f"unknown robot '{kind}' (point, car)")
        self.kind, self.spec = kind, spec
        self.pos = torch.zeros(num_envs, 2, device=device)
        self.heading = torch.zeros(num_envs, device=device)
        self.speed = torch.zeros(num_envs, device=device)
        self.yaw_rate = torch.zeros(num_envs, device=device)

    def reset(self, mask: Tensor, pos: Tensor, heading: Tensor) -> None:
        m = mask.unsqueeze(-1)
        self.pos = torch.where(m, pos, self.pos)
        self.heading = torch.where(mask, heading, self.heading)
        self.speed = torch.where(mask, torch.zeros_like(self.speed), self.speed)
        self.yaw_rate = torch.where(mask, torch.zeros_like(self.yaw_rate), self.yaw_rate)

    def step(self, act: Tensor) -> None:
        s = self.spec
        if self.kind == "point":
            self.speed = self.speed + s.dt * (s.speed_gain * act[:, 0] - s.speed_damping * self.speed)
            self.yaw_rate = self.yaw_rate + s.dt * (s.turn_gain * act[:, 1] - s.turn_damping * self.yaw_rate)
        else:
            v_target = s.speed_gain * 0.5 * (act[:, 0] + act[:, 1])
            w_target = s.speed_gain * (act[:, 1] - act[:, 0]) / s.wheelbase
            self.speed = self.speed + s.dt * s.speed_damping * (v_target - self.speed)
            self.yaw_rate = self.yaw_rate + s.dt * s.speed_damping * (w_target - self.yaw_rate)
        self.heading = torch.remainder(self.heading + s.dt * self.yaw_rate + math.pi, 2 * math.pi) - math.pi
        self.pos = self.pos + s.dt * self.speed.unsqueeze(-1) * self.direction()

    def direction(self) -> Tensor:
        return torch.stack([torch.cos(self.heading), torch.sin(self.heading)], dim=-1)

    def velocity(self) -> Tensor:
        """World-frame velocity [B, 2]."""
        return self.speed.unsqueeze(-1) * self.direction()

    def proprio(self) -> Tensor:
        return torch.stack([self.speed, self.yaw_rate, torch.cos(self.heading), torch.sin(self.heading)], dim=-1)


def point_lidar(pos: Tensor, heading: Tensor, objects: Tensor, mask: Tensor, gain: float = 1.0) -> Tensor:
    """16-bin lidar of point objects ``objects[B, M, 2]`` (``mask[B, M]`` marks real ones) -> ``[B, 16]``."""
    rel = objects - pos.unsqueeze(1)
    dist = rel.norm(dim=-1)
    angle = torch.remainder(torch.atan2(rel[..., 1], rel[..., 0]) - heading.unsqueeze(1), 2 * math.pi)
    bins = (angle / (2 * math.pi / LIDAR_BINS)).long().clamp(max=LIDAR_BINS - 1)
    value = torch.exp(-gain * dist) * mask
    out = torch.zeros(pos.shape[0], LIDAR_BINS, device=pos.device)
    return out.scatter_reduce(1, bins, value, reduce="amax", include_self=True)


def wall_lidar(pos: Tensor, heading: Tensor, half_width: Tensor, gain: float = 1.0) -> Tensor:
    """Ray lidar of the two vertical walls x = +-half_width[B] -> ``[B, 16]``."""
    centres = (torch.arange(LIDAR_BINS, device=pos.device) + 0.5) * (2 * math.pi / LIDAR_BINS)
    phi = heading.unsqueeze(1) + centres.unsqueeze(0)  # [B, 16] world angle of each ray
    c = torch.cos(phi)
    x = pos[:, :1]
    w = half_width.unsqueeze(1)
    wall_x = torch.where(c > 0, w, -w)
    dist = ((wall_x - x) / c.where(c.abs() > 1e-6, torch.full_like(c, 1e-6))).clamp(min=0.0)
    return torch.where(c.abs() > 1e-6, torch.exp(-gain * dist), torch.zeros_like(dist))


def inside_any(pos: Tensor, centres: Tensor, mask: Tensor, radius: Tensor | float) -> Tensor:
    """``[B]`` bool: is the robot within ``radius`` of any real object."""
    return (((centres - pos.unsqueeze(1)).norm(dim=-1) < radius) & mask).any(dim=1)


def push_out_of_disks(pos: Tensor, centres: Tensor, mask: Tensor, radius: float) -> tuple[Tensor, Tensor]:
    """Project positions out of hard disks (pillars); returns new positions and a contact flag ``[B]``."""
    rel = pos.unsqueeze(1) - centres
    dist = rel.norm(dim=-1).clamp(min=1e-6)
    inside = (dist < radius) & mask
    push = torch.where(inside.unsqueeze(-1), rel / dist.unsqueeze(-1) * (radius - dist).unsqueeze(-1), torch.zeros_like(rel))
    return pos + push.sum(dim=1), inside.any(dim=1)


def pad_objects(per_task: list[np.ndarray], envs_per_task: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Per-task ``[M_i, 2]`` arrays -> ``[B, M_max, 2]`` positions and ``[B, M_max]`` mask (repeated per env)."""
    m = max([len(x) for x in per_task] + [1])
    pos = np.zeros((len(per_task), m, 2), dtype=np.float32)
    mask = np.zeros((len(per_task), m), dtype=bool)
    for i, x in enumerate(per_task):
        pos[i, : len(x)] = x
        mask[i, : len(x)] = True
    return (torch.as_tensor(pos, device=device).repeat_interleave(envs_per_task, 0),
            torch.as_tensor(mask, device=device).repeat_interleave(envs_per_task, 0))


def place_objects(rng: np.random.Generator, n: int, extent: float, min_spacing: float,
                  keepout: list[tuple[np.ndarray, float]] = ()) -> np.ndarray:
    """Rejection-sample ``n`` points in [-extent, extent]^2, ``min_spacing`` apart and outside keep-out disks."""
    points: list[np.ndarray] = []
    for _ in range(10000 * max(n, 1)):
        if len(points) == n:
            break
        p = rng.uniform(-extent, extent, size=2)
        if all(np.linalg.norm(p - q) >= min_spacing for q in points) and \
                all(np.linalg.norm(p - c) >= r for c, r in keepout):
            points.append(p)
    if len(points) < n:
        raise ValueError(f"cannot place {n} objects {min_spacing} apart in [-{extent}, {extent}]^2")
    return np.array(points, dtype=np.float32).reshape(n, 2)
