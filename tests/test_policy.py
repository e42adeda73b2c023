"""The fast stacked-MLP path equals the generic vmap(functional_call) path, values and gradients."""
import torch

from safemeta.rollout.params import stack
from safemeta.rollout.policy import Critic, GaussianActor, batched, init_params, vmapped


def _stacked(module, n):
    g = torch.Generator().manual_seed(0)
    return {k: (v + 0.1 * torch.randn(n, *v.shape, generator=g)).requires_grad_(True)
            for k, v in init_params(module).items()}


def test_fast_actor_and_critic_match_vmap_functional_call():
    torch.manual_seed(0)
    x = torch.randn(3, 7, 5, 4)
    for module in (GaussianActor(4, 2, (16, 8), "tanh", -0.5), Critic(4, (16,), "relu")):
        p = _stacked(module, 3)
        fast, slow = batched(module)(p, x), vmapped(module)(p, x)
        fast = fast if isinstance(fast, tuple) else (fast,)
        slow = slow if isinstance(slow, tuple) else (slow,)
        for a, b in zip(fast, slow):
            torch.testing.assert_close(a, b)
        ga = torch.autograd.grad(sum(t.sum() for t in fast), list(p.values()))
        gb = torch.autograd.grad(sum(t.sum() for t in slow), list(p.values()))
        for a, b in zip(ga, gb):
            torch.testing.assert_close(a, b)


def test_stack_keeps_graph_to_unstacked_params():
    actor = GaussianActor(4, 2, (8,), "tanh", -0.5)
    theta = {k: v.requires_grad_(True) for k, v in init_params(actor).items()}
    mean, _ = batched(actor)(stack(theta, 2), torch.randn(2, 3, 4))
    grads = torch.autograd.grad(mean.sum(), list(theta.values()), allow_unused=True)
    g = dict(zip(theta, grads))["mean.0.weight"]
    assert g is not None and float(g.abs().sum()) > 0
