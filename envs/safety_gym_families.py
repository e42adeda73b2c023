"""Safety-Gymnasium task families: ``sg-point-circle``, ``sg-car-circle-hazard``, ``sg-point-button``,
``sg-point-goal``.

The same task distributions as the batched torch families (``point-circle``, ``car-circle-hazard``,
``point-button``, ``point-goal``: same parameter names, splits and horizons), simulated by
safety-gymnasium 1.0.0 / MuJoCo. Each env is one ``safety_gymnasium.builder.Builder``;
`SafetyGymVecCMDP` steps the ``n_tasks * envs_per_task`` of them in a Python loop (task-major order)
and returns float32 torch tensors. One env ran at 250-1800 env-steps/s here (2 shared cores; Point
circle fastest, level-2 goal with 10 vases slowest) instead of ~10^6 for the batched families, so these
are for checking results on the real simulator, not for sweeps. safety-gymnasium is imported
only inside ``make`` (through `safemeta.compat.safety_gym`), so ``safemeta list`` never loads MuJoCo.

Where the task parameters go
----------------------------
A ``Builder`` calls ``_get_task()``, which constructs the level class (e.g. ``CircleLevel1(config)``)
and then builds the observation space; the placements, the layout and the MuJoCo world are built later,
on the first ``reset`` (``Underlying._build``), and the placements dict is then cached for the life
of the env. Two traps decide where the parameters must be applied:

* the ``config`` dict is applied by ``Underlying._parse`` at the *start* of ``BaseTask.__init__``,
  before the level's ``__init__`` body runs, so a level overwrites it: ``CircleLevel0`` sets
  ``num_steps = 500``, ``agent.placements`` and ``agent.keepout = 0``; ``ButtonLevel0/1/2`` and
  ``GoalLevel0/1/2`` set ``placements_conf.extents``. Objects are added in the level's ``__init__`` too,
  so a config key such as ``'hazards.num'`` does not even parse (``assert ... 'Bad key'``).
* ``_build`` turns the objects' ``num`` / ``placements`` / ``locations`` / ``keepout`` into the cached
  placements dict on the first reset only, and some objects cache derived values when constructed:
  ``Sigwalls.__post_init__`` computes the wall ``locations`` from ``locate_factor`` (so changing
  ``locate_factor`` later moves the cost threshold but not the wall geoms).

So `_TaskBuilder._get_task` constructs the level class, then applies the family's parameters
(``configure``), then sets ``num_steps`` to the family horizon, and only then builds the observation
space. Nothing has been laid out yet at that point, and every geom is created from the new values.
Per family (base class in ``safety_gymnasium/tasks/safe_navigation/``):

``sg-point-circle`` (``circle/circle_level1.py: CircleLevel1``, agent ``Point``)
  * r_c -> ``task.circle.radius`` (``assets/geoms/circle.py: Circle``), which sets both the drawn
    cylinder (``Circle.get_config``) and the reward ``CircleLevel0.calculate_reward``:
    0.1 * ((-u y + v x) / r) / (1 + |r - r_c|).
  * s -> the walls: the ``Sigwalls(locate_factor=1.125)`` that ``CircleLevel1.__init__`` adds is
    replaced (``_add_geoms``, same name) by ``Sigwalls(num=2, locate_factor=s * r_c,
    is_constrained=True)`` (``assets/geoms/sigwalls.py``): wall geoms at x = +-s r_c and
    ``cost_out_of_boundary`` = |x| > s r_c.
  * ``agent.placements`` (set by ``CircleLevel0``) is narrowed to |x| <= min(0.8, s r_c - 0.1), so an
    episode never starts behind a wall (``Builder.reset`` asserts a zero starting cost).
``sg-car-circle-hazard`` (the same, agent ``Car``; walls at +-s r_c, s drawn per task as in ``car-circle-hazard``)
  * safety-gymnasium's circle levels have no hazards; they are added with the library's own object
    mechanism: ``_add_geoms(Hazards(num=n_h, size=hazard_radius, keepout=0, locations=...))``
    (``assets/geoms/hazards.py``). ``locations`` pins the n_h centres, drawn from the task's
    ``layout_seed`` on the annulus 0.7 r_c <= |p| <= 1.3 r_c (as in the batched family), so a task
    keeps its hazards across episodes. Cost: ``cost_hazards`` inside a disk, or beyond a wall.
  * ``agent.keepout`` = 0.3 (> the hazard radius) with a correspondingly widened ``agent.placements``,
    so the start is drawn >= 0.3 away from every hazard centre and from the circle centre.
``sg-point-button`` (``button/button_level0.py: ButtonLevel0`` + what ``ButtonLevel1`` adds)
  * r_s -> ``task.placements_conf.extents = [-r_s, -r_s, r_s, r_s]`` (the level sets +-1);
  * n_b -> ``task.buttons.num``; ``buttons.is_constrained = True`` (touching a wrong button costs);
  * n_h -> ``_add_geoms(Hazards(num=n_h, keepout=0.18))`` (as ``ButtonLevel1``); ``n_gremlins`` > 0
    adds ``Gremlins(num, travel=0.35, keepout=0.4)`` (``ButtonLevel1`` has 4; default 0 here, as the
    task distribution names buttons and hazards only);
  * layout_seed -> buttons and hazards are pinned (``locations``) to one layout drawn with
    safety-gymnasium's own sampler (``utils/random_generator.py: RandomGenerator.build_layout``,
    same keepouts and extents) seeded by layout_seed; the start and the goal button vary per episode.
``sg-point-goal`` (``goal/goal_level1.py: GoalLevel1`` / ``goal/goal_level2.py: GoalLevel2``)
  * level 1 -> ``hazards.num = 10`` (the level has 8), 1 vase, extents +-1.5; level 2 -> 10 hazards,
    10 vases, extents +-2 (the level's own). Obstacles are safety-gymnasium **vases**
    (``assets/free_geoms/vases.py``), constrained at both levels (contact and velocity costs);
    ``GoalLevel1`` leaves its vase unconstrained, here an obstacle always costs.
  * layout_seed -> the whole layout is pinned: start (``agent.locations``), start heading
    (``agent.rot``), goal, hazards and vases (``locations``), from the first layout drawn by
    ``RandomGenerator`` (seeded by layout_seed) whose goal lies ``goal_distance`` away from the
    start and inside the ``goal_arc_deg`` (140) degree arc seen from the start, i.e. at a bearing
    within +-70 degrees of the start heading. Train seeds come from [0, 10^6), test from
    [10^6, 2*10^6). ``mechanism_conf.continue_goal = False``: reaching the goal ends the episode
    (terminated) instead of drawing a new goal, which would leave the task's layout.
  * ``observation: planar`` (the twin of ``point-goal``, for ``eval.twin``) pins point-goal's own layout
    instead (its start, heading, goal, hazards and obstacles, drawn from layout_seed by
    ``PointGoal.layout``; keepouts zeroed, as every object is placed by hand) with point-goal's goal and
    hazard radii. The obstacles stay MuJoCo vases: free bodies the robot can push (point-goal's pillars
    are fixed), seen by the twin's lidar where MuJoCo has them at each step.

Reset speed: ``World.build`` adds a skybox texture (six 3-5 MB PNGs) to the MJCF, and decoding it
took ~0.6 s of every reset here (the XML is recompiled at each reset, as the layout changes).
`_LeanWorld` drops that texture before compilation (rendering is never used), which brings a reset
to 15-35 ms. Underlying._build creates a plain ``World`` on the first reset only when ``task.world`` is
None; `_TaskBuilder` gives the task a `_LeanWorld` first, and the first reset then goes through
``World.rebuild(config)``, the same parse + build.

Observations (vs the batched families)
--------------------------------------
safety-gymnasium's flattened observation: the robot's sensors (Point: accelerometer, velocimeter,
gyro, magnetometer = 12; Car adds the rear ball's angular velocity (3) and orientation matrix (9) = 24)
followed by one 16-bin pseudo-lidar per observed object type, in the order the objects were added:
circle tasks: circle centre (max distance 6) [+ hazards]; button: buttons, goal button, hazards
[+ gremlins]; goal: goal, hazards, vases (max distance 3). The walls are *not* observed (no wall lidar,
unlike the batched circle families), the proprioception is raw MuJoCo sensor data instead of the batched
families' normalised velocity/heading features, and nothing in it names the task: r_c, s, n_h, the
layout are inferred from experience, as meta-RL intends. obs_dim: sg-point-circle 28,
sg-car-circle-hazard 56, sg-point-button 60 (+16 with gremlins), sg-point-goal 60.

Cost limits (d, expected episode cost; every step's cost is the 0/1 indicator of any violation):
sg-point-circle 25 (as ``point-circle``), sg-car-circle-hazard 10 in training and 5 at test (Meta-CPO),
sg-point-button 25 (Safety-Gym's usual d for 1000-step episodes, as ``point-button``), sg-point-goal
0.75 at level 1 and 5 at level 2 (C-MAML) unless ``cost_limit`` is set.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable, Literal

import numpy as np
import torch
from torch import Tensor

from safemeta.config.schema import spec
from safemeta.envs.button import PointButton, PointButtonConfig
from safemeta.envs.circle import CarCircleHazard, CarCircleHazardConfig, PointCircle, PointCircleConfig
from safemeta.envs.goal import PointGoal, PointGoalConfig, PointGoalLevel1Config
from safemeta.errors import UserError
from safemeta.registry import register_env
from safemeta.rollout.task import Task, TaskFamily
from safemeta.rollout.vec_cmdp import VecCMDP

_SG: SimpleNamespace | None = None


def _sg() -> SimpleNamespace:
    """safety-gymnasium's classes (imported on first use) and the two adapter classes built on them."""
    global _SG
    if _SG is not None:
        return _SG
    from safemeta.compat.safety_gym import import_safety_gymnasium

    import_safety_gymnasium()  # the 3.11 dataclass workaround; the submodules below are then cached
    import xmltodict
    from safety_gymnasium import tasks
    from safety_gymnasium.assets.free_geoms import Vases
    from safety_gymnasium.assets.geoms import Hazards, Sigwalls
    from safety_gymnasium.assets.mocaps import Gremlins
    from safety_gymnasium.builder import Builder
    from safety_gymnasium.utils.random_generator import RandomGenerator
    from safety_gymnasium.world import World

    class _LeanWorld(World):
        """``World`` that compiles its MJCF without the skybox texture (see the module docstring).

        ``World.build`` assembles ``self.xml``, sets ``self.xml_string = xmltodict.unparse(self.xml)``
        and compiles ``self.xml_string``; the setter below drops skybox textures from ``self.xml`` at
        that point and stores the re-serialised XML instead.
        """

        @property
        def xml_string(self) -> str | None:
            return self._lean_xml

        @xml_string.setter
        def xml_string(self, value: str | None) -> None:
            asset = (self.xml or {}).get("mujoco", {}).get("asset") if value is not None else None
            textures = asset.get("texture") if isinstance(asset, dict) else None
            if isinstance(textures, dict):
                textures = [textures]
            if textures is not None:
                kept = [t for t in textures if not (isinstance(t, dict) and t.get("@type") == "skybox")]
                if len(kept) != len(textures):
                    asset["texture"] = kept
                    value = xmltodict.unparse(self.xml)
            self._lean_xml = value

    class _TaskBuilder(Builder):
        """A ``Builder`` whose task is ``base_cls`` with a family's parameters applied by ``configure``
        right after the level's ``__init__``: before the observation space, the placements, the layout
        and the MuJoCo world exist."""

        def __init__(self, base_cls: type, configure: Callable[[Any], None], agent: str, horizon: int,
                     seed: int):
            self._base_cls, self._configure, self._horizon = base_cls, configure, horizon
            self._default_seed = seed
            super().__init__(task_id=f"safemeta-{base_cls.__name__}", config={"agent_name": agent})

        def _get_task(self):
            task = self._base_cls(config=self.config)
            self._configure(task)
            task.num_steps = self._horizon  # the level's own value (CircleLevel0: 500) would end episodes
            task.world = _LeanWorld(task.agent, task._obstacles)
            task.build_observation_space()
            return task

        def set_seed(self, seed: int | None = None) -> None:
            # Builder draws an unseeded seed from numpy's global RNG when none is given; use ours
            super().set_seed(self._default_seed if seed is None else seed)

    _SG = SimpleNamespace(tasks=tasks, Hazards=Hazards, Sigwalls=Sigwalls, Gremlins=Gremlins, Vases=Vases,
                          RandomGenerator=RandomGenerator, TaskBuilder=_TaskBuilder, LeanWorld=_LeanWorld)
    return _SG


