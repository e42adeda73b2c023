"""``sg-env``: one stock Safety-Gymnasium environment id as a single-task family (MuJoCo).

The other ``sg-`` families build a task per parameter draw (a pinned layout, a radius); this one is the
registered env exactly as ``safety_gymnasium.make(env_id)`` returns it, layout re-drawn at every reset
as the library does. It exists so our inner solvers run on the very env ids the safe-RL literature
and OmniSafe report on (``SafetyPointGoal1-v0``: issue 5's cross-check), with OmniSafe's default
cost limit of 25 and the library's 1000-step episodes.

    safemeta train --algo pretrained --inner cpo --env sg-env --set env_cfg.sg-env.env_id=SafetyCarGoal1-v0

Every task of the family is the same CMDP (``params == {"env_id": ...}``); the train and test splits
therefore coincide, which is what a single-task baseline comparison needs and nothing more.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from safemeta.config.schema import spec
from safemeta.envs.safety_gym_families import SafetyGymVecCMDP
from safemeta.errors import UserError, suggest
from safemeta.registry import register_env
from safemeta.rollout.task import TaskFamily


@dataclass
class SGEnvConfig:
    env_id: str = "SafetyPointGoal1-v0"
    cost_limit: float = spec(25.0, ge=0, doc="d (OmniSafe's default for the Safety-Gymnasium navigation tasks)")
    horizon: int = spec(1000, ge=1, doc="episode length (the library's 1000 steps)")


def _make_env(env_id: str) -> Any:
    from safemeta.compat.safety_gym import import_safety_gymnasium

    sg = import_safety_gymnasium()
    try:
        return sg.make(env_id)
    except Exception as exc:  # gymnasium raises its own error types for unknown / misspelled ids
        from safety_gymnasium.utils.registration import safe_registry

        known = sorted(k for k in safe_registry if "Vision" not in k and "Debug" not in k)
        raise UserError(f"env_cfg.sg-env.env_id: '{env_id}' is not a Safety-Gymnasium env ({exc})."
                        f"{suggest(env_id, known)} Valid ids: {len(known)} registered, e.g. "
                        f"{', '.join(k for k in known if 'Point' in k)}.") from None


@register_env("sg-env", "one stock Safety-Gymnasium env id (default SafetyPointGoal1-v0) as a one-task family (MuJoCo)")
class SGEnv(TaskFamily):
    name = "sg-env"
    Config = SGEnvConfig

    def sample_params(self, split: str, rng: np.random.Generator) -> dict[str, Any]:
        return {"env_id": self.cfg.env_id}

    def make(self, tasks: list, envs_per_task: int, device: str = "cpu", seed: int = 0) -> SafetyGymVecCMDP:
        """The batched env; the MuJoCo envs are built once per family object and reused by later calls
        (the trainer makes a new `VecCMDP` every iteration, and building a Safety-Gymnasium env costs
        seconds). Each call reseeds them through `SafetyGymVecCMDP.reset`."""
        envs = []
        for k, task in enumerate(tasks):
            for j in range(envs_per_task):
                key = (task.params["env_id"], k * envs_per_task + j)
                if key not in self._pool:
                    self._pool[key] = _make_env(task.params["env_id"])
                envs.append(self._pool[key])
        return SafetyGymVecCMDP(envs, len(tasks), envs_per_task, self.horizon, device, seed)

    def __init__(self, cfg: SGEnvConfig):
        super().__init__(cfg)
        self._pool: dict[tuple[str, int], Any] = {}
