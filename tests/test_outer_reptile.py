"""Reptile's outer update (Nichol et al. 2018, Algorithm 2) against its closed form, its anneal schedule, and
the preset over P3O training on tiny-nav."""
import torch

from safemeta.algorithms.outer.reptile import Reptile, ReptileConfig
from safemeta.training.adaptation import AdaptationResult
from safemeta.training.trainer import MetaTrainer


def _updater(make_config, **cfg):
    t = MetaTrainer(make_config(algo="reptile_p3o", trainer={"iters": 4}))
    return t, Reptile(ReptileConfig(**cfg), t.outer.ctx)


def _result(t, shift: float) -> tuple[AdaptationResult, dict]:
    """Adapted parameters of 3 tasks: theta + (p + 1) * shift * (a fixed random direction) for task p."""
    g = torch.Generator().manual_seed(0)
    theta = {k: v.detach().clone() for k, v in t.meta.theta.items()}
    dirs = {k: torch.randn(v.shape, generator=g) for k, v in theta.items()}
    phi = {k: torch.stack([theta[k] + (p + 1) * shift * dirs[k] for p in range(3)]) for k in theta}
    return AdaptationResult(params=[phi], batches=[], state={}, critics={}), {k: theta[k] + 2 * shift * dirs[k]
                                                                               for k in theta}


def test_sgd_step_moves_theta_epsilon_of_the_way_to_the_mean_adapted_parameters(make_config):
    t, up = _updater(make_config, optimizer="sgd", lr=0.5, anneal=False)
    theta0 = {k: v.detach().clone() for k, v in t.meta.theta.items()}
    result, mean_phi = _result(t, 0.1)
    info = up.update(result, [])
    for k in theta0:  # theta + 0.5 * (mean phi - theta), mean phi = theta + 2 * shift * dir
        torch.testing.assert_close(t.meta.theta[k].detach(), theta0[k] + 0.5 * (mean_phi[k] - theta0[k]))
    assert info["meta/epsilon"] == 0.5


def test_epsilon_anneals_linearly_to_zero_and_resumes_where_it_was(make_config):
    t, up = _updater(make_config, optimizer="sgd", lr=1.0, anneal=True)  # trainer.iters = 4
    result, _ = _result(t, 0.01)
    eps = [up.update(result, [])["meta/epsilon"] for _ in range(2)]
    state = up.state_dict()
    t2, up2 = _updater(make_config, optimizer="sgd", lr=1.0, anneal=True)
    up2.load_state_dict(state)
    eps += [up2.update(result, [])["meta/epsilon"] for _ in range(3)]
    assert eps == [1.0, 0.75, 0.5, 0.25, 0.0]


def test_reptile_p3o_trains_without_a_post_adaptation_rollout(make_config):
    t = MetaTrainer(make_config(algo="reptile_p3o", trainer={"iters": 2}))
    assert t.cfg.outer == "reptile" and t.cfg.inner == "p3o" and not t.outer.needs_post_rollout
    before = {k: v.detach().clone() for k, v in t.meta.theta.items()}
    row = t.train_iteration()
    assert row["meta/epsilon"] == 1.0 and row["meta_grad_norm"] > 0
    assert any(not torch.equal(before[k], t.meta.theta[k].detach()) for k in before)
