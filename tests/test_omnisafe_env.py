"""safemeta families as OmniSafe environments (safemeta/compat/omnisafe_env.py): the CMDP contract, and
OmniSafe's own PPOLag / CPO training on ``SafeMeta-tiny-nav-v0``."""
from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from safemeta.errors import UserError
from safemeta.compat.omnisafe_env import cost_limit_of, family_of, register_safemeta_envs

pytestmark = pytest.mark.safety_gym  # omnisafe imports safety-gymnasium / MuJoCo

REPO = Path(__file__).resolve().parents[1]
TINY = "SafeMeta-tiny-nav-v0"


@pytest.fixture(scope="module")
def omnisafe():
    torch.set_num_threads(1)
    from safemeta.compat.safety_gym import import_omnisafe

    module = import_omnisafe()
    register_safemeta_envs()
    return module


def make(env_id: str, num_envs: int, **kwargs):
    from omnisafe.envs.core import make as omnisafe_make

    return omnisafe_make(env_id, num_envs=num_envs, device=torch.device("cpu"), **kwargs)


def test_import_safemeta_does_not_import_omnisafe():
    code = ("import sys, safemeta, safemeta.compat.omnisafe_env; from safemeta import registry; registry.load_builtins(); "
            "assert 'omnisafe' not in sys.modules and 'safety_gymnasium' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)


def test_registration_ids_and_idempotence(omnisafe):
    from omnisafe.envs.core import support_envs

    from safemeta import registry

    ids = register_safemeta_envs()
    assert register_safemeta_envs() == ids  # a second call registers nothing twice
    families = [n for n in registry.env.names() if not n.startswith("sg-")]
    assert ids == [f"SafeMeta-{n}-v0" for n in families]
    assert "SafeMeta-point-circle-v0" in ids and not any("sg-" in i for i in ids)
    assert set(ids) <= set(support_envs())
    assert family_of("SafeMeta-point-circle-v0") == "point-circle"
    assert cost_limit_of("SafeMeta-point-circle-v0") == 25.0
    with pytest.raises(TypeError, match="unknown env_cfgs"):
        make(TINY, 1, not_a_key=3)
    with pytest.raises(UserError, match="horizon"):
        make(TINY, 1, family_cfg={"horizon": 0})
    with pytest.raises(TypeError, match="unknown env defaults"):
        register_safemeta_envs(not_a_key=3)
    # defaults given at registration pick the task for algorithms without env_cfgs; env_cfgs win
    task0 = make(TINY, 1).task
    try:
        assert register_safemeta_envs(task_seed=1, family_cfg={"horizon": 9}) == ids
        env = make(TINY, 1)
        assert env.task != task0 and env.max_episode_steps == 9
        assert make(TINY, 1, task_seed=0).task == task0
    finally:
        register_safemeta_envs()
    assert make(TINY, 1).task == task0 and make(TINY, 1).max_episode_steps == 20


@pytest.mark.parametrize("num_envs", [1, 4])
def test_cmdp_contract_shapes_truncation_final_obs(omnisafe, num_envs):
    horizon = 7
    env = make(TINY, num_envs, family_cfg={"horizon": horizon})
    assert env.max_episode_steps == horizon and env.num_envs == num_envs
    assert not env.need_auto_reset_wrapper and not env.need_time_limit_wrapper
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    assert (obs_dim, act_dim) == (6, 2)
    assert env.action_space.low.min() == -1.0 and env.action_space.high.max() == 1.0
    assert math.isinf(env.observation_space.low[0]) and math.isinf(env.observation_space.high[0])
    lead = (num_envs,) if num_envs > 1 else ()

    obs, info = env.reset(seed=3)
    assert obs.shape == (*lead, obs_dim) and obs.dtype == torch.float32 and info == {}
    prev = obs
    for t in range(1, 3 * horizon + 1):
        # zero action: the point stays put, so the episode's final observation equals the previous one
        act = torch.zeros(*lead, act_dim)
        obs, reward, cost, terminated, truncated, info = env.step(act)
        assert obs.shape == (*lead, obs_dim) and obs.dtype == torch.float32
        for x in (reward, cost, terminated, truncated):
            assert x.shape == lead and x.dtype == torch.float32
        assert bool((cost >= 0).all()) and not bool(terminated.any())
        end = t % horizon == 0
        assert bool((truncated == float(end)).all()), (t, truncated)
        assert ("final_observation" in info) == end and ("_final_observation" in info) == end
        if end:
            assert info["final_observation"].shape == (*lead, obs_dim)
            assert bool(info["_final_observation"].all())
            assert torch.equal(info["final_observation"], prev)
            assert not torch.equal(obs, prev)  # obs is already the next episode's first observation
        prev = obs


def test_point_circle_full_episode(omnisafe):
    """A 500-step point-circle episode with random actions ends by truncation at step 500 exactly."""
    env = make("SafeMeta-point-circle-v0", 2)
    env.reset(seed=0)
    gen = torch.Generator().manual_seed(0)
    ends = []
    for t in range(1, 501):
        obs, reward, cost, terminated, truncated, info = env.step(torch.rand(2, 2, generator=gen) * 2 - 1)
        assert torch.isfinite(obs).all() and torch.isfinite(reward).all() and bool((cost >= 0).all())
        assert not bool(terminated.any())
        if bool(truncated.any()):
            ends.append(t)
            assert bool(info["_final_observation"].all())
    assert ends == [500]


def test_final_observation_rows_when_only_some_envs_finish(omnisafe):
    env = make(TINY, 3)
    obs, _ = env.reset(seed=0)
    env._vec.t[1] = env.max_episode_steps - 1  # only env 1 reaches the horizon on the next step
    nxt, _, _, terminated, truncated, info = env.step(torch.zeros(3, 2))
    assert truncated.tolist() == [0.0, 1.0, 0.0] and not bool(terminated.any())
    assert info["_final_observation"].tolist() == [False, True, False]
    final = info["final_observation"]
    assert torch.equal(final[1], obs[1]) and not torch.equal(nxt[1], obs[1])  # env 1 was reset
    assert torch.equal(final[0], torch.zeros(6)) and torch.equal(final[2], torch.zeros(6))
    assert torch.equal(nxt[0], obs[0]) and torch.equal(nxt[2], obs[2])  # zero action: others stay put


def test_tabular_gridworld_spaces(omnisafe):
    grid = make("SafeMeta-tabular-gridworld-v0", 3, family_cfg={"horizon": 4})
    assert grid.observation_space.shape == (25,) and grid.action_space.shape == (4,)
    grid.reset(seed=0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        out = grid.step(torch.randn(3, 4, generator=gen))
    assert bool(out[4].all()) and out[5]["final_observation"].shape == (3, 25)


def test_determinism_under_seed(omnisafe):
    def trace(seed: int, task_seed: int = 0):
        env = make("SafeMeta-point-goal-v0", 3, task_seed=task_seed, family_cfg={"horizon": 10})
        env.set_seed(seed)
        obs, _ = env.reset(seed=seed)
        gen = torch.Generator().manual_seed(1)
        out = [obs]
        for _ in range(25):
            o, r, c, te, tr, _ = env.step(torch.rand(3, 2, generator=gen) * 2 - 1)
            out += [o, r, c, te, tr]
        return env.task, torch.cat([x.reshape(-1) for x in out])

    task_a, a = trace(5)
    task_b, b = trace(5)
    _, c = trace(6)
    task_d, _ = trace(5, task_seed=1)
    assert task_a == task_b and torch.equal(a, b)
    assert not torch.equal(a, c)
    assert task_d != task_a


def _omnisafe_cfgs(log_dir: Path, algo: str, vector_env_nums: int) -> dict:
    cfgs = {
        "seed": 0,
        "train_cfgs": {"total_steps": 2000, "vector_env_nums": vector_env_nums, "torch_threads": 1},
        "algo_cfgs": {"steps_per_epoch": 1000, "update_iters": 2},
        "logger_cfgs": {"log_dir": str(log_dir), "use_wandb": False, "use_tensorboard": False,
                        "save_model_freq": 2},
    }
    limit = cost_limit_of(TINY)
    if algo == "PPOLag":  # the only OmniSafe 0.5.0 config with an env_cfgs section
        cfgs["env_cfgs"] = {"task_seed": 0, "family_cfg": {"horizon": 20}}
    if algo in ("PPOLag", "TRPOLag"):
        cfgs["lagrange_cfgs"] = {"cost_limit": limit}
    else:  # CPO, OnCRPO
        cfgs["algo_cfgs"]["cost_limit"] = limit
    return cfgs


@pytest.mark.parametrize("algo,vector_env_nums", [("PPOLag", 1), ("CPO", 4)])
def test_omnisafe_trains_on_tiny_nav(omnisafe, tmp_path, algo, vector_env_nums):
    agent = omnisafe.Agent(algo, TINY, custom_cfgs=_omnisafe_cfgs(tmp_path / "runs", algo, vector_env_nums))
    ep_ret, ep_cost, ep_len = agent.learn()
    assert math.isfinite(ep_ret) and math.isfinite(ep_cost) and ep_cost >= 0 and ep_len == 20

    progress = list(Path(tmp_path / "runs").glob("*/seed-*/progress.csv"))
    assert len(progress) == 1
    rows = list(csv.DictReader(progress[0].open()))
    assert len(rows) == 2  # 2000 steps / 1000 per epoch
    for row in rows:
        ret, cost, length = (float(row[k]) for k in ("Metrics/EpRet", "Metrics/EpCost", "Metrics/EpLen"))
        assert math.isfinite(ret) and math.isfinite(cost) and cost >= 0
        assert length == 20.0  # episodes end by our truncation at the horizon, never cut by OmniSafe
    assert float(rows[-1]["TotalEnvSteps"]) == 2000

    if algo == "PPOLag":  # OmniSafe's Evaluator rebuilds the env from the saved config (+ render kwargs)
        evaluator = omnisafe.Evaluator()
        evaluator.load_saved(save_dir=agent.agent.logger.log_dir, model_name="epoch-2.pt")
        rets, costs = evaluator.evaluate(num_episodes=2)
        assert len(rets) == len(costs) == 2 and all(math.isfinite(float(r)) for r in rets)
