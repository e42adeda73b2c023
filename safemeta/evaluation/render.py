"""Pictures of a run's policies on held-out tasks (`safemeta render RUN_DIR`).

    tasks  = family.sample(max(indices) + 1, "test", seed)   (seed: the run's eval.seed, the meta-test's draw)
    before = the meta-policy theta;  after = theta adapted to the task by K inner steps (the solver's output)
    one env per panel, both reset with the same seed (same start); actions are the policies' means;
    a row per task, [before | after]; a frame every ``every`` steps of one episode (up to ``steps``)

Each panel shows the task's geometry (robot, goal, hazards, walls, buttons, pillars), the robot's trail and
its running return and cost; the robot turns red on steps that cost. A panel whose episode ended (point-goal
reached its goal) keeps its last state. The built-in planar families, tiny-nav, nav2d-hazard and
tabular-gridworld are drawn with matplotlib (Agg) from the env objects' state; the ``sg-`` families are
photographed top-down by MuJoCo's offscreen renderer, which needs a GL backend (MUJOCO_GL=egl or osmesa; the
first one that works is chosen when MUJOCO_GL is unset). Frames go to a GIF (Pillow, a fast octree palette per
frame) and, where imageio-ffmpeg is installed, to an MP4 beside it (imageio's ffmpeg writer). An existing output
is never overwritten unless ``force``: the name gets a suffix (render-2.gif, ...).
"""
from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from safemeta.errors import UserError
from safemeta.rollout.task import Task, TaskFamily
from safemeta.envs.button import PointButton
from safemeta.envs.circle import CarCircleHazard, PointCircle
from safemeta.envs.goal import PointGoal
from safemeta.envs.nav2d_hazard import Nav2DHazard
from safemeta.envs.planar import FAR
from safemeta.envs.safety_gym_families import _SafetyGymFamily, env_seed
from safemeta.envs.safety_gym_plain import SGEnv
from safemeta.envs.tabular_gridworld import TabularGridworld
from safemeta.envs.tiny_nav import TinyNav

PANEL = 320   # pixels: a panel is PANEL x PANEL
HEADER = 40   # pixels at the top of a panel for its two text lines; the world is drawn below them
DPI = 100
MAX_STEPS = 400  # default episode length shown (the family's horizon when shorter)

COLORS = {  # flat, opaque colours (a test finds a goal or hazard by its pixel)
    "goal": "#2ca02c", "hazard": "#7e57c2", "button": "#ff9f1c", "pillar": "#5d6d7e", "wall": "#d62728",
    "cost_region": "#fbe3e3", "circle": "#9e9e9e", "robot": "#111111", "robot_cost": "#d62728",
    "trail_before": "#9e9e9e", "trail_after": "#1f77b4", "cell": "#ffffff", "grid": "#cccccc",
}


def rgb(name: str) -> tuple[int, int, int]:
    """A colour of `COLORS` as an (r, g, b) tuple of 0..255."""
    h = COLORS[name].lstrip("#")
    return tuple(int(h[i:i + 2], 16) for i in (0, 2, 4))


# -- what a panel steps: one env of one task -------------------------------------------------------------------

class _Stepper:
    """One env of one task stepped by hand; ``env`` is what the family's drawer reads."""

    env: Any
    horizon: int

    def reset(self) -> torch.Tensor: ...

    def step(self, act: torch.Tensor) -> tuple[torch.Tensor, float, float, bool]: ...

    def close(self) -> None:
        pass


class _BatchedStepper(_Stepper):
    """A `BatchedCMDP` with one env that never resets itself: when its episode ends the frame keeps the last
    state (the auto-reset would move the robot back to the start)."""

    def __init__(self, family: TaskFamily, task: Task, seed: int):
        self.env = family.make([task], 1, "cpu", seed)
        self.horizon, self.seed = int(self.env.horizon), seed

    def reset(self) -> torch.Tensor:
        obs = self.env.reset(self.seed)
        self.env._reset_envs = lambda mask: None  # this env only: the episode's end stays on screen
        return obs

    def step(self, act: torch.Tensor) -> tuple[torch.Tensor, float, float, bool]:
        obs, rew, cost, term, trunc, _ = self.env.step(act)
        return obs, float(rew[0]), float(cost[0]), bool(term[0] or trunc[0])


