"""Hostile input (issue 9), property-based: random ``--set`` overrides and random command lines either give a
valid config / a finished command, or a clean error naming the problem with exit code 2 — never a
traceback, never a key that is silently ignored."""
import dataclasses

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import safemeta
from safemeta.cli import main
from safemeta.config.loader import parse_set, to_dict
from safemeta.config.schema import Config
from safemeta.errors import UserError

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _schema_keys(cls, prefix="") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            keys += _schema_keys(type(default), f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


VALID_KEYS = _schema_keys(Config) + ["inner_cfg.cpo.backend", "inner_cfg.trpolag.lagrange_lr", "inner_cfg.crpo.tolerance",
                                     "outer_cfg.dco_cpo.max_kl", "env_cfg.point-goal.horizon", "env.test.r_c"]
junk_key = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_.-0123456789", min_size=0, max_size=20)
key = st.one_of(st.sampled_from(VALID_KEYS), st.sampled_from(VALID_KEYS), st.sampled_from(VALID_KEYS), junk_key,
                st.builds(lambda k, j: f"{k}.{j}", st.sampled_from(VALID_KEYS), junk_key))
value = st.one_of(
    st.integers(0, 4).map(str), st.sampled_from(["0.5", "0.01", "true", "false", "[32, 32]"]),
    st.integers(-10**12, 10**12).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", "nan", "inf", "-inf", "1e309", "-0", "true", "null", "[", "]", "{", "{a: 1}", "[1, [2]]",
                     "cpu", "ray", "local", "fisher", "cvxpylayers", "point-goal", "tiny-nav", "trpo", "~", "'x", "!!python/int 3",
                     "&a [*a]", "0x10", "1_000", "..", "\x00", "é", " "]),
    st.text(max_size=12))


@FUZZ
@given(pairs=st.lists(st.tuples(key, value), min_size=1, max_size=4))
def test_random_overrides_give_a_config_or_a_clean_error(pairs):
    items = [f"{k}={v}" for k, v in pairs]
    try:
        cfg = safemeta.resolve_config([("--set", parse_set(items))])
    except UserError as e:
        event("rejected with a UserError")
        msg = str(e)
        assert msg and "Traceback" not in msg
        # the message names one of the given keys (or a part of it) or the bad value
        assert any(part and part in msg for k, v in pairs for part in (f"{k}={v}", k, *k.split("."), v.strip())), (items, msg)
        return
    event("accepted")
    assert isinstance(cfg, Config)
    tree = to_dict(cfg)
    for k, _ in pairs:  # nothing given is dropped: every key exists in the resolved config
        parts = k.split(".")
        if parts[0] in ("env", "inner", "outer") and len(parts) > 1:
            continue  # settings of the active entry: they live under env_cfg.<env> / inner_cfg / outer_cfg
        node = tree
        for p in parts:
            assert isinstance(node, dict) and p in node, (items, k)
            node = node[p]


TOKENS = ["train", "eval", "bench", "leaderboard", "online", "list", "--algo", "--inner", "--env", "--seed", "--iters",
          "--out", "--config", "--set", "--resume", "--executor", "--ray-address", "--shards", "--plugin", "--tasks",
          "--adapt-steps", "--runs", "--family", "--grids", "--no-progress", "algos", "inners", "envs", "meta_cpo",
          "c_maml", "fomaml_trpo", "cpo", "trpolag", "crpo", "tiny-nav", "point-goal", "local", "ray", "-1", "0", "3",
          "1e9", "nan", "trainer.iters=2", "trainer.shards=0", "bogus.key=1", "=", "x=", "/nonexistent/path",
          "no_such_module", "--help-me", "--"]


@pytest.fixture
def no_training(monkeypatch):
    """Commands that would train only build the trainer (names, capabilities and values checked), and stop."""
    from safemeta.training.trainer import MetaTrainer

    def build_only(cfg, *a, **k):
        if cfg.trainer.executor == "local" and not cfg.env.startswith("sg-"):
            MetaTrainer(cfg).close()

    monkeypatch.setattr(safemeta, "train", build_only)
    monkeypatch.setattr(safemeta, "resume", lambda *a, **k: None)


PREFIXES = [[], ["list"], ["train", "--env", "tiny-nav"], ["train", "--algo", "c_maml", "--inner", "trpolag"],
            ["train", "--algo", "meta_cpo", "--inner"], ["train", "--set"], ["eval"], ["bench"], ["leaderboard", "--runs"]]


@FUZZ
@given(argv=st.builds(lambda pre, tail: pre + tail, st.sampled_from(PREFIXES),
                      st.lists(st.one_of(st.sampled_from(TOKENS), st.text(max_size=8)), max_size=6))
       .filter(lambda a: len(a) > 0))
def test_random_command_lines_exit_cleanly(argv, no_training, tmp_path_factory, capsys, monkeypatch):
    out = str(tmp_path_factory.mktemp("fuzz"))
    monkeypatch.chdir(out)  # default paths (runs/, leaderboards/) resolve in an empty folder
    try:
        code = main(argv + (["--out", out] if argv[0] == "train" else []))
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        code = e.code
    err = capsys.readouterr().err
    event(f"exit {code}")
    assert code in (0, 2), (argv, code, err)
    assert "Traceback" not in err, (argv, err)
    if code == 2:
        assert "error:" in err, (argv, err)
