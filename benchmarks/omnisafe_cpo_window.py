"""Cross-check investigation: our `cpo` with OmniSafe's constraint value (b from a 50-episode window).

OmniSafe's CPO sets b = J_C - d from ``logger.get_stats('Metrics/EpCost')``, a deque of the last 50
finished episodes (``policy_gradient.py`` registers the key with ``window_length=50``). When an epoch has
fewer than 50 episodes (SafetyPointGoal1-v0 at 4,000 steps: 4), b averages over the policies of up to 12
past epochs and lags behind the current one. CPO's b is the current policy's J_C (Achiam et al. 2017,
eq. 3: J_C(pi_k) - d), which is what ours uses. This script runs ``omnisafe_crosscheck.py`` (same
arguments) with our CPO's b replaced by that window's mean, to measure how much of a gap the lag
explains (each finished episode enters the window at its batch's mean cost, so the window's oldest
batch may count in part); it is an investigation aid, not an option of the product. Results are cached
apart from the plain cross-check's (``--out``, default ``runs/crosscheck_window``).

    .venv/bin/python benchmarks/omnisafe_cpo_window.py --family sg-env --env-id SafetyPointGoal1-v0 \
        --epochs 10 --steps-per-epoch 4000 --envs 4 --seeds 0 1 2 --algos cpo --only ours \
        --set policy.obs_normalize=true policy.init_log_std=0.0 critic.epochs=80 inner.cost_gradient=step
"""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import omnisafe_crosscheck  # noqa: E402

from safemeta.algorithms.inner.cpo import CPO  # noqa: E402

WINDOW = 50  # OmniSafe's window_length for Metrics/EpCost
_recent: list[float] = []  # the last WINDOW finished episodes' costs of the run in progress (one task)
_cpo_step = CPO.step
_run_ours = omnisafe_crosscheck.run_ours


def _windowed_step(self, params, batch, state, differentiable=False):
    if batch.n_tasks != 1:
        raise SystemExit("the window emulation is for the cross-check's single pooled task")
    _recent.extend([float(batch.ep_cost[0])] * int(batch.ep_count[0]))
    del _recent[:-WINDOW]
    windowed = torch.tensor([sum(_recent) / len(_recent)], dtype=batch.ep_cost.dtype)
    return _cpo_step(self, params, replace(batch, ep_cost=windowed), state, differentiable)


def _fresh_run(*args, **kwargs):
    _recent.clear()
    return _run_ours(*args, **kwargs)


if __name__ == "__main__":
    CPO.step = _windowed_step
    omnisafe_crosscheck.run_ours = _fresh_run
    if "--out" not in sys.argv:
        sys.argv += ["--out", "runs/crosscheck_window"]
    omnisafe_crosscheck.main()
