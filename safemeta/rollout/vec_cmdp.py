"""Batched constrained MDPs with torch tensors (DESIGN.md "Contracts").

``VecCMDP``: ``reset(seed) -> obs``, ``step(act) -> obs, reward, cost, terminated, truncated, info``,
all ``[B, ...]`` tensors with ``B = n_tasks * envs_per_task`` in task-major order. Envs reset
themselves when an episode ends; ``info["final_obs"]`` holds the last observation of the finished
episode so that a truncated episode can be bootstrapped from it.

`BatchedCMDP` implements the bookkeeping (time limit, auto-reset, final observation) once; a family
only writes ``_reset_envs`` and ``_transition``. `PureStepCMDP` adds the step as a pure function, which
compiled collection uses.
"""
from __future__ import annotations

import ctypes
import sys
from abc import ABC, abstractmethod

import torch
from torch import Tensor

from safemeta.errors import UserError


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
_malloc_tuned = False


def keep_freed_memory() -> None:
    """Stop glibc from handing the memory of freed step tensors back to the OS after every step (Linux, once).

    A CPU env step allocates and frees the same few MB of tensors each time (e.g. [4096, 52] observations,
    [4096, 16] lidar temporaries). glibc serves blocks >= 128 KB with mmap and trims the heap top past
    128 KB, so every step maps fresh pages and faults on each 4 KB of them: ~300 page faults per
    car-circle-hazard step at 4096 envs, a third of its time (measured). glibc's dynamic rule would raise
    these limits to 32 MB / 64 MB over time but only after a mapped block of that size is freed; this sets
    them so from the start. The cost is that up to 64 MB of freed memory stays with the process.
    """
    global _malloc_tuned
    if _malloc_tuned or not sys.platform.startswith("linux"):
        return
    _malloc_tuned = True
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 32 * 2**20)
        libc.mallopt(_M_TRIM_THRESHOLD, 64 * 2**20)
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        pass


class VecCMDP(ABC):
    obs_dim: int
    act_dim: int
    n_tasks: int
    envs_per_task: int
    horizon: int

    @property
    def num_envs(self) -> int:
        return self.n_tasks * self.envs_per_task

    @abstractmethod
    def reset(self, seed: int | None = None) -> Tensor: ...

    @abstractmethod
    def step(self, act: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, dict]: ...


class EnvFault(UserError):
    """A non-finite value crossing the VecCMDP boundary: an action going in, or an observation, reward or
    cost coming out."""


def _bad_tasks(v: Tensor, n_tasks: int) -> list[int]:
    ok = torch.isfinite(v.detach()).reshape(n_tasks, -1).all(1)
    return (~ok).nonzero().flatten().tolist()


def all_finite(values: list[Tensor]) -> Tensor:
    """One boolean tensor: no NaN or infinity in any of ``values``."""
    return torch.stack([torch.isfinite(v).all() for v in values]).all()


def check_finite(venv: VecCMDP, **values: Tensor) -> None:
    """Raise `EnvFault` naming the field and the task indices if any value is NaN or infinite."""
    flags = [torch.isfinite(v).all() for v in values.values() if v.is_floating_point()]
    if not flags or bool(torch.stack(flags).all()):  # one synchronizing check in the common case
        return
    for name, v in values.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise EnvFault(f"{type(venv).__name__}: non-finite {name} for task(s) "
                           f"{_bad_tasks(v, venv.n_tasks)[:10]} of {venv.n_tasks} (NaN or Inf at the VecCMDP boundary).")


def checked_reset(venv: VecCMDP, seed: int | None = None) -> Tensor:
    obs = venv.reset(seed)
    check_finite(venv, **{"observation after reset": obs})
    return obs


def checked_step(venv: VecCMDP, act: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, dict]:
    """``venv.step`` with the boundary checked: finite actions in (out-of-bound ones are the env's to clip),
    finite observations, rewards, costs and final observations out."""
    check_finite(venv, action=act)
    out = venv.step(act)
    obs, rew, cost, _, _, info = out
    check_finite(venv, observation=obs, reward=rew, cost=cost, **{"final observation": info["final_obs"]})
    return out


