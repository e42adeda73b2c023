"""User extensions without editing the package: --plugin FILE/MODULE and the safemeta.plugins entry point."""
import textwrap

from tests.conftest import run_cli

PLUGIN = textwrap.dedent('''
    from dataclasses import dataclass
    from safemeta.registry import register_inner
    from safemeta.algorithms.inner.trpo import TRPO, TRPOConfig

    @dataclass
    class HalfConfig(TRPOConfig):
        scale: float = 0.5

    @register_inner("half_trpo", "TRPO with half the trust region (a user plugin)")
    class HalfTRPO(TRPO):
        Config = HalfConfig
''')


def test_plugin_file_registers_a_usable_inner_solver(tmp_path):
    f = tmp_path / "my_solver.py"
    f.write_text(PLUGIN)
    r = run_cli("list", "--plugin", str(f))
    assert r.returncode == 0 and "half_trpo" in r.stdout and "plugin" in r.stdout
    r = run_cli("train", "--plugin", str(f), "--inner", "half_trpo", "--env", "tiny-nav", "--iters", "1", "--out", str(tmp_path / "runs"),
                "--set", "inner_cfg.half_trpo.scale=0.25", "--set", "eval.tasks=1", "--set", "eval.adapt_steps=0")
    assert r.returncode == 0, r.stderr
    assert "scale: 0.25" in next((tmp_path / "runs").glob("*/*/config.yaml")).read_text()


def test_plugin_module_by_name(tmp_path):
    (tmp_path / "mysolvers.py").write_text(PLUGIN)
    r = run_cli("list", "--plugin", "mysolvers", cwd=tmp_path)
    assert r.returncode == 0 and "half_trpo" in r.stdout


def test_entry_point_group_is_loaded(tmp_path):
    (tmp_path / "ep_solvers.py").write_text(PLUGIN.replace("half_trpo", "ep_trpo"))
    dist = tmp_path / "ep_solvers-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-solvers\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[safemeta.plugins]\nmine = ep_solvers\n")
    r = run_cli("list", cwd=tmp_path)  # cwd is on sys.path via `python -m`
    assert r.returncode == 0, r.stderr
    assert "ep_trpo" in r.stdout and "entry point mine" in r.stdout


def test_a_plugin_run_is_evaluated_and_resumed_without_repeating_the_plugin(tmp_path):
    import json

    f = tmp_path / "my_solver.py"
    f.write_text(PLUGIN)
    r = run_cli("train", "--plugin", str(f), "--inner", "half_trpo", "--env", "tiny-nav", "--iters", "1", "--out",
                str(tmp_path / "runs"), "--no-progress", "--set", "eval.tasks=1", "--set", "eval.adapt_steps=1",
                "--set", "eval.episodes=2")
    assert r.returncode == 0, r.stderr
    run_dir = next((tmp_path / "runs").glob("*/*"))
    assert json.loads((run_dir / "run.json").read_text())["plugins"] == [str(f.resolve())]
    r = run_cli("eval", str(run_dir), "--tasks", "1", "--adapt-steps", "1", "--episodes", "2")
    assert r.returncode == 0, r.stderr
    r = run_cli("train", "--resume", str(run_dir), "--iters", "2", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert json.loads((run_dir / "meta_test.json").read_text())["iteration"] == 2
    r = run_cli("leaderboard", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "boards"))
    assert r.returncode == 0, r.stderr
    moved = tmp_path / "elsewhere.py"
    f.rename(moved)  # the plugin moved: the run names it
    r = run_cli("eval", str(run_dir))
    assert r.returncode == 2 and str(f.resolve()) in r.stderr and "can no longer be loaded" in r.stderr
    assert str(run_dir) in r.stderr and "Traceback" not in r.stderr
    r = run_cli("eval", str(run_dir), "--plugin", str(moved), "--tasks", "1", "--adapt-steps", "0", "--episodes", "1")
    assert r.returncode == 0, r.stderr  # loaded from its new place
