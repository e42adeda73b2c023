"""safemeta's built-in task families as OmniSafe 0.5.0 environments (cross-check against OmniSafe).

``register_safemeta_envs()`` registers one OmniSafe ``CMDP`` class, `SafeMetaCMDP`, whose env ids
are ``SafeMeta-<family>-v0`` for every batched family in ``safemeta.registry.env`` (the ``sg-``
families are left out: OmniSafe runs Safety-Gymnasium itself, as ``SafetyPointGoal1-v0`` etc.).
An env id is ONE fixed task of its family: the task drawn from split ``train`` with
``np.random.default_rng(task_seed)``, stepped as ``family.make([task], envs_per_task=num_envs)``.

    from safemeta.compat.safety_gym import import_omnisafe
    from safemeta.compat.omnisafe_env import register_safemeta_envs, cost_limit_of
    omnisafe = import_omnisafe()                    # never a bare `import omnisafe` (3.11 dataclass shim)
    register_safemeta_envs()                        # or register_safemeta_envs(task_seed=3), see below
    d = cost_limit_of('SafeMeta-point-circle-v0')   # the family's d (25.0 here)
    agent = omnisafe.Agent('PPOLag', 'SafeMeta-point-circle-v0', custom_cfgs={
        'seed': 0,
        'train_cfgs': {'total_steps': 200_000, 'vector_env_nums': 4, 'torch_threads': 1},
        'algo_cfgs': {'steps_per_epoch': 20_000},
        'lagrange_cfgs': {'cost_limit': d},         # CPO / OnCRPO: 'algo_cfgs': {'cost_limit': d}
        'env_cfgs': {'task_seed': 0},               # PPOLag only, see below
        'logger_cfgs': {'log_dir': './runs/omnisafe', 'use_tensorboard': False},
    })
    agent.learn()

Env options: ``task_seed`` (int, default 0: which task of the family), ``split`` ("train" by
default), ``seed`` (the env's own RNG for initial states, default 0; OmniSafe's ``set_seed``
overrides it with the run's seed) and ``family_cfg`` (a mapping of overrides of the family's
``Config``, e.g. ``{'horizon': 50}``, validated like ``--set env_cfg.<family>.*``). OmniSafe passes
its ``env_cfgs`` to the constructor next to ``num_envs`` and ``device``, but in OmniSafe 0.5.0 only
PPOLag's default config has an ``env_cfgs`` section, and ``custom_cfgs`` may only set keys the
defaults have (``KeyError: 'Invalid key: env_cfgs'`` for CPO, TRPOLag, OnCRPO, ...). For those,
give the options to ``register_safemeta_envs(task_seed=..., family_cfg=...)``: they become this
process's defaults (``env_cfgs`` still override them). The render keywords OmniSafe's
``Evaluator`` passes (``render_mode``, ``camera_name``, ``camera_id``, ``width``, ``height``) are
accepted and ignored; the planar families have no renderer.

Wrappers. safemeta's `BatchedCMDP` already applies the time limit (truncation at the family's
``horizon``) and resets finished envs itself, for any number of envs, so the class sets
``need_time_limit_wrapper = need_auto_reset_wrapper = False``: OmniSafe's ``TimeLimit`` and
``AutoReset`` only support ``num_envs == 1``, and a second time limit / reset on top of ours would
cut episodes twice. The other wrappers stay as OmniSafe configures them (``ObsNormalize``,
``RewardNormalize``, ``CostNormalize`` by ``algo_cfgs``; ``ActionScale`` to [-1, 1], here the
identity; ``Unsqueeze`` when ``num_envs == 1``).

Step contract, as OmniSafe's own ``SafetyGymnasiumEnv`` gives it: torch tensors ``obs``
(float32), ``reward``, ``cost``, ``terminated``, ``truncated`` (float32 0/1), with a leading env
dimension ``[num_envs, ...]`` when ``num_envs > 1`` and none when ``num_envs == 1`` (OmniSafe's
``Unsqueeze`` wrapper adds it). On a step where some env finished an episode, ``obs`` already holds
the first observation of its next episode and ``info`` carries ``final_observation`` (the last
observation of the finished episode; rows of envs that did not finish are zeros) and
``_final_observation`` (the bool mask of finished envs, the row selector ``ObsNormalize`` uses when
``num_envs > 1``), in gymnasium's vector-env convention. OmniSafe's on-policy adapter bootstraps a
truncated episode from ``agent.step(info['final_observation'][idx])``; the off-policy adapter puts
it into ``next_obs``. On steps where no episode ended the keys are absent (``ObsNormalize`` would
otherwise push empty or stale rows into its running statistics).

Actions: ``Box(-1, 1, (act_dim,))`` (safemeta clips to [-1, 1]; ``tabular-gridworld`` takes the
argmax of the 4 scores). Observations: ``Box(-inf, inf, (obs_dim,))``. ``cost_limit_of(env_id)``
gives the family's d for the split, to pass to OmniSafe as its cost limit (OmniSafe's own
defaults are 25).
"""
from __future__ import annotations