class BatchedCMDP(VecCMDP):
    """Torch CMDP whose envs all step as one tensor program.

    Subclasses keep their per-env state in tensors and implement:
    - ``_reset_envs(mask)``: draw new initial states for envs where ``mask`` is true (use ``self.gen``);
    - ``_observe() -> obs[B, obs_dim]``;
    - ``_transition(act) -> reward[B], cost[B], terminated[B]`` advancing every env one step.
    Actions are clipped to [-1, 1] here (the policy's Gaussian samples are unbounded). The tensors a step
    returns are new ones (never views of state the env later updates in place): the collector keeps them.
    A family whose ``terminated`` is always false says so with ``can_terminate = False``.

    The per-env step counts ``t`` are advanced lazily: ``self._t + self._lag`` with ``_lag`` a Python int,
    and ``_t_bound`` an upper bound of ``max(self._t)`` (None: unknown), so a step that no env's time limit
    can end costs no tensor ops for the bookkeeping (issue 16: at small batches a step costs its op count).
    Reading ``t`` brings the tensor up to date and forgets the bound (the caller may write into it).
    """

    can_terminate = True

    def __init__(self, n_tasks: int, envs_per_task: int, horizon: int, device: str = "cpu", seed: int = 0):
        self.n_tasks, self.envs_per_task, self.horizon = n_tasks, envs_per_task, horizon
        self.device = torch.device(device)
        if self.device.type == "cpu":
            keep_freed_memory()
        self.gen = torch.Generator(device=self.device)
        self.gen.manual_seed(seed)
        self.t = torch.zeros(self.num_envs, dtype=torch.long, device=self.device)

    @property
    def t(self) -> Tensor:
        """``[B]`` steps since each env's episode began."""
        self._catch_up()
        self._t_bound = None
        return self._t

    @t.setter
    def t(self, value: Tensor) -> None:
        self._t, self._lag, self._t_bound = value, 0, None

    def _catch_up(self) -> None:
        if self._lag:
            self._t += self._lag
            self._lag = 0

    @abstractmethod
    def _reset_envs(self, mask: Tensor) -> None: ...

    @abstractmethod
    def _observe(self) -> Tensor: ...

    @abstractmethod
    def _transition(self, act: Tensor) -> tuple[Tensor, Tensor, Tensor]: ...

    def reset(self, seed: int | None = None) -> Tensor:
        if seed is not None:
            self.gen.manual_seed(int(seed))
        self._t.zero_()
        self._lag, self._t_bound = 0, 0
        self._reset_envs(torch.ones(self.num_envs, dtype=torch.bool, device=self.device))
        return self._observe()

    @staticmethod
    def clip_action(act: Tensor) -> Tensor:
        """Actions clipped to [-1, 1]; a NaN action steps as 0 (clamp keeps NaN, and NaN positions break e.g. the
        lidar's bin indices): the collector's per-chunk check then reports the stored NaN action as an EnvFault
        naming its tasks."""
        return torch.nan_to_num(act.clamp(-1.0, 1.0), nan=0.0)

    def step(self, act: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, dict]:
        reward, cost, terminated = self._transition(self.clip_action(act))
        self._lag += 1
        if self._t_bound is None:
            self._t_bound = int(self._t.max())
        if self._t_bound + self._lag >= self.horizon:  # some env may reach its time limit
            self._catch_up()
            at_limit = self._t >= self.horizon
            truncated = torch.gt(at_limit, terminated)  # at the limit and not terminated
            done = terminated | at_limit
        else:
            truncated = torch.zeros_like(terminated)
            done = terminated if self.can_terminate else None
        obs = self._observe()
        info = {"final_obs": obs}
        if done is not None and bool(done.any()):
            self._catch_up()
            self._t[done] = 0
            self._t_bound = int(self._t.max())
            self._reset_envs(done)
            obs = torch.where(done.unsqueeze(-1), self._observe(), obs)
        return obs, reward, cost, terminated, truncated, info


class PureStepCMDP(BatchedCMDP):
    """A `BatchedCMDP` whose step is also a pure, branch-free function of its state, for compiled collection
    (``trainer.compile_collection``, `safemeta.rollout.compiled`).

    `pure_step` is `step` without side effects: the same transition, time limit and auto-reset, with the reset's
    random draws given as ``u [B, reset_draws]`` (uniform in [0, 1), a row per env) where `step` draws
    ``rand(B, reset_draws)`` from ``self.gen`` at a step that ends an episode. Given those draws its numbers are
    `step`'s bit for bit (tests/test_compiled_collection.py). A family writes, next to its eager methods and
    sharing their pieces:
    - ``_pure_state() -> dict`` of the tensors that change from step to step (``t`` aside), ``_load_pure_state``;
    - ``_pure_transition(state, act) -> (state, obs, reward, cost, terminated)`` from a clipped action: `_transition`
      and `_observe` on ``state`` instead of the env's own;
    - ``_pure_start(u) -> (state, obs)``: every env at the start `_reset_envs` would draw from ``u``.
    A subclass that changes the eager step (e.g. overrides ``_transition``) changes the pure methods with it.
    """

    reset_draws: int

    def pure_state(self) -> dict[str, Tensor]:
        return {"t": self.t.clone(), **self._pure_state()}

    def load_pure_state(self, state: dict[str, Tensor]) -> None:
        """Continue from ``state`` (`pure_step`'s) with the eager `step`."""
        with torch.inference_mode(False):  # ordinary tensors: `reset` and `step` write into t
            self.t = state["t"].clone()
            self._load_pure_state({k: v.clone() for k, v in state.items() if k != "t"})

    def pure_step(self, state: dict[str, Tensor], act: Tensor, u: Tensor
                  ) -> tuple[dict[str, Tensor], Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """``(state, obs, final_obs, reward, cost, terminated, truncated)``: `step` from ``state``. The start state is
        computed for every env and kept where an episode ended (`step` resets only those)."""
        moved, final, reward, cost, terminated = self._pure_transition(state, self.clip_action(act))
        t = state["t"] + 1
        at_limit = t >= self.horizon
        truncated = torch.gt(at_limit, terminated)  # at the limit and not terminated
        done = terminated | at_limit
        start, start_obs = self._pure_start(u)
        keep = lambda new, old: torch.where(done.view(-1, *[1] * (old.dim() - 1)), new, old)  # noqa: E731
        state = {"t": t.masked_fill(done, 0), **{k: keep(start[k], v) for k, v in moved.items()}}
        return state, keep(start_obs, final), final, reward, cost, terminated, truncated

    @abstractmethod
    def _pure_state(self) -> dict[str, Tensor]: ...

    @abstractmethod
    def _load_pure_state(self, state: dict[str, Tensor]) -> None: ...

    @abstractmethod
    def _pure_transition(self, state: dict[str, Tensor], act: Tensor
                         ) -> tuple[dict[str, Tensor], Tensor, Tensor, Tensor, Tensor]: ...

    @abstractmethod
    def _pure_start(self, u: Tensor) -> tuple[dict[str, Tensor], Tensor]: ...