def env_seed(seed: int, index: int) -> int:
    """The seed of env ``index`` for a batch seeded with ``seed`` (a 32-bit value, as RandomState needs)."""
    return int(np.random.SeedSequence([int(seed) % 2**64, int(index)]).generate_state(1)[0])


class SafetyGymVecCMDP(VecCMDP):
    """``VecCMDP`` over a list of safety-gymnasium envs, stepped one after another.

    Actions are made finite and clipped to the env's action box; an env that terminates (goal reached
    where that ends the episode) or reaches ``horizon`` steps is reset at once, and ``info["final_obs"]``
    holds its last observation. ``reset(seed)`` reseeds env i with `env_seed` (seed, i); an unseeded
    first reset uses the ``seed`` given to the constructor; later resets continue each env's stream.
    The envs live in this process (they do not pickle: their classes are defined on first use).
    """

    def __init__(self, envs: list, n_tasks: int, envs_per_task: int, horizon: int, device: str = "cpu",
                 seed: int = 0):
        if len(envs) != n_tasks * envs_per_task:
            raise ValueError(f"expected {n_tasks * envs_per_task} envs, got {len(envs)}")
        self.envs = envs
        self.n_tasks, self.envs_per_task, self.horizon = n_tasks, envs_per_task, int(horizon)
        self.device = torch.device(device)
        dims = {int(np.prod(e.observation_space.shape)) for e in envs}
        if len(dims) != 1:
            raise ValueError(f"the envs disagree on the observation size: {sorted(dims)}")
        self.obs_dim = dims.pop()
        space = envs[0].action_space
        self.act_dim = int(np.prod(space.shape))
        self.act_low = np.asarray(space.low, dtype=np.float64).reshape(-1)
        self.act_high = np.asarray(space.high, dtype=np.float64).reshape(-1)
        self.seed = int(seed)
        self.t = np.zeros(len(envs), dtype=np.int64)
        self._started = False

    def _obs_tensor(self, rows: list[np.ndarray]) -> Tensor:
        return torch.as_tensor(np.stack(rows), dtype=torch.float32).to(self.device)

    def _row(self, env: Any, obs: np.ndarray, fresh: bool) -> np.ndarray:
        """What env's current observation contributes to the batch (`_obs_tensor` stacks the rows): its own.
        ``fresh``: the env was just reset."""
        return obs

    def reset(self, seed: int | None = None) -> Tensor:
        if seed is None and not self._started:
            seed = self.seed
        rows = []
        for i, env in enumerate(self.envs):
            obs, _ = env.reset(seed=None if seed is None else env_seed(seed, i))
            rows.append(self._row(env, obs, True))
        self.t[:] = 0
        self._started = True
        return self._obs_tensor(rows)

    def step(self, act: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, dict]:
        if not self._started:
            raise RuntimeError("call reset() before step()")
        a = torch.as_tensor(act).detach().to("cpu", torch.float64).numpy().reshape(len(self.envs), self.act_dim)
        a = np.clip(np.nan_to_num(a, nan=0.0), self.act_low, self.act_high)
        n = len(self.envs)
        rew, cost = np.zeros(n, dtype=np.float64), np.zeros(n, dtype=np.float64)
        term, trunc = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
        final, nxt = [], []
        for i, env in enumerate(self.envs):
            obs, r, c, terminated, _, _ = env.step(a[i])
            self.t[i] += 1
            rew[i], cost[i], term[i] = r, c, terminated
            trunc[i] = (not terminated) and self.t[i] >= self.horizon
            row = self._row(env, obs, False)
            final.append(row)
            if term[i] or trunc[i]:
                obs, _ = env.reset()
                self.t[i] = 0
                row = self._row(env, obs, True)
            nxt.append(row)
        to = lambda x, dt: torch.as_tensor(x, dtype=dt).to(self.device)  # noqa: E731
        return (self._obs_tensor(nxt), to(rew, torch.float32), to(cost, torch.float32), to(term, torch.bool),
                to(trunc, torch.bool), {"final_obs": self._obs_tensor(final)})

    def close(self) -> None:
        for env in self.envs:
            env.close()


