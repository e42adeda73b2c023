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

from safemeta.rollout.params import Params, flat, unflat

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
    bound, act = actor_layers(actor, params)
    return (lambda h: layer_chain(h, bound, act)), params["log_std"]


def actor_layers(actor: GaussianActor, params: Params) -> tuple[list[tuple[Tensor, Tensor]], object]:
    """The mean network's layers bound to stacked ``params`` (``(bias[N, 1, out], weight^T[N, in, out])`` each) and
    its activation: ``layer_chain(x, *actor_layers(actor, params))`` is `bound_actor`'s ``mean_fn(x)``."""
    return _bind(params, _linear_names(actor.mean, "mean.")), _activation_fn(actor.mean)


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


CHUNK_ROWS = 1024  # rows per task above which `layer_chain` runs in row chunks (benchmarks/README.md "Meta-iteration")


def layer_chain(h: Tensor, bound: list[tuple[Tensor, Tensor]], act) -> Tensor:
    """``h[N, M, in]`` through the bound layers, ``act`` between them.

    A large batch (``M > CHUNK_ROWS``) goes through in chunks of ``CHUNK_ROWS`` rows, concatenated: each
    row's output is the same computation, but a chunk's ``[N, CHUNK_ROWS, 64]`` activations stay in cache
    where the whole batch's would stream through memory between layers (about 2x faster forward and 1.3x
    forward + backward at 16,000 rows per task on one CPU thread). Autograd differentiates the chunks as
    any other ops."""
    if h.shape[1] > CHUNK_ROWS:
        return torch.cat([layer_chain(c, bound, act) for c in h.split(CHUNK_ROWS, 1)], 1)
    *hidden, (last_b, last_w) = bound
    for b, w in hidden:
        h = act(torch.baddbmm(b, h, w))
    return torch.baddbmm(last_b, h, last_w)


def _stacked_mlp(p: Params, x: Tensor, layers: list[str], act) -> Tensor:
    shape = x.shape
    h = layer_chain(x.reshape(shape[0], -1, shape[-1]), _bind(p, layers), act)
    return h.reshape(*shape[:-1], h.shape[-1])


_ACTIVATION_SLOPES = {  # d act / d z from the activation's output h (what the forward pass keeps)
    torch.tanh: lambda h: 1.0 - h * h,
    torch.relu: lambda h: (h > 0).to(h.dtype),
    nn.functional.elu: lambda h: torch.where(h > 0, torch.ones_like(h), h + 1.0),  # alpha = 1, nn.ELU's default
}


# each activation's backward as autograd runs it (its ``*Backward0`` node), from the pre-activation z and output h
_ACTIVATION_BACKWARDS = {
    torch.tanh: lambda g, z, h: torch.ops.aten.tanh_backward(g, h),
    torch.relu: lambda g, z, h: torch.ops.aten.threshold_backward(g, h, 0),
    nn.functional.elu: lambda g, z, h: torch.ops.aten.elu_backward(g, 1.0, 1, 1, False, z),
}


def critic_mse_grads(critic: nn.Module):
    """``(params, x, target) -> gradient`` of sum_i mean_s (V_i(x[i, s]) - target[i, s])^2 in the stacked ``params``
    of a `Critic` (``x[R, S, d]``, ``target[R, S]``; one tuple entry per parameter, in ``params``' order), or None
    for a critic this closed form does not cover (the caller then uses autograd). The returned function also
    gives None for ``S > CHUNK_ROWS`` (the forward pass then runs in chunks whose gradients autograd sums in its
    own order).

    A critic fit's Adam step (`safemeta.rollout.critics.Critics.fit`) needs only this gradient. It is autograd's
    backward pass written out: the same kernels on the same operands in the same layouts (``bmm`` of the
    transposed activations for a weight, a row sum for a bias, the activation's own backward kernel), so the
    same numbers bit for bit (tests/test_critics.py), without the graph's bookkeeping: 1.07-1.28x faster per
    step on one CPU thread, most for the 2-row fit of the critics' initialization (benchmarks/critic_step.py).
    The critic's layout is read here once, not at every step."""
    if not isinstance(critic, Critic):
        return None
    act = _activation_fn(critic.net)
    if act is not None and act not in _ACTIVATION_BACKWARDS:
        return None
    names = _linear_names(critic.net, "net.")
    backward = _ACTIVATION_BACKWARDS.get(act)

    def grads(params: Params, x: Tensor, target: Tensor) -> tuple[Tensor, ...] | None:
        if x.shape[1] > CHUNK_ROWS:
            return None
        with torch.no_grad():
            bound = _bind(params, names)
            inputs, pre = [x], []  # each layer's input; each hidden layer's pre-activation
            h = x
            for b, w in bound[:-1]:
                pre.append(torch.baddbmm(b, h, w))
                h = act(pre[-1])
                inputs.append(h)
            residual = torch.baddbmm(bound[-1][0], h, bound[-1][1]).squeeze(-1) - target
            rows, samples = residual.shape
            # d/dV of sum_i mean_s r^2 as autograd forms it: (1 expanded over [R, S]) / S, times 2 r
            grad = torch.ones((), dtype=residual.dtype, device=residual.device).expand(rows, samples).div(samples)
            grad = grad.mul(residual.mul(2.0)).unsqueeze(-1)
            out = {}
            for layer in reversed(range(len(names))):
                name = names[layer]
                out[f"{name}.bias"] = grad.sum(1, keepdim=True).squeeze(1)
                out[f"{name}.weight"] = inputs[layer].transpose(1, 2).bmm(grad).transpose(1, 2)
                if layer:
                    upstream = grad.bmm(bound[layer][1].transpose(1, 2))
                    grad = backward(upstream, pre[layer - 1], inputs[layer])
        return tuple(out[k] for k in params)

    return grads


