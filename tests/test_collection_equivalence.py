"""The fast collection path (issue 16) gives the numbers of the plain per-step loop it replaced, bit for bit.

`reference_collect` is that loop (the collector before issue 16: batched actor, one randn, checked step,
per-step writes); for point-goal its env step is the pre-issue-16 one too (`reference_goal_step`: scalar
robot dynamics, pillar push with its own scan, lidar from separate x / y offsets), so the rewritten
planar code is checked against it, terminations and resets included. Faults found by the collector's
chunked boundary checks still name the field and the tasks of the first faulty step.
"""
import math

import numpy as np
import pytest
import torch

from safemeta.rollout.collector import Collector
from safemeta.rollout.obs_norm import RunningObsNorm
from safemeta.rollout.params import stack
from safemeta.rollout.policy import GaussianActor, batched, init_params
from safemeta.registry import env as env_registry
from safemeta.rollout.vec_cmdp import EnvFault, check_finite

FIELDS = ("obs", "act", "logp", "rew", "cost", "terminated", "truncated", "next_obs")


def reference_collect(actor, params, venv, episodes, gen, norm=None, step=None):
    """The per-step loop as it was: ``step(venv, act, t)`` defaults to the env's own transition + observe."""
    step = step or (lambda v, a, t: reference_step(v, a, t, v._transition, v._observe))
    n, e = venv.n_tasks, venv.envs_per_task
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
    norm_fn = norm if norm is not None else (lambda o: o)
    raw = venv.reset(seed)
    t_env = torch.zeros(venv.num_envs, dtype=torch.long)
    obs, out = norm_fn(raw), {k: [] for k in FIELDS}
    for _ in range(episodes * venv.horizon):
        mean, log_std = batched(actor)(params, obs.reshape(n, e, -1))
        log_std = log_std.contiguous()
        noise = torch.randn(mean.shape, generator=gen)
        act = mean + log_std.exp() * noise
        logp = (-0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        if norm is not None:
            norm.observe(raw)
        raw, rew, cost, term, trunc, final = step(venv, act.reshape(n * e, -1), t_env)
        for k, v in zip(FIELDS, (obs, act.reshape(n * e, -1), logp.reshape(n * e), rew, cost, term, trunc,
                                 norm_fn(final))):
            out[k].append(v.reshape(n, e, *v.shape[1:]))
        obs = norm_fn(raw)
    return {k: torch.stack(v, 1) for k, v in out.items()}


def reference_step(venv, act, t, transition, observe):
    """`BatchedCMDP.step` as it was, with its own step counts ``t``."""
    rew, cost, term = transition(act.clamp(-1.0, 1.0))
    t += 1
    trunc = (t >= venv.horizon) & ~term
    done = term | trunc
    obs = final = observe()
    if bool(done.any()):
        t[done] = 0
        venv._reset_envs(done)
        obs = torch.where(done.unsqueeze(-1), observe(), obs)
    return obs, rew, cost, term, trunc, final


def reference_goal_step(venv, act, t):
    """point-goal's step before issue 16, on ``venv``'s state."""
    r, s, cfg, objects = venv.robot, venv.robot.spec, venv.cfg, venv.objects
    x, y = objects.x.contiguous(), objects.y.contiguous()

    def scan(pos):
        dx, dy = x - pos[:, :1], y - pos[:, 1:]
        return dx, dy, torch.sqrt(dx * dx + dy * dy)

    def observe():
        dx, dy, dist = scan(r.pos)
        angle = torch.remainder(torch.atan2(dy, dx) - r.heading.unsqueeze(1), 2 * math.pi)
        bins = (angle / (2 * math.pi / 16)).long().clamp_(max=15)
        obs = torch.zeros(venv.num_envs, venv.obs_dim).scatter_reduce_(1, bins + objects.column, torch.exp(-1.0 * dist),
                                                                       reduce="amax")
        obs[:, :4] = torch.cat([r.speed.unsqueeze(-1), r.yaw_rate.unsqueeze(-1), r.heading.cos().unsqueeze(-1),
                                r.heading.sin().unsqueeze(-1)], -1)
        return obs

    def transition(a):
        before = scan(r.pos)[2][:, 0]
        speed = r.speed + s.dt * (s.speed_gain * a[:, 0] - s.speed_damping * r.speed)
        yaw = r.yaw_rate + s.dt * (s.turn_gain * a[:, 1] - s.turn_damping * r.yaw_rate)
        heading = torch.remainder(r.heading + s.dt * yaw + math.pi, 2 * math.pi) - math.pi
        pos = r.pos + s.dt * speed.unsqueeze(-1) * torch.stack([torch.cos(heading), torch.sin(heading)], -1)
        dx, dy, dist = (v[:, venv.pillars] for v in scan(pos))
        dist = dist.clamp(min=1e-6)
        depth = (cfg.pillar_radius + cfg.robot_radius - dist).clamp_(min=0.0)
        pos = pos - torch.stack([(dx / dist * depth).sum(1), (dy / dist * depth).sum(1)], dim=-1)
        contact = dist.amin(dim=1) < cfg.pillar_radius + cfg.robot_radius
        r.pos, r.heading, r.motion = pos, heading, torch.stack([speed, yaw], -1)
        after = scan(pos)[2]
        reached = after[:, 0] < cfg.goal_radius
        cost = contact.float() + (after[:, venv.hazards].amin(1) < cfg.hazard_radius).float()
        return before - after[:, 0] + reached.float() * cfg.goal_bonus, cost, reached

    return reference_step(venv, act, t, transition, observe)


def _setup(name, n, e, **cfg):
    cls = env_registry.get(name)
    fam = cls(cls.Config(**cfg))
    tasks = fam.sample(n, "train", np.random.default_rng(0))
    venvs = [fam.make(tasks, e, "cpu", 0) for _ in range(2)]
    actor = GaussianActor(venvs[0].obs_dim, venvs[0].act_dim, (32, 32), "tanh", -0.5)
    g = torch.Generator().manual_seed(1)
    params = {k: v + 0.3 * torch.randn(v.shape, generator=g) for k, v in stack(init_params(actor), n).items()}
    return actor, params, venvs


@pytest.mark.parametrize("name, cfg, episodes, normalize", [
    ("tiny-nav", {}, 15, False),
    ("tiny-nav", {}, 15, True),
    ("point-goal", {"horizon": 150, "goal_radius": 1.6}, 2, False),  # a wide goal: terminations mid-episode
    ("point-goal", {"horizon": 150}, 2, True),
])
def test_collection_equals_the_plain_per_step_loop(name, cfg, episodes, normalize):
    actor, params, (venv, ref_venv) = _setup(name, 3, 4, **cfg)
    norms = [RunningObsNorm(venv.obs_dim) for _ in range(2)] if normalize else [None, None]
    for norm in norms:
        if norm is not None:
            norm.mean = torch.linspace(-0.5, 0.5, venv.obs_dim, dtype=torch.float64)
    gens = [torch.Generator().manual_seed(7) for _ in range(2)]
    batch = Collector(actor, norms[0]).collect(params, venv, episodes, gens[0])
    ref = reference_collect(actor, params, ref_venv, episodes, gens[1], norms[1],
                            step=reference_goal_step if name == "point-goal" else None)
    for k in FIELDS:
        assert torch.equal(getattr(batch, k), ref[k]), k
    assert torch.equal(gens[0].get_state(), gens[1].get_state())  # the same random numbers were drawn
    if normalize:
        assert all(torch.equal(a, b) for a, b in zip(norms[0].pending()[1:], norms[1].pending()[1:]))
    assert int(batch.truncated.sum()) > 0
    if "goal_radius" in cfg:
        assert int(batch.terminated.sum()) > 0


@pytest.mark.parametrize("field, task", [("action", 1), ("cost", 2), ("observation", 0)])
def test_a_fault_names_the_field_and_the_tasks_of_the_first_faulty_step(field, task):
    actor, params, (venv, _) = _setup("tiny-nav", 3, 2)
    real_step, count = venv.step, [0]

    def faulty_step(act):
        obs, rew, cost, term, trunc, info = real_step(act)
        count[0] += 1
        if count[0] == 100 and field == "cost":
            cost = cost.clone()
            cost[2 * task + 1] = float("inf")
        if count[0] == 100 and field == "observation":
            obs = obs.clone()
            obs[2 * task, 0] = float("nan")
        return obs, rew, cost, term, trunc, info

    venv.step = faulty_step
    if field == "action":
        params["mean.4.bias"][task, 0] = float("nan")
    with pytest.raises(EnvFault, match=rf"non-finite {field} for task\(s\) \[{task}\]"):
        Collector(actor).collect(params, venv, 10, torch.Generator().manual_seed(0))
    assert count[0] < 100 + 64 + 1 if field != "action" else count[0] <= 64  # found within one chunk
    check_finite(venv, fine=torch.zeros(3))  # (the check itself passes finite values)


@pytest.mark.parametrize("name", ["point-goal", "point-circle", "point-button", "car-circle-hazard"])
def test_a_nan_action_in_a_lidar_family_is_an_env_fault_naming_its_task(name):
    """A NaN action must not crash a lidar family before the per-chunk check (NaN positions once broke the lidar's
    bin indices with an IndexError): the env steps it as 0 and the check names the action and the task."""
    actor, params, (venv, _) = _setup(name, 3, 2)
    params["mean.4.bias"][1, 0] = float("nan")
    with pytest.raises(EnvFault, match=r"non-finite action for task\(s\) \[1\]"):
        Collector(actor).collect(params, venv, 1, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", ["point-goal", "point-button"])
def test_a_collected_batch_and_its_env_work_outside_the_collectors_inference_mode(name):
    """The step loop runs in inference mode; the batch it returns is made of ordinary tensors (a solver's autograd
    graph may save them), and the env keeps stepping outside inference mode afterwards."""
    actor, params, (venv, _) = _setup(name, 2, 2, horizon=70)
    norm = RunningObsNorm(venv.obs_dim)
    batch = Collector(actor, norm).collect(params, venv, 2, torch.Generator().manual_seed(0))
    n, total, total_sq = norm.pending()  # a Ray worker's moments merged into the driver's, outside inference mode
    norm.add_pending(n, total, total_sq)
    norm.observe(batch.obs[0, 0])
    norm.commit()
    assert not norm.mean.is_inference() and norm.count == 2 * n + 2
    for k in (*FIELDS, "ep_return", "ep_cost", "ep_count"):
        assert not getattr(batch, k).is_inference(), k
    p = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    mean, _ = batched(actor)(p, batch.obs.reshape(2, -1, venv.obs_dim))
    (mean.sum(-1) * batch.rew.reshape(2, -1)).sum().backward()  # saves the batch's tensors for backward
    assert torch.isfinite(p["mean.0.weight"].grad).all() and p["mean.0.weight"].grad.abs().sum() > 0
    for _ in range(80):  # past the time limit: resets and step counts outside inference mode
        obs, *_ = venv.step(torch.zeros(venv.num_envs, venv.act_dim))
    assert torch.isfinite(obs).all()