class PlanarObservations(SafetyGymVecCMDP):
    """The MuJoCo envs' dynamics, costs and rewards with the built-in twin's observations (the reality gap).

    Each observation is the twin's (`safemeta.envs.planar`: v, omega, cos, sin of the heading, then its
    lidars) computed from the MuJoCo robot's state: position and heading from the agent body (the Point's
    forward direction is its x axis; the Car's is its -y axis, where its front bumper is); v and omega as the twin defines them, p' = p + dt v (cos, sin)(theta') and
    theta' = theta + dt omega, i.e. the forward displacement and the heading's change over the last control
    step (dt = MuJoCo's timestep x frameskip; both 0 right after a reset; MuJoCo's gyro and hinge velocity
    were found to hold stale values after a reset); the objects from a ``shadow`` twin env built from the same
    tasks (the circle's centre and walls sit where the MuJoCo task puts them). A policy meta-trained on the
    twin thus acts in MuJoCo unchanged; what differs is the physics (inertia, contacts, actuator response).
    Rewards are in the twin's units (safety-gymnasium's circle reward carries a factor 0.1, divided out here).
    Actions mean what they mean in the twin: the Car's MuJoCo motors are (``left``, ``right``) joints whose
    wheels sit on its right and left side when it faces forward, so the twin's (left, right) wheel actions are
    passed to them swapped.
    """

    def __init__(self, envs: list, shadow: Any, n_tasks: int, envs_per_task: int, horizon: int,
                 device: str = "cpu", seed: int = 0, robot: str = "point", moving: tuple[str, int] | None = None):
        super().__init__(envs, n_tasks, envs_per_task, horizon, device, seed)
        self.shadow, self.obs_dim, self.robot = shadow, shadow.obs_dim, robot
        self.moving = moving  # (safety-gymnasium object, the shadow's object group) whose bodies MuJoCo moves
        self._pose: dict[int, tuple[np.ndarray, float]] = {}  # env -> (position, heading) at its last row

    def step(self, act: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, dict]:
        obs, rew, cost, term, trunc, info = super().step(act.flip(-1) if self.robot == "car" else act)
        return obs, rew / self._reward_factor, cost, term, trunc, info

    @property
    def _reward_factor(self) -> float:
        """safety-gymnasium's circle reward is the twin's formula times ``reward_factor`` (0.1): divided out, so
        that returns are in the twin's units and the two meta-tests compare."""
        return float(getattr(self.envs[0].task, "reward_factor", 1.0))

    def _row(self, env: Any, obs: np.ndarray, fresh: bool) -> np.ndarray:
        agent = env.task.agent
        pos, mat = agent.pos[:2].copy(), agent.mat
        heading = (math.atan2(mat[1, 0], mat[0, 0]) if self.robot == "point"
                   else math.atan2(-mat[1, 1], -mat[0, 1]))  # the Car faces its body's -y axis
        last_pos, last_heading = (pos, heading) if fresh else self._pose[id(env)]
        self._pose[id(env)] = (pos, heading)
        dt = agent.engine.model.opt.timestep * env.task.sim_conf.frameskip_binom_n
        forward = float(np.dot(pos - last_pos, (math.cos(heading), math.sin(heading)))) / dt
        turned = math.remainder(heading - last_heading, 2 * math.pi) / dt
        moved = [] if self.moving is None else [p[:2] for p in getattr(env.task, self.moving[0]).pos]
        return np.concatenate([[*pos, heading, forward, turned], *moved])

    def _obs_tensor(self, rows: list[np.ndarray]) -> Tensor:
        state = torch.as_tensor(np.stack(rows), dtype=torch.float32).to(self.device)
        robot = self.shadow.robot
        robot.pos, robot.heading, robot.motion = state[:, :2].contiguous(), state[:, 2].contiguous(), state[:, 3:5]
        if self.moving is not None:  # pushed objects (point-goal's vases) are seen where MuJoCo has them now
            self.shadow.objects.move(self.moving[1], state[:, 5:].reshape(len(rows), -1, 2))
        return self.shadow._observe()