from typing import Any

import numpy as np

ENV_PREFIX = "SafeMeta-"
ENV_SUFFIX = "-v0"
_RENDER_KWARGS = ("render_mode", "camera_name", "camera_id", "width", "height")

# the env options (env_cfgs / register_safemeta_envs defaults) and their built-in defaults
ENV_KWARGS: dict[str, Any] = {"task_seed": 0, "split": "train", "seed": 0, "family_cfg": None}

_CLASS: type | None = None
_DEFAULTS: dict[str, Any] = {}  # set by register_safemeta_envs(**env_defaults)


def env_id_of(family: str) -> str:
    """``point-circle`` -> ``SafeMeta-point-circle-v0``."""
    return f"{ENV_PREFIX}{family}{ENV_SUFFIX}"


def family_of(env_id: str) -> str:
    """``SafeMeta-point-circle-v0`` -> ``point-circle`` (ValueError for any other id)."""
    if not (env_id.startswith(ENV_PREFIX) and env_id.endswith(ENV_SUFFIX)):
        raise ValueError(f"'{env_id}' is not a safemeta env id (expected {ENV_PREFIX}<family>{ENV_SUFFIX})")
    return env_id[len(ENV_PREFIX):-len(ENV_SUFFIX)]


def safemeta_env_ids() -> list[str]:
    """The env ids of all batched families registered now (``sg-`` families left out)."""
    from safemeta import registry

    return [env_id_of(name) for name in registry.env.names() if not name.startswith("sg-")]


def build_family(env_id: str, family_cfg: dict | None = None) -> Any:
    """The `TaskFamily` behind ``env_id``, its config built from the defaults and ``family_cfg``."""
    from safemeta import registry
    from safemeta.config.loader import Validator

    name = family_of(env_id)
    family_cls = registry.env.get(name)
    cfg = Validator({}).build(family_cls.Config, dict(family_cfg or {}), "env_cfgs.family_cfg.")
    return family_cls(cfg)


def cost_limit_of(env_id: str, split: str = "train", family_cfg: dict | None = None) -> float:
    """The family's cost limit d for ``split`` (pass it to OmniSafe as its ``cost_limit``)."""
    return build_family(env_id, family_cfg).cost_limit_for(split)