class _SafetyGymStepper(_Stepper):
    """The one safety-gymnasium env of an ``sg-`` family's batch, stepped directly (as `SafetyGymVecCMDP` does,
    without its reset at the episode's end); ``env`` is the safety-gymnasium ``Builder``."""

    def __init__(self, family: TaskFamily, task: Task, seed: int):
        self.venv = family.make([task], 1, "cpu", seed)
        self.env, self.horizon, self.seed, self.t = self.venv.envs[0], int(self.venv.horizon), seed, 0

    def reset(self) -> torch.Tensor:
        obs, _ = self.env.reset(seed=env_seed(self.seed, 0))
        self.t = 0
        return self.venv._obs_tensor([obs])

    def step(self, act: torch.Tensor) -> tuple[torch.Tensor, float, float, bool]:
        a = np.nan_to_num(act.detach().cpu().double().numpy().reshape(-1), nan=0.0)
        obs, r, c, term, _, _ = self.env.step(np.clip(a, self.venv.act_low, self.venv.act_high))
        self.t += 1
        return self.venv._obs_tensor([obs]), float(r), float(c), bool(term) or self.t >= self.horizon

    def close(self) -> None:
        viewers = getattr(self.env.task, "_viewers", {})
        for viewer in viewers.values():
            viewer.close()
        viewers.clear()
        self.env.task.viewer = None


def _is_safety_gym(family: TaskFamily) -> bool:
    return isinstance(family, (_SafetyGymFamily, SGEnv))


# -- drawing ---------------------------------------------------------------------------------------------------

Updater = Callable[[Any, float], None]  # (env, this step's cost) -> None: moves what moves
Drawer = Callable[..., Updater]  # (axes, env, family, task, trail=colour name) -> updater


def _disk(ax, xy, radius: float, color: str, z: float = 1.0, **kw):
    from matplotlib.patches import Circle

    return ax.add_patch(Circle(tuple(map(float, xy)), radius, facecolor=COLORS[color], edgecolor="none", zorder=z,
                               **kw))


def _group(objects, group: int) -> np.ndarray:
    """The real (unpadded) objects of a `PointObjects` group of env 0, ``[M, 2]``."""
    sl = objects.slices[group]
    xy = torch.stack([objects.x[0, sl], objects.y[0, sl]], -1).cpu().numpy()
    return xy[np.abs(xy).max(1) < FAR / 2]


def _square(ax, points: Sequence, margin: float) -> float:
    """Limits around ``points`` with ``margin``, one scale for x and y (x shows more: the area is wider than
    high); returns the span shown vertically."""
    p = np.asarray(points, dtype=float).reshape(-1, 2)
    lo, hi = p.min(0) - margin, p.max(0) + margin
    centre, half = (lo + hi) / 2, float((hi - lo).max()) / 2
    wide = PANEL / (PANEL - HEADER)  # the world area's width / height in pixels: one scale for x and y
    ax.set_xlim(centre[0] - half * wide, centre[0] + half * wide)
    ax.set_ylim(centre[1] - half, centre[1] + half)
    return 2 * half


class _Robot:
    """The robot (a disk, with a heading tick when it has one) and its trail."""

    def __init__(self, ax, radius: float, trail: str):
        from matplotlib.lines import Line2D

        self.body = _disk(ax, (0, 0), radius, "robot", z=5, animated=True)
        self.tick = ax.add_line(Line2D([], [], color="white", linewidth=1.5, zorder=6, animated=True))
        self.trail = ax.add_line(Line2D([], [], color=COLORS[trail], linewidth=1.5, zorder=4, animated=True))
        self.radius, self.xs, self.ys = radius, [], []

    def move(self, x: float, y: float, heading: float | None, cost: float) -> None:
        self.xs.append(x)
        self.ys.append(y)
        self.trail.set_data(self.xs, self.ys)
        self.body.set_center((x, y))
        self.body.set_facecolor(COLORS["robot_cost" if cost > 0 else "robot"])
        if heading is not None:
            r = self.radius
            self.tick.set_data([x, x + r * math.cos(heading)], [y, y + r * math.sin(heading)])


