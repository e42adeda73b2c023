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

    from safemeta.model import stacked_theta
    from safemeta.trainer import MetaTrainer

    def make(hidden: int):
        t = MetaTrainer(make_config(policy={"hidden_sizes": [hidden]}))
        venv = t.family.make(t.family.sample(3, "train", np.random.default_rng(1)), 8, "cpu", 1)
        batch, _ = t.adapter.rollout(stacked_theta(t.meta, 3), venv, t.meta.critics_for(3), 1,
                                     torch.Generator().manual_seed(1))
        return t, batch

    return make


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "safemeta.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)