def _cmdp_class() -> type:
    """Define `SafeMetaCMDP` on OmniSafe's ``CMDP`` base (once; omnisafe is imported only here)."""
    global _CLASS
    if _CLASS is not None:
        return _CLASS

    import torch
    from gymnasium import spaces

    from safemeta.compat.safety_gym import import_omnisafe

    import_omnisafe()
    from omnisafe.envs.core import CMDP

    class SafeMetaCMDP(CMDP):
        """One fixed task of a safemeta family, ``num_envs`` copies stepped as one batched program."""

        need_auto_reset_wrapper = False  # BatchedCMDP resets finished envs itself
        need_time_limit_wrapper = False  # BatchedCMDP truncates at the family's horizon
        _support_envs: list[str] = []

        def __init__(self, env_id: str, num_envs: int = 1, device: Any = "cpu", **kwargs: Any) -> None:
            super().__init__(env_id)
            unknown = sorted(k for k in kwargs if k not in ENV_KWARGS and k not in _RENDER_KWARGS)
            if unknown:
                raise TypeError(f"{env_id}: unknown env_cfgs {unknown}; valid: {', '.join(ENV_KWARGS)} "
                                f"(and the ignored render keywords {', '.join(_RENDER_KWARGS)})")
            opts = {**ENV_KWARGS, **_DEFAULTS, **{k: v for k, v in kwargs.items() if k in ENV_KWARGS}}
            task_seed, split, seed, family_cfg = (opts[k] for k in ENV_KWARGS)
            if num_envs < 1:
                raise ValueError(f"num_envs must be >= 1, got {num_envs}")
            self._num_envs = int(num_envs)
            self._device = torch.device(device)
            self.family = build_family(env_id, family_cfg)
            self.split = split
            self.task = self.family.sample(1, split, np.random.default_rng(int(task_seed)))[0]
            self.cost_limit = self.family.cost_limit_for(split)
            self._vec = self.family.make([self.task], envs_per_task=self._num_envs,
                                         device=str(self._device), seed=int(seed))
            self._horizon = int(self._vec.horizon)
            self._observation_space = spaces.Box(-np.inf, np.inf, (int(self._vec.obs_dim),), np.float32)
            self._action_space = spaces.Box(-1.0, 1.0, (int(self._vec.act_dim),), np.float32)
            self._metadata = {"render_modes": []}

        @property
        def max_episode_steps(self) -> int:
            return self._horizon

        def _out(self, x: torch.Tensor) -> torch.Tensor:
            """float32 on the env's device; the env dim dropped for a single env (``Unsqueeze`` re-adds it)."""
            x = x.to(device=self._device, dtype=torch.float32)
            return x[0] if self._num_envs == 1 else x

        def step(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                     torch.Tensor, torch.Tensor, dict[str, Any]]:
            act = torch.as_tensor(action, dtype=torch.float32, device=self._device)
            act = act.reshape(self._num_envs, -1)
            obs, reward, cost, terminated, truncated, vec_info = self._vec.step(act)
            info: dict[str, Any] = {}
            done = terminated | truncated
            if bool(done.any()):
                final = torch.where(done.unsqueeze(-1), vec_info["final_obs"], torch.zeros_like(obs))
                info["final_observation"] = self._out(final.clone())
                mask = done.to(self._device)
                info["_final_observation"] = mask[0] if self._num_envs == 1 else mask
            return (self._out(obs), self._out(reward), self._out(cost),
                    self._out(terminated), self._out(truncated), info)

        def reset(self, seed: int | None = None,
                  options: dict[str, Any] | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
            return self._out(self._vec.reset(seed=seed)), {}

        def set_seed(self, seed: int) -> None:
            self.reset(seed=seed)

        def render(self) -> Any:
            raise NotImplementedError("safemeta's batched families have no renderer")

        def close(self) -> None:
            pass

    _CLASS = SafeMetaCMDP
    return _CLASS


def register_safemeta_envs(**env_defaults: Any) -> list[str]:
    """Register `SafeMetaCMDP` with OmniSafe for every batched family; return its env ids.

    ``env_defaults`` (``task_seed``, ``split``, ``seed``, ``family_cfg``) become the defaults of
    every env built in this process until the next call; OmniSafe's ``env_cfgs`` still override
    them. This is the way to choose the task for algorithms whose OmniSafe config has no
    ``env_cfgs`` section (all but PPOLag in OmniSafe 0.5.0: their ``custom_cfgs`` reject it).
    Safe to call again: families registered since (plugins) are added, nothing is registered twice.
    """
    unknown = sorted(k for k in env_defaults if k not in ENV_KWARGS)
    if unknown:
        raise TypeError(f"unknown env defaults {unknown}; valid: {', '.join(ENV_KWARGS)}")
    _DEFAULTS.clear()
    _DEFAULTS.update(env_defaults)

    from safemeta.compat.safety_gym import import_omnisafe

    import_omnisafe()
    from omnisafe.envs.core import env_register, env_unregister, support_envs

    cls = _cmdp_class()
    ids = safemeta_env_ids()
    registered = set(cls._support_envs) <= set(support_envs()) and bool(cls._support_envs)
    if registered and list(cls._support_envs) == ids:
        return ids
    if registered:
        env_unregister(cls)
    cls._support_envs = ids
    env_register(cls)
    return ids