# -- shared helpers ---------------------------------------------------------------------------------------

def _pin_layout(task: Any, layout_seed: int, names: tuple[str, ...],
                accept: Callable[[dict, float], bool] | None = None, tries: int = 10_000) -> tuple[dict, float]:
    """Draw one layout with safety-gymnasium's sampler (the task's extents, keepouts and placements)
    seeded by ``layout_seed``, and fix the objects ``names`` to it through their ``locations``.

    ``accept(layout, heading)`` may reject a draw (the next one is taken). The placements dict is
    cleared afterwards, so the first reset rebuilds it from the pinned locations.
    """
    sg = _sg()
    task._build_placements_dict()
    pc = task.placements_conf
    rng = sg.RandomGenerator()
    rng.set_placements_info(pc.placements, pc.extents, pc.margin)
    rng.set_random_seed(int(layout_seed))
    for _ in range(tries):
        layout = {k: np.asarray(v, dtype=np.float64).copy() for k, v in rng.build_layout().items()}
        heading = float(rng.random_rot())
        if accept is None or accept(layout, heading):
            break
    else:
        raise RuntimeError(f"no acceptable layout in {tries} draws for layout seed {layout_seed}")
    for name in names:
        obj = task.agent if name == "agent" else getattr(task, name)
        if hasattr(obj, "num"):
            obj.locations = [layout[f"{name[:-1]}{i}"] for i in range(obj.num)]
        else:
            obj.locations = [layout[name]]
    pc.placements = None
    return layout, heading


