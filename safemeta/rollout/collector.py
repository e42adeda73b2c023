"""Collect a `Batch` for every task of a `VecCMDP` in one vectorized loop.

Each task's actor parameters act on that task's E envs (``vmap`` over tasks). Actions are sampled
with an explicit ``torch.Generator`` so runs are reproducible and resumable. Every collection resets
the envs with a fresh seed and runs whole episodes (``episodes_per_env * horizon`` steps), so the
episode statistics count complete episodes and each inner step gets a fixed env-step budget.

At the small batches of meta-RL (e.g. 5 tasks x 2 envs) a step costs the fixed overhead of each torch
op, not arithmetic, so the loop runs as few ops per step as it can (issue 16): the actor's weights are
bound once (`safemeta.rollout.policy.bound_actor`); the step's tensors are kept by reference and written into the
``[N, T, E]`` buffers every ``chunk`` steps, one stack per field (`_Buffers`); log-probabilities come from
the kept noise once per chunk; and a `BatchedCMDP`'s boundary checks (finite actions in, finite
observations, rewards, costs out) run once per chunk on the stacked values, so a fault still raises
`EnvFault` naming the field and the tasks of the first faulty step, at most ``chunk`` steps later (other
VecCMDPs, e.g. MuJoCo ones, are still checked before each step). The numbers, and the random numbers
drawn, are those of the plain per-step loop (tests/test_collection_equivalence.py).

With ``compiled=True`` (``trainer.compile_collection``) an env that is a `PureStepCMDP` runs ``k`` steps per call of
a ``torch.compile``d graph instead (`safemeta.rollout.compiled`: the same action noise and checks, numbers within a
stated float tolerance, reset draws once per call).
"""
from __future__ import annotations

import math
from functools import partial

import torch
from torch import Tensor

