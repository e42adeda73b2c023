"""Safety-Gymnasium task families (envs/safety_gym_families.py).

Tests that build MuJoCo envs are marked ``safety_gym``; the split/config tests run without MuJoCo.
"""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

import safemeta
from safemeta.envs import safety_gym_families as sgf
from safemeta.envs.goal import PointGoalSplit
from safemeta.errors import UserError
from safemeta.rollout.task import Task

FAMILIES = {"sg-point-circle": (sgf.SGPointCircle, 28), "sg-car-circle-hazard": (sgf.SGCarCircleHazard, 56),
            "sg-point-button": (sgf.SGPointButton, 60), "sg-point-goal": (sgf.SGPointGoal, 60)}


def _family(cls, **kw):
    return cls(cls.Config(**kw))


def _task(name: str, **params) -> Task:
    return Task(name, "train", 0, params)


def _geoms(env, prefix: str) -> list[str]:
    m = env.task.model
    return [m.geom(i).name for i in range(m.ngeom) if m.geom(i).name.rstrip("0123456789") == prefix]


def _place_point(env, xy) -> None:
    """Put the Point robot at world ``xy`` at rest (its slide joints move in the start frame)."""
    import mujoco

    m, d = env.task.model, env.task.data
    q = m.body("agent").quat
    theta = 2 * math.atan2(q[3], q[0])
    off = np.asarray(xy, dtype=np.float64) - m.body("agent").pos[:2]
    c, s = math.cos(theta), math.sin(theta)
    d.qpos[m.joint("x").qposadr[0]] = c * off[0] + s * off[1]
    d.qpos[m.joint("y").qposadr[0]] = -s * off[0] + c * off[1]
    d.qvel[:] = 0
    mujoco.mj_forward(m, d)
    np.testing.assert_allclose(env.task.agent.pos[:2], xy, atol=1e-9)


# -- without MuJoCo ---------------------------------------------------------------------------------------