def _circle_walls(task: Any, r_c: float, wall: float, agent_keepout: float) -> None:
    """Circle radius r_c, walls at x = +-wall, and a start box that stays inside the walls."""
    sg = _sg()
    task.circle.radius = float(r_c)
    task._add_geoms(sg.Sigwalls(num=2, locate_factor=float(wall), is_constrained=True))
    half_x = min(0.8, wall - 0.1)
    k = agent_keepout  # RandomGenerator shrinks a placement box by the keepout: widen it by as much
    task.agent.keepout = k
    task.agent.placements = [(-half_x - k, -0.8 - k, half_x + k, 0.8 + k)]


class _SafetyGymFamily(TaskFamily):
    """Shared ``make``: one `_TaskBuilder` per env, configured by ``configure(task_obj, task.params)``."""

    agent: str  # safety-gymnasium robot name

    def _base_name(self) -> str:
        raise NotImplementedError

    def _configure(self, task: Any, params: dict) -> None:
        raise NotImplementedError

    def _moving_objects(self) -> tuple[str, int] | None:
        """With ``observation: planar``: the safety-gymnasium objects that MuJoCo moves (free bodies) and the
        twin's object group that shows them; None where every object stays put."""
        return None

    def make(self, tasks: list[Task], envs_per_task: int, device: str = "cpu", seed: int = 0) -> SafetyGymVecCMDP:
        sg = _sg()
        base_cls = getattr(sg.tasks, self._base_name())
        envs = []
        for k, task in enumerate(tasks):
            for j in range(envs_per_task):
                i = k * envs_per_task + j
                envs.append(sg.TaskBuilder(base_cls, lambda obj, p=task.params: self._configure(obj, p), self.agent,
                                           self.horizon, env_seed(seed, i)))
        if getattr(self.cfg, "observation", "sensors") == "planar":  # the twin's own make builds the shadow
            shadow = super(_SafetyGymFamily, self).make(tasks, envs_per_task, device, seed)
            return PlanarObservations(envs, shadow, len(tasks), envs_per_task, self.horizon, device, seed,
                                      self.agent.lower(), self._moving_objects())
        return SafetyGymVecCMDP(envs, len(tasks), envs_per_task, self.horizon, device, seed)