def gaussian_fisher(actor: nn.Module, params: Params, obs: Tensor):
    """``v -> F v`` for a `GaussianActor` with stacked ``params`` on each task's states ``obs[N, S, d]``, or None
    for an actor this closed form does not cover (the caller then differentiates the KL twice).

    F is the Hessian in q of the mean KL(pi_params(.|s) || pi_q(.|s)) at q = params (the Fisher matrix of
    Schulman et al. 2015, App. C). For a diagonal Gaussian with mean mu_q(s) and state-independent log_std it
    is, exactly at q = params, the Gauss-Newton form: F = mean_s J(s)^T diag(exp(-2 log_std)) J(s) on the
    mean network's parameters (J = d mu / d q) and 2 I on log_std, with no cross terms (the terms with
    mu_params - mu_q vanish there). A product is then one forward-mode pass (J v) and one reverse pass
    (J^T u) through the layers with the activations kept from one forward pass: ~1.7x faster than the
    double backward through the KL's gradient at 4,000 states per task (benchmarks/README.md), the same
    numbers up to float rounding (tests/test_inner_trpo.py). Not differentiable in ``params`` (the
    differentiable steps keep the autograd form)."""
    if not isinstance(actor, GaussianActor):
        return None
    act = _activation_fn(actor.mean)
    if act is not None and act not in _ACTIVATION_SLOPES:
        return None
    names = _linear_names(actor.mean, "mean.")
    with torch.no_grad():
        p = {k: v.detach() for k, v in params.items()}
        bound = _bind(p, names)
        hs, slopes, h = [obs], [], obs  # each layer's input, and each hidden layer's d act / d z
        for b, w in bound[:-1]:
            h = act(torch.baddbmm(b, h, w))
            hs.append(h)
            slopes.append(_ACTIVATION_SLOPES[act](h))
        precision = torch.exp(-2.0 * p["log_std"]).unsqueeze(1) / obs.shape[1]  # [N, 1, A]: 1 / sigma^2, mean over s

    def product(v: Tensor) -> Tensor:
        with torch.no_grad():
            vp = unflat(v, p)
            dz = None
            for layer, name in enumerate(names):  # J v, layer by layer
                tangent = torch.baddbmm(vp[f"{name}.bias"].unsqueeze(1), hs[layer], vp[f"{name}.weight"].transpose(1, 2))
                if dz is not None:
                    tangent = tangent.baddbmm_(dz, bound[layer][1])
                dz = tangent * slopes[layer] if layer < len(slopes) else tangent
            grad = dz.mul_(precision)  # diag(1 / sigma^2) J v, averaged over states
            out = {"log_std": 2.0 * vp["log_std"]}
            for layer in reversed(range(len(names))):  # J^T u, layer by layer
                name = names[layer]
                out[f"{name}.weight"] = torch.bmm(grad.transpose(1, 2), hs[layer])
                out[f"{name}.bias"] = grad.sum(1)
                if layer:
                    grad = torch.bmm(grad, p[f"{name}.weight"]).mul_(slopes[layer - 1])
            return flat({k: out[k] for k in p})

    return product


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