def _planar_robot(ax, radius: float, trail: str) -> Updater:
    robot = _Robot(ax, radius, trail)

    def update(env, cost: float) -> None:
        if hasattr(env, "robot"):
            (x, y), heading = env.robot.pos[0].tolist(), float(env.robot.heading[0])
        else:
            (x, y), heading = env.pos[0].tolist(), None
        robot.move(x, y, heading, cost)
    return update


def draw_circle(ax, env, family: TaskFamily, task: Task, trail: str = "trail_after") -> Updater:
    """point-circle / car-circle-hazard: the circle r_c (dashed), the walls x = +-s r_c with the cost region
    beyond them shaded, the hazards."""
    from matplotlib.patches import Circle, Rectangle

    r_c, wall = float(env.r_c[0]), float(env.wall[0])
    hazards = _group(env.objects, 1) if env.with_hazards else np.zeros((0, 2))
    reach = max(1.3 * r_c + env.hazard_radius, wall, 1.0) + 0.25
    _square(ax, [(-reach, -reach), (reach, reach)], 0.0)
    far = 10 * reach
    for x0 in (wall, -wall - far):
        ax.add_patch(Rectangle((x0, -far), far, 2 * far, facecolor=COLORS["cost_region"], edgecolor="none", zorder=0))
    for x in (wall, -wall):
        ax.plot([x, x], [-far, far], color=COLORS["wall"], linewidth=2, zorder=1)
    ax.add_patch(Circle((0, 0), r_c, fill=False, edgecolor=COLORS["circle"], linestyle="--", linewidth=1.2, zorder=1))
    for h in hazards:
        _disk(ax, h, env.hazard_radius, "hazard")
    return _planar_robot(ax, 0.1, trail)


def draw_button(ax, env, family: TaskFamily, task: Task, trail: str = "trail_after") -> Updater:
    """point-button: the buttons (the current goal button green, the others orange; a ring marks the touch
    radius), the hazards."""
    from matplotlib.patches import Circle

    cfg = env.cfg
    buttons = env.buttons[0][env.button_mask[0]].cpu().numpy()
    hazards = _group(env.objects, 1)
    _square(ax, np.concatenate([buttons, hazards, np.zeros((1, 2))]), 0.5)
    for h in hazards:
        _disk(ax, h, cfg.hazard_radius, "hazard")
    disks = [_disk(ax, b, 0.6 * cfg.touch_radius, "button", z=2, animated=True) for b in buttons]
    for b in buttons:
        ax.add_patch(Circle(tuple(b), cfg.touch_radius, fill=False, edgecolor=COLORS["grid"], linewidth=0.8, zorder=1))
    robot = _planar_robot(ax, 0.1, trail)

    def update(env, cost: float) -> None:
        goal = int(env.goal[0])
        for i, d in enumerate(disks):
            d.set_facecolor(COLORS["goal" if i == goal else "button"])
        robot(env, cost)
    return update


def draw_goal(ax, env, family: TaskFamily, task: Task, trail: str = "trail_after") -> Updater:
    """point-goal (levels 1 and 2): the goal disk (its reach radius), the hazards, the pillars, the start."""
    cfg = env.cfg
    goal, start = env.goal[0].cpu().numpy(), env.start[0].cpu().numpy()
    hazards, pillars = _group(env.objects, 1), _group(env.objects, 2)
    _square(ax, np.concatenate([hazards, pillars, goal[None], start[None]]), 0.5)
    _disk(ax, goal, cfg.goal_radius, "goal")
    for h in hazards:
        _disk(ax, h, cfg.hazard_radius, "hazard")
    for p in pillars:
        _disk(ax, p, cfg.pillar_radius, "pillar")
    ax.plot(*start, marker="x", color=COLORS["circle"], markersize=6, zorder=1)
    return _planar_robot(ax, cfg.robot_radius, trail)