# -- the families: each inherits its built-in twin's Config, task sampling and cost limits ------------------

@dataclass
class SGPointCircleConfig(PointCircleConfig):
    observation: Literal["sensors", "planar"] = spec(
        "sensors", doc="sensors: safety-gymnasium's observation; planar: point-circle's, computed from the MuJoCo "
                       "robot's state (meta-test a policy trained on point-circle here: the reality gap)")


@register_env("sg-point-circle", "Safety-Gymnasium Point circle: radius r_c, walls at +-s r_c (MuJoCo)")
class SGPointCircle(_SafetyGymFamily, PointCircle):
    name = "sg-point-circle"
    Config = SGPointCircleConfig
    agent = "Point"

    def _base_name(self) -> str:
        return "CircleLevel1"

    def _configure(self, task: Any, params: dict) -> None:
        _circle_walls(task, params["r_c"], params["s"] * params["r_c"], agent_keepout=0.0)


@dataclass
class SGCarCircleHazardConfig(CarCircleHazardConfig):
    hazard_radius: float = spec(0.2, gt=0, lt=0.3, doc="hazard radius (safety-gymnasium's hazard size 0.2)")
    observation: Literal["sensors", "planar"] = spec(
        "sensors", doc="sensors: safety-gymnasium's observation; planar: car-circle-hazard's, computed from the "
                       "MuJoCo robot's state, with its wheel actions (the reality gap)")