from safemeta.rollout.batch import Batch, episode_means
from safemeta.rollout.obs_norm import RunningObsNorm
from safemeta.rollout.params import Params
from safemeta.errors import UserError
from safemeta.rollout.compiled import compile_errors, compiled_rollout, steps_per_call
from safemeta.rollout.policy import GaussianActor, actor_layers, bound_actor
from safemeta.rollout.vec_cmdp import (BatchedCMDP, PureStepCMDP, VecCMDP, all_finite, check_finite, checked_reset,
                                       checked_step)

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class Collector:
    def __init__(self, actor: GaussianActor, obs_norm: RunningObsNorm | None = None, chunk: int = 64,
                 compiled: bool = False):
        self.actor = actor
        self.obs_norm = obs_norm  # normalizes what the policy sees and the batch stores; gets the raw moments
        self.chunk = chunk  # steps between the buffer writes / boundary checks
        self.compiled = compiled  # compiled steps for a PureStepCMDP (`safemeta.rollout.compiled`); eager otherwise

    @torch.no_grad()
    def collect(self, params: Params, venv: VecCMDP, episodes_per_env: int, gen: torch.Generator) -> Batch:
        n, e = venv.n_tasks, venv.envs_per_task
        steps = episodes_per_env * venv.horizon
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen, device=gen.device))
        params = {k: v.detach() for k, v in params.items()}
        log_std = params["log_std"].reshape(n, 1, -1).expand(n, e, -1).contiguous()
        std = log_std.exp()
        raw = checked_reset(venv, seed)
        obs = raw if self.obs_norm is None else self.obs_norm(raw)
        out = _Buffers(venv, steps, log_std, self.obs_norm)
        # the step loop runs in inference mode (no autograd bookkeeping: ~15% less per op at these sizes); what
        # it returns lives in `_Buffers`' ordinary tensors, written in place, so solvers may differentiate through it
        with torch.inference_mode():
            if self.compiled and isinstance(venv, PureStepCMDP):
                self._compiled_steps(params, venv, steps, std, obs, raw, gen, out)
            else:
                self._eager_steps(params, venv, steps, std, obs, raw, gen, out)
        b = out.buf
        term, trunc = b["term"], b["trunc"]
        return Batch(obs=b["obs"], act=b["act"], logp=b["logp"], rew=b["rew"], cost=b["cost"],
                     terminated=term, truncated=trunc, next_obs=b["next_obs"],
                     ep_return=episode_means(b["rew"], term, trunc), ep_cost=episode_means(b["cost"], term, trunc),
                     ep_count=(term | trunc).sum(dim=(1, 2)).to(b["rew"].dtype))

    def _eager_steps(self, params: Params, venv: VecCMDP, steps: int, std: Tensor, obs: Tensor, raw: Tensor,
                     gen: torch.Generator, out: "_Buffers") -> None:
        n, e = venv.n_tasks, venv.envs_per_task
        mean_fn, _ = bound_actor(self.actor, params)
        # a torch-only env is checked per chunk; any other (e.g. MuJoCo) before each of its steps
        step = venv.step if isinstance(venv, BatchedCMDP) else partial(checked_step, venv)
        norm = self.obs_norm
        rows: list[tuple] = []
        # the run's generator is a CPU one; the env's tensors may live elsewhere (decided once, not per step)
        move_noise = std.device if gen.device != std.device else None
        for t in range(steps):
            noise = torch.randn(std.shape, generator=gen, device=gen.device)
            if move_noise is not None:
                noise = noise.to(move_noise)
            act = torch.mul(std, noise).add_(mean_fn(obs.reshape(n, e, -1))).view(n * e, -1)
            nxt_raw, rew, cost, term, trunc, info = step(act)
            fin_raw = info["final_obs"]  # the same tensor as nxt_raw when no env finished an episode
            nxt = nxt_raw if norm is None else norm(nxt_raw)
            fin = nxt if fin_raw is nxt_raw else (fin_raw if norm is None else norm(fin_raw))
            rows.append((obs, act, noise, rew, cost, term, trunc, fin, raw, nxt_raw, fin_raw))
            obs, raw = nxt, nxt_raw
            if len(rows) == self.chunk or t == steps - 1:
                out.write_rows(t + 1 - len(rows), rows)
                rows = []

    def _compiled_steps(self, params: Params, venv: PureStepCMDP, steps: int, std: Tensor, obs: Tensor, raw: Tensor,
                        gen: torch.Generator, out: "_Buffers") -> None:
        """`_eager_steps` through `compiled.rollout_steps`, k steps per call (same noise draws; see that module for
        what differs)."""
        layers, act_fn = actor_layers(self.actor, params)
        norm = None if self.obs_norm is None else (*self.obs_norm.constants(raw), self.obs_norm.clip)
        rollout, k = compiled_rollout(), steps_per_call(steps)
        state = venv.pure_state()
        for t0 in range(0, steps, k):
            noise = torch.stack([torch.randn(std.shape, generator=gen, device=gen.device) for _ in range(k)])
            u = torch.rand(k, venv.num_envs, venv.reset_draws, generator=venv.gen, device=venv.device)
            try:
                state, obs, raw, chunk = rollout(venv, layers, act_fn, std, norm, state, obs, raw,
                                                 noise.to(std.device), u)
            except compile_errors() as err:  # e.g. no C++ compiler for TorchInductor on this machine
                raise UserError(f"trainer.compile_collection=true: torch.compile failed for {type(venv).__name__} "
                                f"({type(err).__name__}: {str(err).strip().splitlines()[0][:300]}). Set "
                                "trainer.compile_collection=false to collect eagerly.") from err
            out.write(t0, chunk)
        venv.load_pure_state(state)


