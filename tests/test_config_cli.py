"""Config validation and the CLI's user errors: exit code 2, a message naming the problem, no traceback."""
import pytest
import yaml

import safemeta
from safemeta.config.loader import parse_set
from safemeta.errors import UserError
from tests.conftest import run_cli


def _err(*args, cwd=None):
    r = run_cli(*args, cwd=cwd)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    return " ".join(r.stderr.split())


def test_unknown_algo_lists_valid_names(tmp_path):
    msg = _err("train", "--algo", "nope", "--out", str(tmp_path))
    assert "Unknown algo 'nope'" in msg and "fomaml_trpo" in msg and "pretrained" in msg and "random" in msg
    assert not (tmp_path / "nope-trpo-tiny-nav").exists()


@pytest.mark.parametrize("device, why", [
    pytest.param("cuda", "sees no CUDA device", marks=pytest.mark.skipif(
        __import__("torch").cuda.is_available(), reason="this machine has a GPU")),
    ("gpu", "is not a device"), ("mps", "not mps")])
def test_a_device_the_trainer_cannot_run_on_is_refused_before_the_run(tmp_path, device, why):
    msg = _err("train", "--set", f"trainer.device={device}", "--out", str(tmp_path))
    assert f"trainer.device '{device}'" in msg and why in msg and "valid" in msg and "cpu" in msg
    assert not any(tmp_path.iterdir())  # no run directory


def test_unknown_yaml_key_names_key_file_and_closest(tmp_path):
    bad = tmp_path / "my.yaml"
    bad.write_text("trainer:\n  itres: 3\n")
    msg = _err("train", "--config", str(bad), "--out", str(tmp_path))
    assert "trainer.itres" in msg and str(bad) in msg and "Did you mean: iters" in msg


def test_set_with_wrong_type_is_rejected(tmp_path):
    msg = _err("train", "--set", "trainer.iters=abc", "--out", str(tmp_path))
    assert "trainer.iters" in msg and "expected an integer" in msg and "'abc'" in msg and "--set" in msg


def test_more_bad_inputs(tmp_path):
    assert "out of range" in _err("train", "--set", "inner_cfg.trpo.max_kl=-1", "--out", str(tmp_path))
    assert "Valid inner solver names: cpo, crpo, focops, p3o, pidlag, pidlag_trpo, ppo, ppolag, trpo, trpolag" in _err("train", "--inner", "cpoo", "--out", str(tmp_path))
    assert "not one of tanh, relu, elu" in _err("train", "--set", "policy.activation=sigmoid", "--out", str(tmp_path))
    assert "does not exist" in _err("train", "--config", str(tmp_path / "missing.yaml"))
    assert "not a run directory" in _err("eval", str(tmp_path))
    assert "not a run directory" in _err("train", "--resume", str(tmp_path))


def test_layers_apply_in_order(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"trainer": {"iters": 7, "tasks_per_iter": 2}, "seed": 5}))
    from safemeta.config.loader import read_yaml
    cfg = safemeta.resolve_config([(str(f), read_yaml(f)), ("command line", {"seed": 6, "env": "tiny-nav"}),
                                   ("--set", parse_set(["trainer.iters=9", "policy.hidden_sizes=[4, 4]"]))])
    assert (cfg.trainer.iters, cfg.trainer.tasks_per_iter, cfg.seed) == (9, 2, 6)
    assert cfg.policy.hidden_sizes == (4, 4)
    assert cfg.trainer.envs_per_task == 16  # from configs/envs/tiny-nav.yaml over the default 8
    assert cfg.inner == "trpo" and cfg.inner_params.max_kl == 0.01


def test_inner_switch_keeps_per_solver_sections():
    cfg = safemeta.resolve_config([("x", {"inner": "trpolag", "inner_cfg": {"trpolag": {"lagrange_lr": 0.2},
                                                                              "trpo": {"max_kl": 0.05}}})])
    assert cfg.inner_params.lagrange_lr == 0.2 and cfg.inner_cfg["trpo"].max_kl == 0.05
    with pytest.raises(UserError, match="names no registered inner solver"):
        safemeta.resolve_config([("x", {"inner_cfg": {"cpo2": {}}})])


def test_parse_set_yaml_values():
    assert parse_set(["a.b=1", "a.c=0.5", "d=true", "e=[1,2]", "f=hello"]) == \
        {"a": {"b": 1, "c": 0.5}, "d": True, "e": [1, 2], "f": "hello"}
    with pytest.raises(UserError):
        parse_set(["a..b=1"])