@register_env("sg-car-circle-hazard", "Safety-Gymnasium Car circle between walls among n_h hazards (MuJoCo)")
class SGCarCircleHazard(_SafetyGymFamily, CarCircleHazard):
    name = "sg-car-circle-hazard"
    Config = SGCarCircleHazardConfig
    agent = "Car"

    def _base_name(self) -> str:
        return "CircleLevel1"

    def _configure(self, task: Any, params: dict) -> None:
        r_c = params["r_c"]
        _circle_walls(task, r_c, params["s"] * r_c, agent_keepout=0.3)
        centres = self.hazards(params)
        task._add_geoms(_sg().Hazards(num=len(centres), size=self.cfg.hazard_radius, keepout=0.0,
                                      locations=[c for c in centres]))


@dataclass
class SGPointButtonConfig(PointButtonConfig):
    n_gremlins: int = spec(0, ge=0, doc="moving gremlins (safety-gymnasium's Button1 has 4)")


@register_env("sg-point-button", "Safety-Gymnasium Point button: n_b buttons, n_h hazards in [-r_s, r_s]^2 (MuJoCo)")
class SGPointButton(_SafetyGymFamily, PointButton):
    name = "sg-point-button"
    Config = SGPointButtonConfig
    agent = "Point"

    def _base_name(self) -> str:
        return "ButtonLevel0"

    def _configure(self, task: Any, params: dict) -> None:
        sg = _sg()
        r_s = float(params["r_s"])
        task.placements_conf.extents = [-r_s, -r_s, r_s, r_s]
        task.buttons.num = int(params["n_b"])
        task.buttons.is_constrained = True
        task._add_geoms(sg.Hazards(num=int(params["n_h"]), keepout=0.18))
        if self.cfg.n_gremlins:
            task._add_mocaps(sg.Gremlins(num=self.cfg.n_gremlins, travel=0.35, keepout=0.4))
        _pin_layout(task, params["layout_seed"], ("buttons", "hazards"))


