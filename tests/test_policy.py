"""The fast stacked-MLP path equals the generic vmap(functional_call) path, values and gradients."""
import pytest
import torch

from safemeta.rollout.params import stack
from safemeta.rollout.policy import CHUNK_ROWS, Critic, GaussianActor, batched, init_params, vmapped


def _stacked(module, n):
    g = torch.Generator().manual_seed(0)
    return {k: (v + 0.1 * torch.randn(n, *v.shape, generator=g)).requires_grad_(True)
            for k, v in init_params(module).items()}


@pytest.mark.parametrize("rows", [35, CHUNK_ROWS + 1, 2 * CHUNK_ROWS + 300])  # one chunk, and chunked with a remainder
def test_fast_actor_and_critic_match_vmap_functional_call(rows):
    torch.manual_seed(0)
    x = torch.randn(3, rows // 5, 5, 4) if rows % 5 == 0 else torch.randn(3, rows, 4)
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


def test_chunked_actor_second_derivatives_match_vmap_functional_call():
    """Meta-CPO differentiates through Fisher-vector products: the chunked path's Hessian-vector products are the
    generic path's."""
    torch.manual_seed(0)
    actor = GaussianActor(4, 2, (16, 8), "tanh", -0.5)
    x = torch.randn(2, CHUNK_ROWS + 7, 4)
    p = _stacked(actor, 2)
    v = [torch.randn_like(t) for t in p.values()]
    hv = []
    for fn in (batched(actor), vmapped(actor)):
        mean, log_std = fn(p, x)
        g = torch.autograd.grad((mean.tanh().pow(2).sum() + log_std.exp().sum()), list(p.values()), create_graph=True)
        hv.append(torch.autograd.grad(sum((a * b).sum() for a, b in zip(g, v)), list(p.values())))
    for a, b in zip(*hv):  # sums over 1,000 rows in another order: float32 rounding, not a missing chunk
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