def draw_point_nav(ax, env, family: TaskFamily, task: Task, trail: str = "trail_after") -> Updater:
    """tiny-nav / nav2d-hazard: the goal (a disk of 4% of the view) and the hazard disk; the start at the origin."""
    goal, hazard = env.goal[0].cpu().numpy(), env.hazard[0].cpu().numpy()
    radius = float(env.radius[0]) if hasattr(env, "radius") else float(env.cfg.hazard_radius)
    span = _square(ax, [goal, hazard, (0.0, 0.0)], max(0.15, 1.5 * radius))
    _disk(ax, hazard, radius, "hazard")
    _disk(ax, goal, 0.04 * span, "goal")
    return _planar_robot(ax, 0.025 * span, trail)


def draw_gridworld(ax, env, family: TaskFamily, task: Task, trail: str = "trail_after") -> Updater:
    """tabular-gridworld: the n x n cells (costly ones in the hazard colour, the goal green); row 0 on top."""
    from matplotlib.patches import Rectangle

    n = int(family.cfg.size)
    costly, goal = set(task.params["costly"]), int(task.params["goal"])
    for s in range(n * n):
        row, col = divmod(s, n)
        color = "goal" if s == goal else "hazard" if s in costly else "cell"
        ax.add_patch(Rectangle((col, n - 1 - row), 1, 1, facecolor=COLORS[color], edgecolor=COLORS["grid"], zorder=0))
    _square(ax, [(0, 0), (n, n)], 0.05)
    robot = _Robot(ax, 0.25, trail)

    def update(env, cost: float) -> None:
        row, col = divmod(int(env.state[0]), n)
        robot.move(col + 0.5, n - 0.5 - row, None, cost)
    return update


def draw_safety_gym(ax, env, family: TaskFamily, task: Task, trail: str = "trail_after") -> Updater:
    """``sg-`` families: MuJoCo's offscreen picture of the env, from a camera looking straight down."""
    width, height = PANEL, PANEL - HEADER
    sg_task = env.task
    sg_task.render_conf.lidar_markers = False
    sg_task.model.vis.global_.offwidth, sg_task.model.vis.global_.offheight = width, height
    try:
        viewer = sg_task._get_viewer("rgb_array")
    except Exception as exc:  # noqa: BLE001 (a GL context that fails here fails with the library's own types)
        raise UserError(f"MuJoCo's offscreen renderer failed with MUJOCO_GL={os.environ.get('MUJOCO_GL', '')!r}: "
                        f"{exc}. Set MUJOCO_GL to a working backend (egl or osmesa).") from None
    p = task.params
    reach = (1.5 * p["r_c"] + 0.5 if "r_c" in p else p["r_s"] + 0.7 if "r_s" in p else 3.5)
    cam = viewer.cam
    cam.lookat[:] = (0.0, 0.0, 0.0)
    cam.elevation, cam.azimuth = -90.0, 90.0
    cam.distance = reach / math.tan(math.radians(float(sg_task.model.vis.global_.fovy) / 2))
    image = ax.imshow(np.zeros((height, width, 3), np.uint8), extent=(0, width, 0, height), interpolation="nearest",
                      animated=True)
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)

    def update(env, cost: float) -> None:
        image.set_data(env.task.render(width, height, "rgb_array", camera_id=-1, cost={"cost_sum": cost}))
    return update


# dispatch by family class, most specific first: the sg- families subclass their built-in twins
DRAWERS: list[tuple[tuple[type, ...], Drawer]] = [
    ((_SafetyGymFamily, SGEnv), draw_safety_gym),
    ((PointCircle, CarCircleHazard), draw_circle),
    ((PointButton,), draw_button),
    ((PointGoal,), draw_goal),
    ((TinyNav, Nav2DHazard), draw_point_nav),
    ((TabularGridworld,), draw_gridworld),
]


def drawable() -> list[str]:
    """Names of the registered families `render` can draw (plugin families that subclass one of them count)."""
    from safemeta import registry

    return [n for n in registry.env.names() if _drawer_class(registry.env.get(n)) is not None]


