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


def heading_direction(heading: Tensor) -> Tensor:
    """(cos, sin) of headings ``[B]`` -> ``[B, 2]``."""
    return torch.stack([torch.cos(heading), torch.sin(heading)], dim=-1)


def proprio(motion: Tensor, direction: Tensor, *more: Tensor) -> Tensor:
    """``[B, 4]`` (v, omega, cos, sin) from ``motion`` (v, omega) and ``direction`` (cos, sin), followed by the
    columns of ``more`` if given (one cat for a whole observation)."""
    return torch.cat([motion, direction, *more], dim=-1)


class Robot:
    """Batched robot state and dynamics; ``kind`` is ``point`` or ``car``.

    ``pos`` and ``heading`` are replaced by every update, never written in place (assign a new tensor to
    move a robot by hand): the cached cos/sin of the heading and the families' cached object scans
    (`PointObjects.scan`) are keyed on those tensor objects. Forward speed and yaw rate are the two columns
    of ``motion`` ``[B, 2]`` (``speed`` / ``yaw_rate`` are views of them), so both actuators update in one
    pass; the step's constants are 0-dim tensors of the state's dtype (a Python float argument costs each
    small op about twice its time; the numbers are the same).
    """

    def __init__(self, kind: str, num_envs: int, device: torch.device, spec: RobotSpec = RobotSpec()):
        if kind not in ("point", "car"):
            raise ValueError(f"unknown robot '{kind}' (point, car)")
        self.kind, self.spec = kind, spec
        self.pos = torch.zeros(num_envs, 2, device=device)
        self.heading = torch.zeros(num_envs, device=device)
        self.motion = torch.zeros(num_envs, 2, device=device)  # (forward speed v, yaw rate omega)
        c = lambda x: torch.tensor(x, dtype=torch.float32, device=device)  # noqa: E731
        self._dt, self._pi, self._two_pi = c(spec.dt), c(math.pi), c(2 * math.pi)
        if kind == "point":  # v' = v + dt (k a - d v) for both columns at once
            self._gain, self._damping = c([spec.speed_gain, spec.turn_gain]), c([spec.speed_damping, spec.turn_damping])
        else:  # (a0 + a1, a1 - a0) * (v_max / 2, v_max) / (1, wheelbase): the targets (v*, omega*)
            self._mix = c([[1.0, -1.0], [1.0, 1.0]])
            self._scale, self._wheelbase = c([spec.speed_gain * 0.5, spec.speed_gain]), c([1.0, spec.wheelbase])
            self._lag = c(spec.dt * spec.speed_damping)

    @property
    def heading(self) -> Tensor:
        return self._heading

    @heading.setter
    def heading(self, value: Tensor) -> None:
        self._heading, self._direction = value, None

    @property
    def speed(self) -> Tensor:
        return self.motion[:, 0]

    @speed.setter
    def speed(self, value: Tensor) -> None:
        self.motion = torch.stack([value.expand_as(self.speed), self.yaw_rate], -1)

    @property
    def yaw_rate(self) -> Tensor:
        return self.motion[:, 1]

    @yaw_rate.setter
    def yaw_rate(self, value: Tensor) -> None:
        self.motion = torch.stack([self.speed, value.expand_as(self.yaw_rate)], -1)

    def reset(self, mask: Tensor, pos: Tensor, heading: Tensor) -> None:
        m = mask.unsqueeze(-1)
        self.pos = torch.where(m, pos, self.pos)
        self.heading = torch.where(mask, heading, self.heading)
        self.motion = torch.where(m, torch.zeros_like(self.motion), self.motion)

    def step(self, act: Tensor) -> None:
        self.motion = self.actuate(self.motion, act)
        self.pos, self.heading, self._direction = self.move(self.pos, self.heading, self.motion)

    def state(self) -> dict[str, Tensor]:
        """``pos``, ``heading``, ``motion``: the robot's part of a `PureStepCMDP` state."""
        return {"pos": self.pos, "heading": self.heading, "motion": self.motion}

    def load(self, state: dict[str, Tensor]) -> None:
        self.pos, self.heading, self.motion = state["pos"], state["heading"], state["motion"]

    def actuate(self, motion: Tensor, act: Tensor) -> Tensor:
        """(v, omega) after one step of the actuators at ``act``: a pure function of its arguments and the robot's
        constants (`step`'s first half; compiled collection calls it too)."""
        if self.kind == "point":  # v' = v + dt (k a - d v) for both columns at once
            return motion + self._dt * (act * self._gain - self._damping * motion)
        target = (act @ self._mix) * self._scale / self._wheelbase
        return motion + self._lag * (target - motion)

    def move(self, pos: Tensor, heading: Tensor, motion: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """New position, heading and its (cos, sin) after ``dt`` at ``motion`` (v, omega): pure, as `actuate`."""
        moved = motion * self._dt  # (dt v, dt omega)
        heading = torch.remainder(heading + moved[:, 1] + self._pi, self._two_pi) - self._pi
        direction = heading_direction(heading)
        return pos + moved[:, :1] * direction, heading, direction

    def direction(self) -> Tensor:
        """(cos, sin) of the heading ``[B, 2]``, computed once per heading (dynamics, velocity, observation
        and wall lidar all need it)."""
        if self._direction is None:
            self._direction = heading_direction(self.heading)
        return self._direction

    def velocity(self) -> Tensor:
        """World-frame velocity [B, 2]."""
        return self.motion[:, :1] * self.direction()

    def proprio(self, *more: Tensor) -> Tensor:
        """`proprio` of the robot's own state."""
        return proprio(self.motion, self.direction(), *more)


FAR = 1e6  # where padding objects sit: exp(-gain * distance) is exactly 0 there and no radius test reaches them


class PointObjects:
    """The point objects of a batch of envs (every lidar group at once) in one flat layout.

    ``groups`` are ``(positions [B, M_g, 2], mask [B, M_g], first observation column)``, M_g >= 1; they
    are concatenated along M, so one `scan` gives the offsets and distances to every object (shared by the
    lidar and the cost tests) and one `lidar` call bins every group with one atan2 and one scatter_reduce.
    Coordinates are kept as separate contiguous ``x``, ``y`` tensors ``[B, M]``: atan2, sqrt and friends on
    strided views (of an interleaved ``[B, M, 2]`` tensor, or of the rows of a ``[B, 2, M]`` one) run up to
    10x slower on CPU (measured).
    Padding objects are moved to FAR instead of being masked. The built-in families' objects are static for
    the env's lifetime; `move` relocates a group (the MuJoCo twin's shadow follows objects MuJoCo pushes).
    """

    def __init__(self, groups: list[tuple[Tensor, Tensor, int]]):
        xs, ys, cols, self.slices, start = [], [], [], [], 0
        for objects, mask, column in groups:
            xs.append(objects[..., 0].masked_fill(~mask, FAR))
            ys.append(objects[..., 1].masked_fill(~mask, FAR))
            cols.append(torch.full((mask.shape[1],), column, dtype=torch.long, device=mask.device))
            self.slices.append(slice(start, start + mask.shape[1]))
            start += mask.shape[1]
        self.x, self.y = torch.cat(xs, 1), torch.cat(ys, 1)
        self.column = torch.cat(cols).expand_as(self.x).contiguous()  # [B, M]: adds without broadcasting
        self._scanned: tuple = (None,)

    def move(self, group: int, xy: Tensor) -> None:
        """Put group ``group``'s objects at ``xy [B, M_g, 2]`` (and forget the cached scan)."""
        sl = self.slices[group]
        if xy.shape[1] != sl.stop - sl.start:
            raise ValueError(f"group {group} holds {sl.stop - sl.start} objects, got positions of {xy.shape[1]}")
        self.x[:, sl], self.y[:, sl] = xy[..., 0], xy[..., 1]
        self._scanned = (None,)

    def nearest(self, pos: Tensor, group: int) -> Tensor:
        """``[B]`` distance from each robot to the nearest object of a group (``< radius``: inside one)."""
        return self.scan(pos)[2][:, self.slices[group]].amin(dim=1)

    def scan(self, pos: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Offsets ``dx, dy`` and distances ``[B, M]`` from the robots at ``pos`` to every object.

        Cached for the last ``pos`` tensor: a step's cost test and its observation look from the same
        position, so they share one scan.
        """
        if self._scanned[0] is not pos:
            self._scanned = (pos, *relative(pos, self.x, self.y))
        return self._scanned[1:]

    def lidar(self, pos: Tensor, heading: Tensor, width: int, gain: float = 1.0, out: Tensor | None = None) -> Tensor:
        """Every group's 16-bin lidar in a ``[B, width]`` tensor (zeros outside the groups' columns); written
        into ``out`` instead when given (its lidar columns must hold zeros: e.g. proprioception, then zeros)."""
        if out is None:
            out = torch.zeros(pos.shape[0], width, device=pos.device)
        return lidar_into(out, *self.scan(pos), heading, self.column, gain)


def relative(pos: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Offsets and distances ``[B, M]`` from robots at ``pos[B, 2]`` to objects at ``x, y [B, M]``."""
    dx, dy = x - pos[:, :1], y - pos[:, 1:]
    return dx, dy, torch.sqrt(dx * dx + dy * dy)


_TWO_PI, _BIN = torch.tensor(2 * math.pi), torch.tensor(2 * math.pi / LIDAR_BINS)  # float32, as a Python float acts


def lidar_hits(dx: Tensor, dy: Tensor, dist: Tensor, heading: Tensor, gain: float = 1.0) -> tuple[Tensor, Tensor]:
    """The lidar bin (0..15, counter-clockwise from the heading) and reading exp(-gain * dist) of each object."""
    angle = torch.remainder(torch.atan2(dy, dx).sub_(heading.unsqueeze(1)), _TWO_PI)
    bins = angle.div_(_BIN).long().clamp_(max=LIDAR_BINS - 1)
    return bins, (dist.neg() if gain == 1.0 else -gain * dist).exp_()  # -1 * d is exactly -d


def lidar_into(out: Tensor, dx: Tensor, dy: Tensor, dist: Tensor, heading: Tensor, column: Tensor,
               gain: float = 1.0) -> Tensor:
    """Write the readings of objects at offsets ``dx, dy`` and distances ``dist [B, M]`` into ``out [B, width]``
    (zeros in the lidar columns), object m into bin b of the group starting at column ``column[:, m]``."""
    bins, value = lidar_hits(dx, dy, dist, heading, gain)
    return out.scatter_reduce_(1, bins.add_(column), value, reduce="amax")


def point_lidar(pos: Tensor, heading: Tensor, objects: Tensor, mask: Tensor, gain: float = 1.0) -> Tensor:
    """16-bin lidar of point objects ``objects[B, M, 2]`` (``mask[B, M]`` marks real ones) -> ``[B, 16]``.

    One group on its own; the families use `PointObjects`, which computes the same readings for all
    their groups at once (checked against this in the tests). ``gain`` must be positive.
    """
    return PointObjects([(objects, mask, 0)]).lidar(pos, heading, LIDAR_BINS, gain)


_RAY = (torch.arange(LIDAR_BINS, dtype=torch.float64) + 0.5) * (2 * math.pi / LIDAR_BINS)
_RAY_ROTATION = torch.stack([_RAY.cos(), -_RAY.sin()]).float()  # [2, 16]: (cos h, sin h) -> cos(h + ray)


def wall_lidar(pos: Tensor, heading: Tensor, half_width: Tensor, gain: float = 1.0,
               direction: Tensor | None = None) -> Tensor:
    """Ray lidar of the two vertical walls x = +-half_width (``[B]`` or ``[B, 1]``) -> ``[B, 16]``.

    Ray b points at heading + (b + 1/2) 2 pi / 16; with c its x-direction cosine it hits the wall on its
    side at distance (w - sign(c) x) / |c| (0 inside the wall's cost region), and reads 0 when |c| <= 1e-6.
    c comes from the heading's (cos, sin) (``direction``, `Robot.direction`) by the angle-addition formula
    as one small matmul, and the masks are arithmetic (sign, clamp) rather than where: no trigonometry per
    ray and few passes over ``[B, 16]``.
    """
    if direction is None:
        direction = heading_direction(heading)
    c = direction @ _RAY_ROTATION.to(pos.device)
    along = c.abs()
    hit = along > 1e-6
    half_width = half_width if half_width.dim() == 2 else half_width.unsqueeze(1)
    dist = (half_width - pos[:, :1] * c.sign_()).div_(along.clamp_(min=1e-6))
    reading = dist.clamp_(min=0.0).neg_() if gain == 1.0 else dist.clamp_(min=0.0).mul_(-gain)  # -1 * d is -d
    return reading.exp_().mul_(hit)


def push_out_of_disks(pos: Tensor, dx: Tensor, dy: Tensor, dist: Tensor, radius: float) -> tuple[Tensor, Tensor]:
    """Project positions out of hard disks (pillars) at offsets ``dx, dy`` and distances ``dist [B, P]`` from
    the robots (`relative`); returns new positions and a contact flag ``[B]``.

    Each disk the robot is inside pushes it by (radius - dist) along the unit vector from the disk's
    centre; the depth clamped at 0 makes the others push by exactly 0 without a mask.
    """
    dist = dist.clamp(min=1e-6)
    depth = (radius - dist).clamp_(min=0.0)
    push = torch.stack([(dx / dist * depth).sum(1), (dy / dist * depth).sum(1)], dim=-1)
    return pos - push, dist.amin(dim=1) < radius


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