@dataclass
class SGPointGoalConfig(PointGoalConfig):
    observation: Literal["sensors", "planar"] = spec(
        "sensors", doc="sensors: safety-gymnasium's observation, on layouts from its own sampler; planar: "
                       "point-goal's, computed from the MuJoCo robot's state, on point-goal's own layouts (the "
                       "reality gap)")


@register_env("sg-point-goal", "Safety-Gymnasium Point goal, level 1 or 2, one fixed layout per task (MuJoCo)")
class SGPointGoal(_SafetyGymFamily, PointGoal):
    name = "sg-point-goal"
    Config = SGPointGoalConfig
    agent = "Point"

    def _base_name(self) -> str:
        return f"GoalLevel{int(self.cfg.level)}"

    def accepts(self, start: np.ndarray, heading: float, goal: np.ndarray) -> bool:
        """Whether ``goal`` is at the configured distance and inside the arc seen from (start, heading)."""
        d = np.asarray(goal, dtype=np.float64)[:2] - np.asarray(start, dtype=np.float64)[:2]
        lo, hi = self.cfg.goal_distance
        bearing = math.atan2(d[1], d[0]) - heading
        bearing = (bearing + math.pi) % (2 * math.pi) - math.pi
        return lo <= float(np.hypot(*d)) <= hi and abs(bearing) <= math.radians(self.cfg.goal_arc_deg) / 2

    def _configure(self, task: Any, params: dict) -> None:
        if int(params["level"]) != int(self.cfg.level):
            raise UserError(f"sg-point-goal: a level-{params['level']} task given to a level-{self.cfg.level} family.")
        task.hazards.num = self.cfg.n_hazards
        task.vases.is_constrained = True
        task.mechanism_conf.continue_goal = False
        if self.cfg.observation == "planar":
            self._pin_twin_layout(task, self.layout(Task(self.name, "test", 0, dict(params))))
            return
        _, heading = _pin_layout(task, params["layout_seed"], ("agent", "goal", "hazards", "vases"),
                                 accept=lambda lay, h: self.accepts(lay["agent"], h, lay["goal"]))
        task.agent.rot = heading

    def _pin_twin_layout(self, task: Any, layout: dict) -> None:
        """The twin's own layout (`PointGoal.layout`: start, heading, goal, hazards, pillars as vases) pinned
        into the MuJoCo task, with the twin's goal and hazard radii; keepouts are zeroed, as every object is
        placed by hand (the twin spaces them itself). The start is the layout's exactly: the twin's per-episode
        jitter of the start (+-0.1, +-0.25 rad) is not reproduced."""
        pin = lambda obj, points: setattr(obj, "locations", [tuple(map(float, p)) for p in points])  # noqa: E731
        pin(task.agent, [layout["start"]])
        pin(task.goal, [layout["goal"]])
        task.hazards.num, task.vases.num = len(layout["hazards"]), len(layout["pillars"])
        pin(task.hazards, layout["hazards"])
        pin(task.vases, layout["pillars"])
        task.goal.size, task.hazards.size = float(self.cfg.goal_radius), float(self.cfg.hazard_radius)
        for obj in (task.agent, task.goal, task.hazards, task.vases):
            obj.keepout = 0.0
        task.placements_conf.margin = 0.0
        task.agent.rot = float(layout["heading"])

    def _moving_objects(self) -> tuple[str, int] | None:
        return "vases", 2  # the twin's groups: goal, hazards, pillars


@dataclass
class SGPointGoalLevel1Config(PointGoalLevel1Config, SGPointGoalConfig):
    """point-goal-level1's settings (level 1 by default) with the MuJoCo family's ``observation``."""


@register_env("sg-point-goal-level1", "sg-point-goal at level 1 (d = 0.75): the MuJoCo twin of point-goal-level1")
class SGPointGoalLevel1(SGPointGoal):
    """`sg-point-goal` with level 1 as its default, under the name `eval.twin` looks up for point-goal-level1."""

    name = "sg-point-goal-level1"
    Config = SGPointGoalLevel1Config