def _drawer_class(cls: type) -> Drawer | None:
    return next((d for classes, d in DRAWERS if issubclass(cls, classes)), None)


def drawer_for(family: TaskFamily) -> Drawer:
    drawer = _drawer_class(type(family))
    if drawer is None:
        raise UserError(f"render cannot draw the family '{family.name}' (class {type(family).__name__}): it draws "
                        f"{', '.join(drawable())} and families that subclass theirs.")
    return drawer


# -- MuJoCo's GL backend ---------------------------------------------------------------------------------------

_GL_PROBE = """
import mujoco
m = mujoco.MjModel.from_xml_string('<mujoco><worldbody><geom size="1"/></worldbody></mujoco>')
r = mujoco.Renderer(m, 16, 16)
d = mujoco.MjData(m)
mujoco.mj_forward(m, d)
r.update_scene(d)
r.render()
r.close()
print("ok")
"""


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


_GL_LIBRARIES = {"egl": ("EGL", "libEGL (e.g. Debian's libegl1)"), "osmesa": ("OSMesa", "libOSMesa (libosmesa6)")}


def _probe_gl(backend: str) -> str | None:
    """None when MuJoCo renders offscreen with MUJOCO_GL=``backend`` (tried in a child process: a broken GL
    library can crash it), else why not: the missing library, or the child's error."""
    import ctypes.util

    if backend in _GL_LIBRARIES and ctypes.util.find_library(_GL_LIBRARIES[backend][0]) is None:
        return f"{_GL_LIBRARIES[backend][1]} is not installed"
    env = {**os.environ, "MUJOCO_GL": backend}
    if backend in ("egl", "osmesa"):
        env["PYOPENGL_PLATFORM"] = backend
    try:
        r = subprocess.run([sys.executable, "-c", _GL_PROBE], capture_output=True, text=True, env=env, timeout=120)
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    if r.returncode == 0 and r.stdout.strip().endswith("ok"):
        return None
    first = r.stderr.split("Exception ignored in")[0]  # the error itself, not the destructors' noise after it
    lines = [ln.strip() for ln in first.splitlines() if ln.strip() and not ln.startswith(" ")]
    errors = [ln for ln in lines if "Error" in ln or "error" in ln]
    return ((errors or lines or [f"exit code {r.returncode}"])[-1])[:200]


def gl_backend(family_name: str = "this family") -> str:
    """The MuJoCo GL backend for offscreen pictures: MUJOCO_GL when set (checked), else the first of egl, osmesa
    (glfw with a DISPLAY) that works, which is then set in os.environ. A `UserError` naming what is missing when
    there is none."""
    twin = _twin(family_name)
    also = f" The built-in twin '{twin}' renders without GL." if twin else ""
    for module, package in (("mujoco", "mujoco"), ("safety_gymnasium", "safety-gymnasium")):
        if not _installed(module):
            raise UserError(f"Cannot render '{family_name}': the Python package '{package}' is not installed (`make "
                            f"venv` installs the pinned stack).{also}")
    chosen = os.environ.get("MUJOCO_GL", "").strip().lower()
    candidates = [chosen] if chosen else ["egl", "osmesa"] + (["glfw"] if os.environ.get("DISPLAY") else [])
    reasons = {}
    for backend in candidates:
        why = _probe_gl(backend)
        if why is None:
            if not chosen:
                os.environ["MUJOCO_GL"] = backend
                if backend in ("egl", "osmesa"):
                    os.environ.setdefault("PYOPENGL_PLATFORM", backend)
            return backend
        reasons[backend] = why
    tried = "; ".join(f"MUJOCO_GL={b}: {why}" for b, why in reasons.items())
    no_display = "" if os.environ.get("DISPLAY") else " There is no display for glfw either (DISPLAY is unset)."
    hint = (f" MUJOCO_GL={chosen} does not work here: unset it (egl and osmesa are then tried) or set another."
            if chosen else no_display)
    raise UserError(f"Cannot render '{family_name}': MuJoCo's offscreen renderer needs an OpenGL backend and none "
                    f"works on this machine ({tried}).{hint} Install EGL (a GPU driver, or Mesa's libegl1 and "
                    f"libgl1) or OSMesa (libosmesa6) and set MUJOCO_GL=egl or MUJOCO_GL=osmesa.{also}")


