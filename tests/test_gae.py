"""GAE against a hand-computed sequence with a truncation and a termination."""
import torch

from safemeta.rollout.batch import gae


def test_gae_matches_hand_computation_with_truncation_and_termination():
    gamma, lam = 0.9, 0.8
    # one task, one env, 5 steps: episode A = steps 0-1 (truncated at 1), episode B = steps 2-3
    # (terminated at 3), episode C = step 4 (cut by the end of the rollout).
    rew = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    v = torch.tensor([0.5, 1.0, 1.5, 2.0, 2.5])
    nv = torch.tensor([1.0, 7.0, 2.0, 9.0, 3.0])  # next-state values; 7 = V(final obs) at truncation
    term = torch.tensor([False, False, False, True, False])
    trunc = torch.tensor([False, True, False, False, False])
    # hand computation
    d0 = 1 + 0.9 * 1.0 - 0.5        # 1.4
    d1 = 2 + 0.9 * 7.0 - 1.0        # 7.3  (truncation bootstraps from V(final obs))
    d2 = 3 + 0.9 * 2.0 - 1.5        # 3.3
    d3 = 4 + 0.0 - 2.0              # 2.0  (termination: no bootstrap)
    d4 = 5 + 0.9 * 3.0 - 2.5        # 5.2  (end of rollout bootstraps)
    a4 = d4
    a3 = d3                         # episode boundary: no recursion across it
    a2 = d2 + 0.72 * a3
    a1 = d1
    a0 = d0 + 0.72 * a1
    expected = torch.tensor([a0, a1, a2, a3, a4])
    shape = (1, 5, 1)
    adv, ret = gae(rew.view(shape), v.view(shape), nv.view(shape), term.view(shape), trunc.view(shape), gamma, lam)
    torch.testing.assert_close(adv.flatten(), expected)
    torch.testing.assert_close(ret.flatten(), expected + v)


def test_gae_is_per_task_and_per_env():
    g = torch.Generator().manual_seed(0)
    rew, v, nv = (torch.randn(3, 6, 4, generator=g) for _ in range(3))
    term = torch.rand(3, 6, 4, generator=g) < 0.2
    trunc = (torch.rand(3, 6, 4, generator=g) < 0.2) & ~term
    adv, _ = gae(rew, v, nv, term, trunc, 0.99, 0.95)
    for i in range(3):
        for e in range(4):
            sl = (slice(i, i + 1), slice(None), slice(e, e + 1))
            one, _ = gae(rew[sl], v[sl], nv[sl], term[sl], trunc[sl], 0.99, 0.95)
            torch.testing.assert_close(one, adv[sl])


def test_lambda_one_gamma_one_gives_monte_carlo_return_minus_value():
    rew = torch.tensor([1.0, 1.0, 1.0]).view(1, 3, 1)
    v = torch.tensor([0.3, 0.2, 0.1]).view(1, 3, 1)
    term = torch.tensor([False, False, True]).view(1, 3, 1)
    nv = torch.tensor([0.2, 0.1, 0.0]).view(1, 3, 1)  # V of each true next state
    adv, ret = gae(rew, v, nv, term, torch.zeros_like(term), 1.0, 1.0)
    torch.testing.assert_close(ret.flatten(), torch.tensor([3.0, 2.0, 1.0]))
