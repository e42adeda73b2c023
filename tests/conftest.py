"""Shared fixtures: tiny configs that train in seconds."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import safemeta

REPO = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)


def tiny_config(tmp_path: Path, **overrides):
    """A resolved config on tiny-nav with small budgets; ``overrides`` is a nested dict layer."""
    base = {"env": "tiny-nav", "out": str(tmp_path / "runs"),
            "trainer": {"iters": 4, "tasks_per_iter": 3, "envs_per_task": 4, "eval_every": 2, "checkpoint_every": 2},
            "eval": {"tasks": 2, "adapt_steps": 1, "envs_per_task": 4},
            "critic": {"epochs": 5}, "log": {"progress": False}}
    return safemeta.resolve_config([("test", base), ("test overrides", overrides)])


@pytest.fixture
def make_config(tmp_path):
    return lambda **o: tiny_config(tmp_path, **o)


@pytest.fixture
def rollout(make_config):
    """``hidden -> (trainer, batch)``: a tiny-nav trainer and one annotated batch of 3 tasks x 8 envs."""
    import numpy as np

    from safemeta.training.model import stacked_theta
    from safemeta.training.trainer import MetaTrainer

    def make(hidden: int):
        t = MetaTrainer(make_config(policy={"hidden_sizes": [hidden]}))
        venv = t.family.make(t.family.sample(3, "train", np.random.default_rng(1)), 8, "cpu", 1)
        batch, _ = t.adapter.rollout(stacked_theta(t.meta, 3), venv, t.meta.critics_for(3), 1,
                                     torch.Generator().manual_seed(1))
        return t, batch

    return make


def assert_solver_ends_within_d_on_point_circle(inner: str, steps: int) -> None:
    """The solvers' learning test: each of 4 point-circle training tasks gets its own policy from a fresh init and
    ``steps`` inner steps (8 episodes each), with CPO's cost shaping (Achiam et al. 2017 Sec. 6.3, H = 10) and the
    ``feasible`` output rule (CRPO's Algorithm 1: the latest iterate estimated feasible); the policy the solver hands
    out, scored on 16 fresh episodes per task, must have true J_C <= d = 25 on average over the tasks (no tolerance)
    and a return far above the random initial policy's (about 0)."""
    import numpy as np

    from safemeta.evaluation.meta_test import solver_endpoint
    from safemeta.training.trainer import MetaTrainer

    cfg = safemeta.resolve_config([("t", {"env": "point-circle", "inner": inner, "algo": "pretrained", "seed": 0,
                                          "trainer": {"episodes_per_env": 1}, "critic": {"cost_shaping_horizon": 10},
                                          "inner_cfg": {inner: {"output": "feasible"}}})])
    res = solver_endpoint(MetaTrainer(cfg), n_tasks=4, steps=steps, envs_per_task=8, eval_envs=16, seed=0)
    d = res["cost_limit"]
    ret, cost = np.mean(res["output"]["return"]), np.mean(res["output"]["cost"])
    start = np.mean(res["initial"]["return"])
    assert cost <= d, (inner, cost, res["output"]["cost"])
    assert ret > max(10 * start, 20.0), (inner, ret, start)


def assert_task0_ignores_task1(solver, params, batch, state) -> tuple[dict, dict]:
    """One inner step on ``batch`` and on a copy whose task 1 holds task 2's data and the episode cost 7: task 0's
    new parameters must be bit-identical, task 1's must differ. Returns the two new states (multiplier checks)."""
    from dataclasses import replace

    def swap_task1(x):
        if x is None or x.dim() == 0:
            return x
        x = x.clone()
        x[1] = x[2]
        return x

    other = replace(batch, **{k: swap_task1(getattr(batch, k)) for k in batch.__dataclass_fields__})
    other = replace(other, ep_cost=torch.tensor([float(batch.ep_cost[0]), 7.0, float(batch.ep_cost[2])]))
    a, sa, _ = solver.step(params, batch, state)
    b, sb, _ = solver.step(params, other, state)
    for k in a:
        assert torch.equal(a[k][0], b[k][0]), k
    assert any(not torch.allclose(a[k][1], b[k][1]) for k in a)
    return sa, sb


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "safemeta.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


def double_batch(batch):
    """``batch`` with its floating-point fields in float64 (finite-difference checks)."""
    from dataclasses import fields, replace

    return replace(batch, **{f.name: getattr(batch, f.name).double() for f in fields(batch)
                             if getattr(batch, f.name) is not None and getattr(batch, f.name).is_floating_point()})


def fixed_adaptation(trainer, tasks: int, steps: int, seed: int = 3):
    """``steps`` + 1 batches of ``tasks`` tiny-nav tasks collected by one real adaptation of ``trainer``'s meta-
    policy (4 envs each), in float64, with the inner state they started from and theta in float64: fixed
    rollouts on which `safemeta.training.adaptation.replay` makes the post-adaptation objective a function of theta."""
    import numpy as np

    from safemeta.training.model import stacked_theta

    venv = trainer.family.make(trainer.family.sample(tasks, "train", np.random.default_rng(seed)), 4, "cpu", seed)
    state = trainer.inner.init_state(tasks, trainer.family.cost_limit_for("train"))
    result = trainer.adapter.adapt(stacked_theta(trainer.meta, tasks), venv, steps, state,
                                   trainer.meta.critics_for(tasks), 1, torch.Generator().manual_seed(seed))
    theta = {k: v.detach().double() for k, v in trainer.meta.theta.items()}
    return [double_batch(b) for b in result.batches], state, theta