def _twin(family_name: str) -> str | None:
    """The built-in family an ``sg-`` family mirrors (drawn without GL), if any."""
    from safemeta import registry

    if family_name not in registry.env.names():
        return None
    for base in registry.env.get(family_name).__mro__[1:]:
        if (issubclass(base, TaskFamily) and getattr(base, "name", None) and not issubclass(base, _SafetyGymFamily)
                and _drawer_class(base) is not None):
            return base.name
    return None


def check_renderable(family_cls: type, family_name: str) -> None:
    """Raise a `UserError` unless `render` can draw this family here (for ``sg-`` ones: a GL backend)."""
    if _drawer_class(family_cls) is None:
        raise UserError(f"render cannot draw the family '{family_name}' (class {family_cls.__name__}): it draws "
                        f"{', '.join(drawable())} and families that subclass theirs.")
    if issubclass(family_cls, (_SafetyGymFamily, SGEnv)):
        gl_backend(family_name)


# -- panels and boards -----------------------------------------------------------------------------------------

@dataclass
class Column:
    """One column of a board: its label and the policy's parameters (None: the meta-policy theta)."""

    label: str
    params: dict | None
    trail: str = "trail_after"


class _Panel:
    def __init__(self, fig, row: int, col: int, n_rows: int, n_cols: int, family: TaskFamily, task: Task,
                 seed: int, title: str, trail: str):
        width, height = n_cols * PANEL, n_rows * PANEL
        x0, top = col * PANEL, height - row * PANEL
        self.ax = fig.add_axes((x0 / width, (top - PANEL) / height, PANEL / width, (PANEL - HEADER) / height))
        self.ax.set_xticks([])
        self.ax.set_yticks([])
        for spine in self.ax.spines.values():
            spine.set_edgecolor(COLORS["grid"])
        self.stepper = (_SafetyGymStepper if _is_safety_gym(family) else _BatchedStepper)(family, task, seed)
        self.obs = self.stepper.reset()
        self.update = drawer_for(family)(self.ax, self.stepper.env, family, task, trail=trail)
        text = dict(fontsize=9, family="DejaVu Sans", verticalalignment="top")
        fig.text((x0 + 6) / width, (top - 3) / height, title, fontweight="bold", **text)
        self.status = fig.text((x0 + 6) / width, (top - 20) / height, "", animated=True, **text)
        self.t, self.ret, self.cost, self.done = 0, 0.0, 0.0, False
        self.update(self.stepper.env, 0.0)
        self._show()

    def step(self, policy: Callable[[torch.Tensor], torch.Tensor]) -> None:
        if self.done:
            return
        self.obs, r, c, self.done = self.stepper.step(policy(self.obs))
        self.t += 1
        self.ret += r
        self.cost += c
        self.update(self.stepper.env, c)
        self._show()

    def _show(self) -> None:
        end = "  (ended)" if self.done and self.t < self.stepper.horizon else ""
        self.status.set_text(f"t {self.t}   return {self.ret:.2f}   cost {self.cost:g}{end}")

    def to_pixel(self, x: float, y: float) -> tuple[int, int]:
        """(row, col) of the board's image at world point (x, y)."""
        px, py = self.ax.transData.transform((x, y))
        return int(round(self.ax.figure.bbox.height - py - 0.5)), int(round(px - 0.5))