class _Buffers:
    """The ``[N, T, E, ...]`` buffers of one collection, filled a chunk of steps at a time (`write`)."""

    FIELDS = ("obs", "act", "noise", "rew", "cost", "term", "trunc", "next_obs")

    def __init__(self, venv: VecCMDP, steps: int, log_std: Tensor, norm: RunningObsNorm | None):
        self.venv, self.steps, self.log_std, self.norm = venv, steps, log_std, norm
        self.buf: dict[str, Tensor] = {}

    def write_rows(self, t0: int, rows: list[tuple]) -> None:
        """`write` steps ``t0 .. t0 + len(rows) - 1`` given as rows ``(obs, act, noise, rew, cost, term, trunc,
        next_obs, raw obs, raw next obs, raw final obs)``, one per step, ``[N*E, ...]`` each but the noise
        (``[N, E, act_dim]``)."""
        cols = list(zip(*rows))
        chunk = {name: torch.stack(cols[i]) for i, name in enumerate(self.FIELDS)}
        chunk["last_raw"] = cols[9][-1]
        if self.norm is not None:  # normalized values are clipped: the raw ones are checked (and observed)
            chunk.update(raw=torch.stack(cols[8]), next_raw=torch.stack(cols[9]), final_raw=torch.stack(cols[10]))
        self.write(t0, chunk)

    def write(self, t0: int, chunk: dict[str, Tensor]) -> None:
        """Check, then store ``k`` steps from ``t0``: ``chunk`` holds each of ``FIELDS`` stacked ``[k, N*E, ...]``
        (the noise ``[k, N, E, act_dim]``), ``last_raw`` (the raw observation after the last step) and, with
        normalization, the raw observations ``raw``, ``next_raw`` and ``final_raw`` ``[k, N*E, obs_dim]``; ``finite``,
        when given, says whether the values `_check` tests are all finite."""
        self._check(chunk)
        if self.norm is not None:  # the raw moments of what the policy saw, step by step as before
            self.norm.observe_steps(chunk["raw"])
        n, e, k = self.venv.n_tasks, self.venv.envs_per_task, len(chunk["act"])
        noise = chunk["noise"]  # [k, N, E, act_dim]: logp as the per-step loop computed it, for k steps at once
        out = {name: chunk[name].view(k, n, e, *chunk[name].shape[2:]) for name in self.FIELDS if name != "noise"}
        out["logp"] = (-0.5 * noise.pow(2) - self.log_std - _HALF_LOG_2PI).sum(-1)
        for name, v in out.items():
            if name not in self.buf:
                with torch.inference_mode(False):  # an ordinary tensor, usable by autograd after the collection
                    self.buf[name] = torch.empty((n, self.steps, e, *v.shape[3:]), dtype=v.dtype, device=v.device)
            self.buf[name][:, t0:t0 + k] = v.transpose(0, 1)

    def _check(self, chunk: dict[str, Tensor]) -> None:
        """Raise `EnvFault` as the per-step checks would (`checked_step`): at the first step with a non-finite
        action, observation, reward, cost or final observation, naming that field and its tasks."""
        if self.norm is None:  # the observation after step t is the policy's input at t + 1
            seen = [chunk["obs"][1:], chunk["last_raw"], chunk["next_obs"]]
        else:  # normalized values are clipped: check the raw ones
            seen = [chunk["next_raw"], chunk["final_raw"]]
        finite = chunk.get("finite")  # computed by the compiled steps, from the same values
        if finite is None:
            finite = all_finite([chunk["act"], chunk["rew"], chunk["cost"], *seen])
        if bool(finite):
            return
        if self.norm is None:
            next_raw = torch.cat([chunk["obs"][1:], chunk["last_raw"].unsqueeze(0)])
            final_raw = chunk["next_obs"]
        else:
            next_raw, final_raw = chunk["next_raw"], chunk["final_raw"]
        for j in range(len(chunk["act"])):
            check_finite(self.venv, action=chunk["act"][j])
            check_finite(self.venv, observation=next_raw[j], reward=chunk["rew"][j], cost=chunk["cost"][j],
                         **{"final observation": final_raw[j]})
