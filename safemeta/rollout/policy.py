"""Gaussian MLP actor and reward/cost critics evaluated with per-task stacked parameters.

The modules only define the architecture; parameters live outside them (`safemeta.rollout.params`) and are
applied with ``torch.func.functional_call`` vectorized over the task dimension with ``vmap``, so one
call evaluates every task's policy on its own observations.

Actor: pi_theta(a|s) = N(mu_theta(s), diag(exp(log_std)^2)), state-independent log_std.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from safemeta.rollout.params import Params

_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU}


def mlp(sizes: list[int], activation: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(_ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class GaussianActor(nn.Module):
    kind = "gaussian"  # what an inner solver must support to update it (``InnerSolver.policy_kinds``)

    def __init__(self, obs_dim: int, act_dim: int, hidden_sizes: tuple[int, ...], activation: str, init_log_std: float):
        super().__init__()
        self.mean = mlp([obs_dim, *hidden_sizes, act_dim], activation)
        with torch.no_grad():  # small last layer: initial actions near zero mean
            self.mean[-1].weight.mul_(0.01)
            self.mean[-1].bias.zero_()
        self.log_std = nn.Parameter(torch.full((act_dim,), float(init_log_std)))

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        return self.mean(obs), self.log_std.expand(*obs.shape[:-1], self.log_std.shape[-1])


class Critic(nn.Module):
    def __init__(self, obs_dim: int, hidden_sizes: tuple[int, ...], activation: str):
        super().__init__()
        self.net = mlp([obs_dim, *hidden_sizes, 1], activation)

    def forward(self, obs: Tensor) -> Tensor:
        return self.net(obs).squeeze(-1)


def init_params(module: nn.Module) -> Params:
    """The module's freshly initialized parameters as an (unstacked) detached dict."""
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def batched(module: nn.Module):
    """``f(params[N,...], x[N, ..., d]) -> module output per task``.

    The generic path is ``vmap(functional_call)`` over the task dimension. For this module's own MLPs
    (`GaussianActor`, `Critic`) an equivalent batched-matmul path is used (same numbers, about twice as
    fast on CPU; checked against the generic path in tests/test_policy.py).
    """
    if isinstance(module, GaussianActor):
        layers = _linear_names(module.mean, "mean.")
        act = _activation_fn(module.mean)

        def actor(p: Params, x: Tensor):
            mean = _stacked_mlp(p, x, layers, act)
            return mean, p["log_std"].reshape(p["log_std"].shape[0], *([1] * (x.dim() - 2)), -1).expand_as(mean)

        return actor
    if isinstance(module, Critic):
        layers = _linear_names(module.net, "net.")
        act = _activation_fn(module.net)
        return lambda p, x: _stacked_mlp(p, x, layers, act).squeeze(-1)
    return vmapped(module)


def bound_actor(actor: GaussianActor, params: Params):
    """``(mean_fn, log_std)``: `batched` for a `GaussianActor` with stacked ``params`` bound once, for a loop
    that calls it at every env step (the collector).

    ``mean_fn(x[N, M, obs_dim]) -> [N, M, act_dim]`` is `_stacked_mlp`'s layer chain (same ops, same numbers)
    with the per-layer lookups and bias / weight views done here once instead of per call. ``log_std`` is
    ``[N, act_dim]`` (state-independent, as `GaussianActor`'s).
    """
    bound = _bind(params, _linear_names(actor.mean, "mean."))
    act = _activation_fn(actor.mean)
    return (lambda h: _chain(h, bound, act)), params["log_std"]


_ACTIVATION_OPS = {nn.Tanh: torch.tanh, nn.ReLU: torch.relu, nn.ELU: nn.functional.elu}  # what their forward calls


def vmapped(module: nn.Module):
    """The generic per-task evaluation: ``vmap`` of ``functional_call`` over the task dimension."""

    def call(p: Params, x: Tensor):
        return functional_call(module, p, (x,))

    return vmap(call)


def _linear_names(seq: nn.Sequential, prefix: str) -> list[str]:
    return [f"{prefix}{i}" for i, m in enumerate(seq) if isinstance(m, nn.Linear)]


def _activation_fn(seq: nn.Sequential):
    """The hidden layers' activation as the torch function its module's forward calls (None: no hidden layer)."""
    acts = [m for m in seq if not isinstance(m, nn.Linear)]
    return _ACTIVATION_OPS.get(type(acts[0]), acts[0]) if acts else None


def _bind(p: Params, layers: list[str]) -> list[tuple[Tensor, Tensor]]:
    """Each linear layer's stacked ``(bias[N, 1, out], weight^T[N, in, out])``, as `torch.baddbmm` takes them."""
    return [(p[f"{name}.bias"].unsqueeze(1), p[f"{name}.weight"].transpose(1, 2)) for name in layers]


CHUNK_ROWS = 1024  # rows per task above which `_chain` runs in row chunks (benchmarks/README.md "Meta-iteration")


def _chain(h: Tensor, bound: list[tuple[Tensor, Tensor]], act) -> Tensor:
    """``h[N, M, in]`` through the bound layers, ``act`` between them.

    A large batch (``M > CHUNK_ROWS``) goes through in chunks of ``CHUNK_ROWS`` rows, concatenated: each
    row's output is the same computation, but a chunk's ``[N, CHUNK_ROWS, 64]`` activations stay in cache
    where the whole batch's would stream through memory between layers (about 2x faster forward and 1.3x
    forward + backward at 16,000 rows per task on one CPU thread). Autograd differentiates the chunks as
    any other ops."""
    if h.shape[1] > CHUNK_ROWS:
        return torch.cat([_chain(c, bound, act) for c in h.split(CHUNK_ROWS, 1)], 1)
    *hidden, (last_b, last_w) = bound
    for b, w in hidden:
        h = act(torch.baddbmm(b, h, w))
    return torch.baddbmm(last_b, h, last_w)


def _stacked_mlp(p: Params, x: Tensor, layers: list[str], act) -> Tensor:
    shape = x.shape
    h = _chain(x.reshape(shape[0], -1, shape[-1]), _bind(p, layers), act)
    return h.reshape(*shape[:-1], h.shape[-1])


def gaussian_log_prob(act: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """log N(act; mean, exp(log_std)^2), summed over action dimensions."""
    z = (act - mean) * torch.exp(-log_std)
    return (-0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def gaussian_kl(mean0: Tensor, log_std0: Tensor, mean1: Tensor, log_std1: Tensor) -> Tensor:
    """KL(N0 || N1) for diagonal Gaussians, summed over action dimensions."""
    var0, var1 = torch.exp(2 * log_std0), torch.exp(2 * log_std1)
    return (log_std1 - log_std0 + (var0 + (mean0 - mean1).pow(2)) / (2 * var1) - 0.5).sum(-1)


def gaussian_entropy(log_std: Tensor) -> Tensor:
    return (log_std + 0.5 * math.log(2 * math.pi * math.e)).sum(-1)