class Board:
    """A figure of ``len(rows)`` tasks x ``len(columns)`` policies, one env per panel, stepped together."""

    def __init__(self, family: TaskFamily, tasks: list[Task], columns: list[Column], seed: int,
                 labels: list[str] | None = None):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.fig = Figure(figsize=(len(columns) * PANEL / DPI, len(tasks) * PANEL / DPI), dpi=DPI, facecolor="white")
        FigureCanvasAgg(self.fig)
        self.columns = columns
        self._background, self._moving = None, []
        labels = labels or [f"task {i}" for i in range(len(tasks))]
        self.panels = [[_Panel(self.fig, i, j, len(tasks), len(columns), family, task, seed,
                               f"{labels[i]}: {col.label}", col.trail) for j, col in enumerate(columns)]
                       for i, task in enumerate(tasks)]

    def close(self) -> None:
        """Free the panels' envs (MuJoCo's GL contexts now, not at interpreter exit, where EGL complains)."""
        for row in self.panels:
            for panel in row:
                panel.stepper.close()

    def image(self) -> np.ndarray:
        """The board as an RGB array ``[rows * PANEL, columns * PANEL, 3]`` (uint8).

        What never moves (geometry, titles) is drawn once and kept as a background; each frame restores it and
        draws only the artists marked ``animated`` (robot, trail, goal button, MuJoCo picture, running numbers):
        text is most of a full draw's time.
        """
        canvas = self.fig.canvas
        if self._background is None:
            canvas.draw()  # leaves the animated artists out
            self._background = canvas.copy_from_bbox(self.fig.bbox)
            self._moving = sorted(self.fig.findobj(lambda a: a.get_animated()), key=lambda a: a.get_zorder())
        else:
            canvas.restore_region(self._background)
        for artist in self._moving:
            self.fig.draw_artist(artist)
        return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def snapshot(family: TaskFamily, task: Task, seed: int = 0) -> tuple[np.ndarray, Callable[[float, float], tuple]]:
    """One panel of ``task`` at its reset state: ``(image [PANEL, PANEL, 3], to_pixel(x, y) -> (row, col))``."""
    board = Board(family, [task], [Column("reset", None)], seed)
    image = board.image()
    board.close()
    return image, board.panels[0][0].to_pixel


# -- the command ------------------------------------------------------------------------------------------------

def mp4_unavailable() -> str | None:
    """Why no MP4 can be written here (None: imageio's ffmpeg writer is available)."""
    if not _installed("imageio_ffmpeg"):
        return "no MP4: the package imageio-ffmpeg is not installed (the GIF is written)"
    try:
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as exc:  # noqa: BLE001 (it raises RuntimeError, or OSError on a broken binary)
        return f"no MP4: imageio-ffmpeg has no ffmpeg binary ({exc})"
    return None


def free_path(out: Path, force: bool) -> Path:
    """``out``, or with ``force`` false and ``out`` (or its .mp4 sibling) taken, the first free ``stem-N``."""
    if force:
        return out
    candidate, n = out, 1
    while candidate.exists() or candidate.with_suffix(".mp4").exists():
        n += 1
        candidate = out.with_name(f"{out.stem}-{n}{out.suffix}")
    return candidate


def _load(run_dir: Path):
    from safemeta import registry
    from safemeta.config.loader import load_config, run_plugins
    from safemeta.training.trainer import MetaTrainer

    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"'{run_dir}' is not a run directory (no config.yaml in it).")
    cfg = load_config(run_dir / "config.yaml", run_plugins(run_dir))  # with the plugins the run was trained with
    check_renderable(registry.env.get(cfg.env), cfg.env)  # before building anything (sg-: the GL backend)
    trainer = MetaTrainer(cfg)
    trainer.load_checkpoint(run_dir)
    return trainer