def test_importing_the_module_does_not_load_mujoco():
    code = ("import sys, safemeta.envs.safety_gym_families; "
            "bad = [m for m in ('mujoco', 'safety_gymnasium') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_split_draws_lie_in_their_ranges(name):
    cls, _ = FAMILIES[name]
    fam = _family(cls)
    for split in ("train", "test"):
        ranges = getattr(fam.cfg, split)
        tasks = fam.sample(100, split, np.random.default_rng(3))
        for t in tasks:
            for key, (lo, hi) in vars(ranges).items():
                v = t.params[key]
                assert lo <= v <= hi, (split, key, v)
                if isinstance(lo, int):
                    assert isinstance(v, int)
        assert fam.sample(5, split, np.random.default_rng(7)) == fam.sample(5, split, np.random.default_rng(7))


def test_split_ranges_of_the_papers_and_cost_limits():
    circle = _family(sgf.SGPointCircle)
    assert (circle.cfg.train.r_c, circle.cfg.train.s) == ((1.0, 1.5), (0.65, 0.75))
    assert (circle.cfg.test.r_c, circle.cfg.test.s) == ((2.0, 2.5), (0.55, 0.65))
    assert circle.horizon == 500
    car = _family(sgf.SGCarCircleHazard)
    assert (car.cfg.train.n_h, car.cfg.test.n_h) == ((3, 7), (7, 12))
    assert (car.cost_limit_for("train"), car.cost_limit_for("test")) == (10.0, 5.0)
    button = _family(sgf.SGPointButton)
    assert (button.cfg.test.n_b, button.cfg.test.n_h, button.cfg.test.r_s) == ((6, 10), (6, 10), (2.5, 3.0))
    assert button.horizon == 1000
    assert _family(sgf.SGPointGoal, level=1).cost_limit == 0.75
    assert _family(sgf.SGPointGoal, level=2).cost_limit_for("test") == 5.0
    assert _family(sgf.SGPointGoal, level=1, cost_limit=2.0).cost_limit == 2.0


def test_goal_layout_seeds_are_disjoint_between_splits():
    fam = _family(sgf.SGPointGoal)
    train = {t.params["layout_seed"] for t in fam.sample(500, "train", np.random.default_rng(0))}
    test = {t.params["layout_seed"] for t in fam.sample(500, "test", np.random.default_rng(0))}
    assert max(train) < 1_000_000 <= min(test) and not train & test
    with pytest.raises(UserError, match="overlap"):
        _family(sgf.SGPointGoal, train=PointGoalSplit((0, 10)), test=PointGoalSplit((5, 20)))


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_env_overlays_and_config_validate_through_the_loader(name):
    cfg = safemeta.resolve_config([("t", {"env": name})])  # defaults + preset + configs/envs/<name>.yaml
    assert cfg.env_params == FAMILIES[name][0].Config()
    assert cfg.trainer.envs_per_task == 2


def test_goal_config_level_and_optional_cost_limit():
    cfg = safemeta.resolve_config([("t", {"env": "sg-point-goal", "env_cfg": {"sg-point-goal": {"level": 1}}})])
    assert cfg.env_params.level == 1 and cfg.env_params.cost_limit is None
    with pytest.raises(UserError):
        safemeta.resolve_config([("t", {"env": "sg-point-goal", "env_cfg": {"sg-point-goal": {"level": 3}}})])


# -- with MuJoCo ------------------------------------------------------------------------------------------

@pytest.mark.safety_gym
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_make_reset_step_shapes_and_values(name):
    cls, obs_dim = FAMILIES[name]
    fam = _family(cls)
    venv = fam.make(fam.sample(2, "train", np.random.default_rng(0)), 2, seed=0)
    assert (venv.num_envs, venv.obs_dim, venv.act_dim, venv.horizon) == (4, obs_dim, 2, fam.horizon)
    obs = venv.reset(seed=0)
    assert obs.shape == (4, obs_dim) and obs.dtype == torch.float32
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        obs, rew, cost, term, trunc, info = venv.step(3 * torch.randn(4, 2, generator=gen))  # clipped to [-1, 1]
        assert obs.shape == info["final_obs"].shape == (4, obs_dim)
        assert rew.shape == cost.shape == term.shape == trunc.shape == (4,)
        assert obs.dtype == rew.dtype == cost.dtype == torch.float32 and term.dtype == trunc.dtype == torch.bool
        assert torch.isfinite(obs).all() and torch.isfinite(rew).all() and (cost >= 0).all()
    model = venv.envs[0].task.model
    assert model.ntex == 1  # the skybox is not compiled (_LeanWorld): only the floor's checker texture


@pytest.mark.safety_gym
def test_circle_radius_and_walls_reach_the_simulator():
    fam = _family(sgf.SGPointCircle)
    params = [{"r_c": 1.0, "s": 0.7}, {"r_c": 2.5, "s": 0.6}]
    venv = fam.make([_task(fam.name, **p) for p in params], 1, seed=0)
    venv.reset(seed=1)
    for env, p in zip(venv.envs, params):
        wall = p["s"] * p["r_c"]
        assert env.task.circle.radius == p["r_c"]
        assert env.task.model.geom("circle").size[0] == pytest.approx(p["r_c"])
        assert sorted(env.task.model.body(n).pos[0] for n in _geoms(env, "sigwall")) == pytest.approx([-wall, wall])
        assert abs(env.task.agent.pos[0]) < wall  # the start box stays inside the walls
    # reward: 0.1 * tangential speed / (1 + |r - r_c|) with each task's own r_c
    rewards = []
    for _ in range(3):
        _, rew, *_ = venv.step(torch.tensor([[1.0, 0.5], [1.0, 0.5]]))
        for i, (env, p) in enumerate(zip(venv.envs, params)):
            (x, y, _), (u, v, _) = env.task.agent.pos, env.task.agent.vel
            r = math.hypot(x, y)
            expected = 0.1 * ((-u * y + v * x) / r) / (1 + abs(r - p["r_c"]))
            assert float(rew[i]) == pytest.approx(expected, rel=1e-4, abs=1e-6)
        rewards.append(rew)
    # cost: 1 exactly beyond the task's wall
    for inside, expected in ((True, 0.0), (False, 1.0)):
        for env, p in zip(venv.envs, params):
            wall = p["s"] * p["r_c"]
            _place_point(env, (wall - 0.1 if inside else wall + 0.1, 0.3))
        _, _, cost, *_ = venv.step(torch.zeros(2, 2))
        assert cost.tolist() == [expected, expected]


@pytest.mark.safety_gym
def test_car_circle_hazards_exist_are_pinned_and_cost():
    fam = _family(sgf.SGCarCircleHazard)
    tasks = [_task(fam.name, r_c=0.8, n_h=3, layout_seed=1, s=0.7),
             _task(fam.name, r_c=1.4, n_h=11, layout_seed=2, s=0.6)]
    venv = fam.make(tasks, 1, seed=0)
    venv.reset(seed=0)
    for env, t in zip(venv.envs, tasks):
        assert len(_geoms(env, "hazard")) == env.task.hazards.num == t.params["n_h"]
        centres = fam.hazards(t.params)
        radii = np.linalg.norm(centres, axis=1)
        assert ((radii >= 0.7 * t.params["r_c"] - 1e-9) & (radii <= 1.3 * t.params["r_c"] + 1e-9)).all()
        np.testing.assert_allclose([p[:2] for p in env.task.hazards.pos], centres, atol=1e-6)
        wall = t.params["s"] * t.params["r_c"]
        assert sorted(env.task.model.body(n).pos[0] for n in _geoms(env, "sigwall")) == pytest.approx([-wall, wall])
        assert env.task.model.geom("circle").size[0] == pytest.approx(t.params["r_c"])
    venv.reset()  # a new episode keeps the task's hazards
    for env, t in zip(venv.envs, tasks):
        np.testing.assert_allclose([p[:2] for p in env.task.hazards.pos], fam.hazards(t.params), atol=1e-6)
    # the car's free joint: put it on hazard 0 (and inside the walls, which the annulus may not be)
    import mujoco

    env = venv.envs[1]
    m, d = env.task.model, env.task.data
    inside = [c for c in fam.hazards(tasks[1].params) if abs(c[0]) < tasks[1].params["s"] * 1.4 - 0.1]
    adr = m.joint("agent").qposadr[0]
    d.qpos[adr:adr + 2] = inside[0]
    mujoco.mj_forward(m, d)
    assert env.task.calculate_cost()["cost_hazards"] > 0


@pytest.mark.safety_gym
def test_button_counts_extents_and_pinned_layout():
    fam = _family(sgf.SGPointButton)
    tasks = [_task(fam.name, n_b=3, n_h=6, r_s=1.8, layout_seed=5), _task(fam.name, n_b=9, n_h=7, r_s=2.9, layout_seed=6)]
    venv = fam.make(tasks, 2, seed=0)
    venv.reset(seed=0)
    layouts = []
    for k, t in enumerate(tasks):
        p = t.params
        env, twin = venv.envs[2 * k], venv.envs[2 * k + 1]
        assert len(_geoms(env, "button")) == env.task.buttons.num == p["n_b"]
        assert len(_geoms(env, "hazard")) == env.task.hazards.num == p["n_h"]
        assert env.task.placements_conf.extents == [-p["r_s"], -p["r_s"], p["r_s"], p["r_s"]]
        assert env.task.buttons.is_constrained
        objects = np.array([q[:2] for q in env.task.buttons.pos + env.task.hazards.pos])
        assert (np.abs(objects) <= p["r_s"]).all()
        # both envs of a task share its layout; the robot's start differs
        np.testing.assert_allclose([q[:2] for q in twin.task.buttons.pos + twin.task.hazards.pos], objects)
        assert not np.allclose(env.task.agent.pos, twin.task.agent.pos)
        layouts.append(objects)
    venv.reset()
    for k in range(2):
        env = venv.envs[2 * k]
        np.testing.assert_allclose([q[:2] for q in env.task.buttons.pos + env.task.hazards.pos], layouts[k])


@pytest.mark.safety_gym
def test_button_gremlins_are_optional():
    fam = _family(sgf.SGPointButton, n_gremlins=2)
    venv = fam.make([_task(fam.name, n_b=4, n_h=4, r_s=2.0, layout_seed=0)], 1, seed=0)
    assert venv.obs_dim == 60 + 16  # a gremlin lidar
    venv.reset(seed=0)
    m = venv.envs[0].task.model
    assert sum(m.geom(i).name.startswith("gremlin") and m.geom(i).name.endswith("obj") for i in range(m.ngeom)) == 2
    obs, *_ = venv.step(torch.zeros(1, 2))
    assert torch.isfinite(obs).all()


@pytest.mark.safety_gym
@pytest.mark.parametrize("level,vases", [(1, 1), (2, 10)])
def test_goal_levels_and_the_fixed_layout_with_goal_in_the_arc(level, vases):
    fam = _family(sgf.SGPointGoal, level=level)
    tasks = fam.sample(2, "test", np.random.default_rng(level))
    venv = fam.make(tasks, 1, seed=0)
    venv.reset(seed=0)
    starts = []
    for env in venv.envs:
        task = env.task
        assert len(_geoms(env, "hazard")) == 10 and len(_geoms(env, "vase")) == vases
        assert task.vases.is_constrained and not task.mechanism_conf.continue_goal
        mat = task.agent.mat
        heading = math.atan2(mat[1, 0], mat[0, 0])
        assert fam.accepts(task.agent.pos, heading, task.goal.pos)
        starts.append((task.agent.pos.copy(), task.goal.pos.copy(), heading))
    assert not np.allclose(starts[0][0], starts[1][0])  # two seeds, two layouts
    venv.reset()
    for env, (start, goal, heading) in zip(venv.envs, starts):
        np.testing.assert_allclose(env.task.agent.pos, start, atol=1e-6)
        np.testing.assert_allclose(env.task.goal.pos, goal, atol=1e-6)
    # reaching the goal terminates (not truncates) and auto-resets to the task's start
    _place_point(venv.envs[0], starts[0][1][:2])
    obs, rew, cost, term, trunc, info = venv.step(torch.zeros(2, 2))
    assert term.tolist() == [True, False] and not trunc.any()
    assert float(rew[0]) > 0.5  # the goal bonus
    assert not torch.equal(info["final_obs"][0], obs[0])
    np.testing.assert_allclose(venv.envs[0].task.agent.pos, starts[0][0], atol=1e-6)


@pytest.mark.safety_gym
def test_truncation_at_the_horizon_and_final_obs():
    fam = _family(sgf.SGPointCircle, horizon=5)
    venv = fam.make(fam.sample(2, "train", np.random.default_rng(0)), 2, seed=0)
    obs0 = venv.reset(seed=3)
    act = torch.tensor([[1.0, 0.3]]).repeat(4, 1)
    for t in range(1, 11):
        obs, rew, cost, term, trunc, info = venv.step(act)
        assert not term.any()
        if t % 5:
            assert not trunc.any()
            assert torch.equal(info["final_obs"], obs)
        else:
            assert trunc.all()
            assert not torch.equal(info["final_obs"], obs)  # the last obs of the episode vs a fresh start
            assert not torch.allclose(info["final_obs"], obs0)
            assert [e.steps for e in venv.envs] == [0] * 4  # safety-gymnasium's own counters restarted too


@pytest.mark.safety_gym
def test_same_seed_same_trajectories():
    fam = _family(sgf.SGPointButton)
    tasks = fam.sample(2, "train", np.random.default_rng(1))
    acts = torch.rand(12, 4, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def rollout(venv, seed):
        out = [venv.reset(seed=seed)]
        for a in acts:
            obs, rew, cost, *_ = venv.step(a)
            out += [obs, rew, cost]
        return out

    a, b = fam.make(tasks, 2, seed=4), fam.make(tasks, 2, seed=4)
    first = rollout(a, 11)
    for x, y in zip(first, rollout(b, 11)):
        assert torch.equal(x, y)
    for x, y in zip(first, rollout(a, 11)):  # reseeding the same envs replays the run
        assert torch.equal(x, y)
    assert not torch.equal(rollout(b, 12)[0], first[0])


@pytest.mark.safety_gym
def test_sg_env_wraps_a_stock_id_reuses_its_envs_and_reseeds_them():
    from safemeta.envs.safety_gym_plain import SGEnv

    fam = SGEnv(SGEnv.Config())
    assert fam.cost_limit == 25.0 and fam.horizon == 1000
    tasks = fam.sample(1, "train", np.random.default_rng(0))
    assert tasks[0].params == {"env_id": "SafetyPointGoal1-v0"}
    first = fam.make(tasks, 2, seed=3)
    second = fam.make(tasks, 2, seed=3)
    assert first.envs == second.envs and first.obs_dim == 60 and first.act_dim == 2  # built once
    runs = []
    for venv in (first, second):
        obs = [venv.reset()]
        for _ in range(20):
            obs.append(venv.step(torch.full((2, 2), 0.5))[0])
        runs.append(torch.stack(obs))
    torch.testing.assert_close(runs[0], runs[1])  # the same seed gives the same episode start again
    with pytest.raises(UserError, match="Did you mean: SafetyPointGoal1-v0"):
        SGEnv(SGEnv.Config(env_id="SafetyPointGoa1-v0")).make(
            [Task("sg-env", "train", 0, {"env_id": "SafetyPointGoa1-v0"})], 1)


@pytest.mark.safety_gym
@pytest.mark.parametrize("cls,straight,left", [(sgf.SGPointCircle, [1.0, 0.0], [0.3, 1.0]),
                                               (sgf.SGCarCircleHazard, [1.0, 1.0], [-1.0, 1.0])])
def test_planar_observations_follow_the_mujoco_robot(cls, straight, left):
    """sg-point-circle / sg-car-circle-hazard with ``observation: planar`` show their twin's observation of the
    MuJoCo robot: driven straight (the twin's forward action), the heading's (cos, sin) points where the robot
    moves and the forward speed is its displacement per control step dt; the yaw rate is the
    heading's change per step, positive for the twin's left-turn action (point: a1 > 0; car: right wheel
    forward, left back); the circle centre's lidar reads exp(-|p|) in the bin of the origin's bearing, all
    against MuJoCo's own positions; rewards are in the twin's units, costs MuJoCo's."""
    from safemeta.envs.planar import LIDAR_BINS, PROPRIO_DIM

    fam = _family(cls, observation="planar")
    tasks = fam.sample(1, "test", np.random.default_rng(0))
    assert _family(cls).make(tasks, 1).obs_dim == FAMILIES[cls.name][1]  # MuJoCo's sensors by default
    venv = fam.make(tasks, 1, "cpu", 0)
    twin = safemeta.registry.env.get(cls.name[3:])
    assert venv.obs_dim == twin(twin.Config()).make(tasks, 1).obs_dim
    agent = venv.envs[0].task.agent
    obs = venv.reset(0)[0]
    dt = agent.engine.model.opt.timestep * venv.envs[0].task.sim_conf.frameskip_binom_n  # point 0.02 s, car 0.04 s
    for act in (straight, left):
        for _ in range(25):  # past the actuators' transient
            before, prev = agent.pos[:2].copy(), obs
            obs = venv.step(torch.tensor([act]))[0][0]
        moved = agent.pos[:2] - before
        heading = math.atan2(float(obs[3]), float(obs[2]))
        if act is straight:  # (turning, the MuJoCo robots slip sideways: their velocity lags the heading)
            assert abs(float(obs[0]) - np.hypot(*moved) / dt) < 0.02 * float(obs[0]) and float(obs[0]) > 0.2
            assert math.cos(math.atan2(moved[1], moved[0]) - heading) > 0.999  # moving along the heading
        turned = math.remainder(heading - math.atan2(float(prev[3]), float(prev[2])), 2 * math.pi)
        assert abs(float(obs[1]) - turned / dt) < 0.05 * max(1.0, abs(float(obs[1])))
    assert float(obs[1]) > 0.5  # the turn was a left (counter-clockwise) one, as the twin's action says
    bearing = math.atan2(-agent.pos[1], -agent.pos[0]) - heading
    b = int(math.floor(math.remainder(bearing, 2 * math.pi) % (2 * math.pi) / (2 * math.pi / LIDAR_BINS))) % LIDAR_BINS
    centre = obs[PROPRIO_DIM:PROPRIO_DIM + LIDAR_BINS]
    assert int(centre.argmax()) == b and abs(float(centre[b]) - math.exp(-np.hypot(*agent.pos[:2]))) < 1e-4
    # the same episode in MuJoCo's own mode (its motors given the twin's actions in its order): rewards 10x (the
    # circle task's reward_factor 0.1 divided out), costs equal
    plain, twin_env = _family(cls).make(tasks, 1, "cpu", 0), fam.make(tasks, 1, "cpu", 0)
    plain.reset(0), twin_env.reset(0)
    for t in range(40):
        act = torch.tensor([straight if t < 20 else left])
        _, r_twin, c_twin, *_ = twin_env.step(act)
        _, r_plain, c_plain, *_ = plain.step(act.flip(-1) if cls is sgf.SGCarCircleHazard else act)
        assert torch.allclose(r_twin, 10 * r_plain, rtol=1e-5, atol=1e-7) and torch.equal(c_twin, c_plain)
    with pytest.raises(UserError, match="no Safety-Gymnasium twin .* Families that have one: car-circle-hazard, "
                                        "point-circle, point-goal, point-goal-level1"):
        from safemeta.evaluation.meta_test import twin_family

        twin_family(safemeta.registry.env.get("point-button")(safemeta.registry.env.get("point-button").Config()))


@pytest.mark.safety_gym
@pytest.mark.parametrize("level", [1, 2])
def test_point_goal_twin_pins_the_builtin_layout_and_shows_its_observation(level):
    """sg-point-goal with ``observation: planar``: the MuJoCo task holds point-goal's own layout (start, heading, goal,
    hazards, obstacles as vases), the first observation is what the built-in env shows a robot at MuJoCo's pose,
    rewards are the progress toward the goal measured on MuJoCo's positions, and a vase MuJoCo moves is seen
    where it now is."""
    from safemeta.envs.goal import PointGoal
    from safemeta.envs.planar import LIDAR_BINS, PROPRIO_DIM

    fam = _family(sgf.SGPointGoal, observation="planar", level=level)
    builtin = PointGoal(PointGoal.Config(level=level))
    tasks = fam.sample(1, "test", np.random.default_rng(3))
    layout = builtin.layout(tasks[0])
    venv = fam.make(tasks, 1, "cpu", 0)
    obs = venv.reset(0)
    task = venv.envs[0].task
    xy = lambda points: np.array([p[:2] for p in points])  # noqa: E731
    assert np.allclose(task.agent.pos[:2], layout["start"], atol=1e-6)
    assert np.allclose(task.goal.pos[:2], layout["goal"], atol=1e-6)
    assert np.allclose(xy(task.hazards.pos), layout["hazards"], atol=1e-6)
    assert np.allclose(xy(task.vases.pos), layout["pillars"], atol=1e-3) and len(layout["pillars"]) == [1, 10][level - 1]
    ref = builtin.make(tasks, 1)
    ref.reset(0)
    ref.robot.pos = torch.tensor(task.agent.pos[None, :2], dtype=torch.float32)
    ref.robot.heading = torch.tensor([float(layout["heading"])])
    ref.robot.motion = torch.zeros(1, 2)
    assert obs.shape == (1, ref.obs_dim)
    torch.testing.assert_close(obs, ref._observe(), atol=1e-5, rtol=0)
    goal_dist = lambda: float(np.hypot(*(task.goal.pos[:2] - task.agent.pos[:2])))  # noqa: E731
    before = goal_dist()
    for _ in range(30):
        _, reward, _, terminated, *_ = venv.step(torch.tensor([[1.0, 0.0]]))
        assert not bool(terminated)
        after = goal_dist()
        assert abs(float(reward) - (before - after)) < 1e-5
        before = after
    # shove vase 0 by 0.5 along x: its obstacle lidar moves with it
    pillars = slice(PROPRIO_DIM + 2 * LIDAR_BINS, PROPRIO_DIM + 3 * LIDAR_BINS)
    still = venv.step(torch.zeros(1, 2))[0][0, pillars]
    joint = task.agent.engine.data.joint("vase0")
    joint.qpos[0] += 0.5
    moved = venv.step(torch.zeros(1, 2))[0][0, pillars]
    vase = task.vases.pos[0][:2] - task.agent.pos[:2]
    assert not torch.equal(still, moved)
    assert abs(float(moved.max()) - math.exp(-float(np.hypot(*vase)))) < 1e-4 or level == 2  # level 2: a nearer vase
    assert torch.isclose(moved, torch.tensor(math.exp(-float(np.hypot(*vase)))), atol=1e-4).any()


@pytest.mark.safety_gym
def test_meta_test_on_the_mujoco_twin_reads_the_same_tasks(make_config):
    """``eval.twin``: a point-circle run meta-tested on sg-point-circle sees the same held-out tasks at the same
    test limit, fine-tunes and is scored in MuJoCo, and says so in its protocol; the built-in meta-test differs."""
    from safemeta.evaluation.meta_test import describe_protocol, evaluate
    from safemeta.training.trainer import MetaTrainer

    trainer = MetaTrainer(make_config(algo="fomaml_trpo", inner="trpo", env="point-circle",
                                      trainer={"iters": 1, "tasks_per_iter": 1, "envs_per_task": 1}))
    trainer.train_iteration()
    kw = dict(tasks=2, adapt_steps=1, envs_per_task=1, episodes=1)
    twin, plain = evaluate(trainer, twin=True, **kw), evaluate(trainer, **kw)
    assert twin["family"] == "sg-point-circle" and plain["family"] == "point-circle"
    assert twin["tasks"] == plain["tasks"] and twin["cost_limit"] == plain["cost_limit"] == 25.0
    assert twin["protocol"]["twin"] == "sg-point-circle" and "MuJoCo twin `sg-point-circle`" in describe_protocol(
        twin["protocol"])
    assert [s["return_mean"] for s in twin["steps"]] != [s["return_mean"] for s in plain["steps"]]
    assert all(np.isfinite(s["cost_mean"]) and np.isfinite(s["return_mean"]) for s in twin["steps"])