def test_cli_train_and_eval_end_to_end(tmp_path):
    r = run_cli("train", "--env", "tiny-nav", "--iters", "2", "--seed", "4", "--out", str(tmp_path), "--set", "trainer.tasks_per_iter=2",
                "--set", "eval.tasks=2", "--set", "eval.adapt_steps=1")
    assert r.returncode == 0, r.stderr
    run_dir = next(tmp_path.glob("fomaml_trpo-trpo-tiny-nav/*-s4"))
    r = run_cli("eval", str(run_dir), "--tasks", "3", "--adapt-steps", "2", "--seed", "7")
    assert r.returncode == 0, r.stderr
    out = run_dir / "eval-it2-n3-k2-s7.json"
    import json
    report = json.loads(out.read_text())
    assert len(report["steps"]) == 3 and len(report["steps"][0]["per_task"]["return"]) == 3
    table = out.with_suffix(".csv").read_text().splitlines()
    assert table[0] == "step,task,return,cost,within_limit,cost_paid" and len(table) == 1 + 3 * 3
    r2 = run_cli("eval", str(run_dir), "--tasks", "3", "--adapt-steps", "2", "--seed", "7")
    assert json.loads(out.read_text())["steps"] == report["steps"]  # same seed, same numbers
    assert r2.returncode == 0


def test_list_shows_every_registry():
    r = run_cli("list")
    assert r.returncode == 0
    for name in ("fomaml_trpo", "random", "pretrained", "trpo", "trpolag", "fomaml", "pooled", "tiny-nav"):
        assert name in r.stdout


def test_wandb_logs_offline_without_login(tmp_path):
    import os
    env_backup = os.environ.pop("WANDB_API_KEY", None)
    try:
        r = run_cli("train", "--wandb", "--env", "tiny-nav", "--iters", "1", "--out", str(tmp_path), "--set", "eval.tasks=1",
                    "--set", "eval.adapt_steps=0", "--set", "trainer.tasks_per_iter=1")
    finally:
        if env_backup is not None:
            os.environ["WANDB_API_KEY"] = env_backup
    assert r.returncode == 0, r.stderr
    assert list(tmp_path.glob("*/*/wandb/offline-run-*"))


def test_env_settings_alias_and_range_errors(tmp_path):
    cfg = safemeta.resolve_config([("--set", parse_set(["env=point-circle", "env.test.r_c=[2.0,3.0]"]))])
    assert cfg.env == "point-circle" and cfg.env_params.test.r_c == (2.0, 3.0)
    assert cfg.env_params.train.r_c == (1.0, 1.5)
    with pytest.raises(UserError, match=r"range \[3.0, 2.0\] is empty"):
        safemeta.resolve_config([("--set", parse_set(["env=point-circle", "env.test.r_c=[3.0,2.0]"]))])
    with pytest.raises(UserError, match="Unknown config key 'env_cfg.point-circle.test.rc'.*Did you mean: r_c"):
        safemeta.resolve_config([("--set", parse_set(["env=point-circle", "env.test.rc=[1,2]"]))])
    msg = _err("train", "--env", "point-circle", "--set", "env.train.s=[0.5]", "--out", str(tmp_path))
    assert "env_cfg.point-circle.train.s" in msg and "[low, high] pair" in msg


def test_list_envs_shows_split_ranges():
    r = run_cli("list", "envs")
    assert r.returncode == 0
    out = " ".join(r.stdout.split())
    assert "point-circle" in out and "r_c in [1, 1.5]" in out and "r_c in [2, 2.5]" in out
    assert "trpolag" not in out  # only the env registry


def test_preset_wins_over_the_env_overlay_and_its_family_file_over_both(make_config):
    """defaults -> env overlay -> preset -> configs/algos/<algo>/<env>.yaml -> user layers."""
    import safemeta

    cfg = safemeta.resolve_config([("t", {"algo": "meta_cpo", "env": "point-circle"})])
    assert cfg.trainer.adapt_steps == 5 and cfg.trainer.tasks_per_iter == 5  # preset over the overlay's K = 1
    assert cfg.eval.adapt_steps == 5 and cfg.policy.hidden_sizes == (32, 16)  # the preset's point-circle file
    assert cfg.trainer.envs_per_task == 4  # the overlay where the preset is silent
    cfg = safemeta.resolve_config([("t", {"algo": "meta_cpo", "env": "point-circle", "eval": {"adapt_steps": 2}})])
    assert cfg.eval.adapt_steps == 2  # the user over everything
