"""Compiled collection (``trainer.compile_collection``): ``k`` steps of actor and env as one ``torch.compile`` graph.

At meta-RL's small batches (point-goal's preset: 5 tasks x 2 envs) an eager step is ~70 tiny torch ops, and their
fixed dispatch cost is the step's cost (issue 16). For an env that is a `PureStepCMDP` the collector can instead
call `rollout_steps`, compiled by TorchInductor: the Gaussian actor (`layer_chain`), the noise, the env's
`pure_step` and the observation normalization of ``k`` steps become a few fused C++ loops plus the actor's
batched matmuls, and the compiled function's guards and wrapper are paid once per ``k`` steps. Inductor's C++
wrapper (``cpp_wrapper``) runs the graph: its default Python wrapper cost as much again at point-goal 5 x 2
(benchmarks/README.md, "Collection speed", session 2026-12-03 (third)).

The same as the eager collector: the action noise (drawn per step from the run's generator, as the eager loop
draws it), the buffers, the boundary checks and the normalization's moments. Different:
- float rounding: fused kernels round differently from eager ones (e.g. vectorized transcendental functions), so
  numbers agree within a tolerance, not bit for bit (tests/test_compiled_collection.py states it), and a run with
  compiled collection is its own reproducible run, not a replay of an eager one;
- resets: the env's generator draws ``rand(k, B, reset_draws)`` once per call, and an episode that ends at step
  j restarts from row j (`PureStepCMDP`), where the eager env draws ``rand(B, reset_draws)`` at each step where an
  episode ends. After the first episode end the two are different, identically distributed samples;
- the first call at each shape compiles (tens of seconds on one core; torch keeps the result in its on-disk cache
  for later processes on the machine).
"""
from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

from safemeta.rollout.obs_norm import normalize
from safemeta.rollout.policy import layer_chain
from safemeta.rollout.vec_cmdp import PureStepCMDP, all_finite

STEPS_PER_CALL = 8  # k: steps per call; the compile time grows with k (k = 1 ran at half k = 8's speed in a probe)
RECOMPILE_LIMIT = 64  # shapes one process may compile (train, meta-test and scoring batches differ)


def rollout_steps(venv: PureStepCMDP, layers: list[tuple[Tensor, Tensor]], act_fn, std: Tensor,
                  norm: tuple[Tensor, Tensor, float] | None, state: dict[str, Tensor], obs: Tensor, raw: Tensor,
                  noise: Tensor, u: Tensor) -> tuple[dict[str, Tensor], Tensor, Tensor, dict[str, Tensor]]:
    """``k = len(noise)`` collector steps from the policy input ``obs`` (normalized ``raw``) and env ``state``.

    a_t = mu_theta(o_t) + sigma_theta * noise_t, then `pure_step` with the reset draws ``u[t]``. Returns the env
    state, the next policy input and its raw observation, and the steps stacked as `_Buffers.write` takes them.
    """
    n, e = venv.n_tasks, venv.envs_per_task
    rows: dict[str, list[Tensor]] = {key: [] for key in ("obs", "act", "rew", "cost", "term", "trunc", "next_obs",
                                                         "raw", "next_raw", "final_raw")}
    for j in range(noise.shape[0]):
        act = torch.mul(std, noise[j]).add_(layer_chain(obs.reshape(n, e, -1), layers, act_fn)).view(n * e, -1)
        state, nxt_raw, fin_raw, rew, cost, term, trunc = venv.pure_step(state, act, u[j])
        nxt = nxt_raw if norm is None else normalize(nxt_raw, *norm)
        fin = fin_raw if norm is None else normalize(fin_raw, *norm)
        for key, v in zip(rows, (obs, act, rew, cost, term, trunc, fin, raw, nxt_raw, fin_raw)):
            rows[key].append(v)
        obs, raw = nxt, nxt_raw
    chunk = {key: torch.stack(v) for key, v in rows.items()}
    chunk["noise"], chunk["last_raw"] = noise, raw
    # what the collector's boundary check tests (`_Buffers._check`: the raw observations, as with normalization)
    chunk["finite"] = all_finite([chunk[key] for key in ("act", "rew", "cost", "next_raw", "final_raw")])
    return state, obs, raw, chunk


@lru_cache(maxsize=1)
def compiled_rollout():
    """`rollout_steps` compiled (once per process; each new shape compiles on its first call)."""
    import torch._dynamo.config as dynamo_config  # imported on first use: importing dynamo takes seconds

    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, RECOMPILE_LIMIT)
    return torch.compile(rollout_steps, dynamic=False, fullgraph=True, options={"cpp_wrapper": True})


def compile_errors() -> tuple[type[Exception], ...]:
    """What a failed compilation raises (dynamo's and inductor's errors, e.g. no C++ compiler found)."""
    from torch._dynamo.exc import TorchDynamoException

    return (TorchDynamoException,)


def steps_per_call(steps: int) -> int:
    """The largest k <= `STEPS_PER_CALL` dividing a collection's ``steps``: one compiled shape per collection."""
    return next(k for k in range(min(STEPS_PER_CALL, steps), 0, -1) if steps % k == 0)