def render(run_dir: str | Path, tasks: Sequence[int] = (0, 1), adapt_steps: int | None = None,
           seed: int | None = None, out: str | Path | None = None, force: bool = False, steps: int | None = None,
           every: int | None = None, fps: float | None = None, mp4: bool = True) -> list[Path]:
    """Write a GIF (and an MP4 where imageio-ffmpeg is installed) of a run's policies on held-out tasks.

    ``tasks``: indices into the held-out draw of ``seed`` (default the run's eval.seed: the meta-test's tasks);
    ``adapt_steps``: K (default the run's eval.adapt_steps); ``seed`` also seeds the adaptation and the shown
    episode; ``out``: a .gif path (default RUN_DIR/render.gif), never overwritten unless ``force`` (a suffix is
    added instead); ``steps``: the episode steps shown (default the horizon, at most 400); ``every``: a frame
    every this many steps (default 1 up to 100 steps, else 2); ``fps`` (default frames / 10, within 5..20).
    Frames: steps // every + 1, each ``len(tasks) * PANEL`` high and ``2 * PANEL`` wide. Returns the paths written.
    """
    import imageio.v2 as iio2
    from PIL import Image

    run_dir = Path(run_dir)
    tasks = list(tasks)
    if not tasks or min(tasks) < 0:
        raise UserError(f"--tasks takes indices >= 0 of the held-out draw, got {tasks}.")
    for name, value, low in (("adapt-steps", adapt_steps, 0), ("steps", steps, 1), ("every", every, 1)):
        if value is not None and value < low:
            raise UserError(f"--{name} must be >= {low}, got {value}.")
    if fps is not None and fps <= 0:
        raise UserError(f"--fps must be > 0, got {fps}.")
    out = Path(out) if out is not None else run_dir / "render.gif"
    if out.suffix.lower() != ".gif":
        raise UserError(f"--out must name a .gif file (the MP4 goes beside it), got '{out}'.")
    trainer = _load(run_dir)
    try:
        cfg, family = trainer.cfg, trainer.family
        k = cfg.eval.adapt_steps if adapt_steps is None else adapt_steps
        seed = cfg.eval.seed if seed is None else seed
        drawn = family.sample(max(tasks) + 1, "test", np.random.default_rng(seed))
        chosen = [drawn[i] for i in tasks]
        adapted = [trainer.adapted_params(task, k, seed) if k else None for task in chosen]
        device = next(iter(trainer.meta.theta.values())).device
        policy = lambda params: lambda obs: trainer.act(obs.to(device), params).cpu()  # noqa: E731
        columns = [Column("meta-policy, before adaptation", None, "trail_before"),
                   Column(f"after K={k} step{'' if k == 1 else 's'} of {cfg.inner}", None)]
        board, writer, partial = Board(family, chosen, columns, seed, labels=[f"task {i}" for i in tasks]), None, {}
        try:
            horizon = min(p.stepper.horizon for row in board.panels for p in row)
            steps = min(steps or MAX_STEPS, horizon)
            every = every or (1 if steps <= 100 else 2)
            n_frames = steps // every + 1
            fps = fps or min(20.0, max(5.0, n_frames / 10))
            out = free_path(out, force)
            out.parent.mkdir(parents=True, exist_ok=True)
            mp4_path = out.with_suffix(".mp4")
            partial = {p: p.with_name(f".{p.stem}.partial{p.suffix}") for p in (out, mp4_path)}
            if mp4 and not mp4_unavailable():
                writer = iio2.get_writer(partial[mp4_path], format="FFMPEG", fps=fps, codec="libx264", quality=6,
                                         macro_block_size=16, pixelformat="yuv420p")
            gif = []  # palette frames: a fast octree palette each (median cut, the default, is 10x slower)
            for i in range(n_frames):
                for _ in range(every if i else 0):
                    _step_rows(board, policy, adapted)
                frame = board.image()
                gif.append(Image.fromarray(frame).quantize(256, method=Image.Quantize.FASTOCTREE))
                if writer is not None:
                    writer.append_data(frame)
        except BaseException:
            if writer is not None:
                writer.close()
                writer = None
            for path in partial.values():
                path.unlink(missing_ok=True)
            raise
        finally:
            board.close()
            if writer is not None:
                writer.close()
        durations = [round(1000 / fps)] * (n_frames - 1) + [1500]  # the last frame holds 1.5 s before the loop
        gif[0].save(partial[out], format="GIF", save_all=True, append_images=gif[1:], duration=durations, loop=0)
        written = [out] + ([mp4_path] if writer is not None else [])
        for path in written:
            os.replace(partial[path], path)
        return written
    finally:
        trainer.close()


def _step_rows(board: Board, policy, adapted: list) -> None:
    """One step of every panel: column 0 the meta-policy, column 1 the policy adapted to that row's task."""
    for row, params in zip(board.panels, adapted):
        row[0].step(policy(None))
        row[1].step(policy(params))
