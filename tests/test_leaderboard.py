"""Grids and leaderboards: a failed cell is reported and the grid goes on; finished cells are skipped;
a board built from fake finished runs has the right rows, order and numbers."""
import csv
import json
import textwrap

import pytest

import safemeta
from safemeta.bench import load_grid, load_views, run_grid
from safemeta.config.loader import save_config
from safemeta.errors import UserError
from safemeta.evaluation.leaderboard import make_leaderboards
from safemeta.registry import load_plugin

EXPLODING = textwrap.dedent('''
    from safemeta.registry import register_inner
    from safemeta.algorithms.inner.trpo import TRPO

    @register_inner("exploding_trpo", "raises in its first step (grid failure test)")
    class Exploding(TRPO):
        def step(self, *args, **kwargs):
            raise RuntimeError("boom")
''')


def _grid(tmp_path, **extra):
    spec = {"out": str(tmp_path / "runs"), "algos": ["fomaml_trpo"], "envs": ["tiny-nav"], "seeds": [0],
            "set": {"trainer.iters": 2, "trainer.tasks_per_iter": 2, "trainer.eval_every": 0, "eval.tasks": 2,
                    "eval.adapt_steps": 1, "critic.epochs": 2}, **extra}
    path = tmp_path / "grid.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


def test_grid_with_a_failed_run_reports_it_and_continues(tmp_path, capsys):
    plugin = tmp_path / "exploding.py"
    plugin.write_text(EXPLODING)
    load_plugin(str(plugin))
    grid = _grid(tmp_path, inners=["exploding_trpo", "trpo"])
    assert run_grid(grid) == 1
    err = capsys.readouterr().err
    assert "FAILED fomaml_trpo/exploding_trpo on tiny-nav s0" in " ".join(err.split()) and "boom" in err
    finished = list((tmp_path / "runs").glob("fomaml_trpo-trpo-tiny-nav/*/meta_test.json"))
    assert len(finished) == 1  # the cell after the failure ran


def test_grid_skips_finished_and_resumes_unfinished(tmp_path, capsys):
    grid = _grid(tmp_path, seeds=[0, 1])
    assert run_grid(grid) == 0
    first = sorted((tmp_path / "runs").glob("*/*"))
    assert len(first) == 2
    (first[1] / "meta_test.json").unlink()  # as if killed before the end
    capsys.readouterr()
    assert run_grid(grid) == 0
    out = " ".join(capsys.readouterr().err.split())
    assert "0 trained, 1 resumed, 1 already finished" in out
    assert sorted((tmp_path / "runs").glob("*/*")) == first  # no new run directories


def test_bad_grid_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="Unknown key"):
        load_grid(_grid(tmp_path, colour="red"))
    with pytest.raises(UserError, match="non-empty list 'seeds'"):
        load_grid(_grid(tmp_path, seeds=[]))
    with pytest.raises(UserError, match="Unknown algo 'nope'"):
        load_grid(_grid(tmp_path, algos=["nope"]))


def _fake_run(root, algo, seed, returns, costs, limit=1.0, cost_paid=10.0):
    cfg = safemeta.resolve_config([("fake", {"algo": algo, "env": "tiny-nav", "seed": seed, "out": str(root)})])
    run_dir = root / f"{cfg.algo}-{cfg.inner}-{cfg.env}" / f"20260101-000000-s{seed}"
    run_dir.mkdir(parents=True)
    save_config(cfg, run_dir / "config.yaml")
    steps = [{"step": k, "per_task": {"return": list(r), "cost": list(c), "within_limit": [x <= limit for x in c]}}
             for k, (r, c) in enumerate(zip(returns, costs))]
    (run_dir / "meta_test.json").write_text(json.dumps({"cost_limit": limit, "steps": steps, "iteration": 1}))
    (run_dir / "metrics.jsonl").write_text(json.dumps({"iter": 1, "train/return_0": 0.0, "train/cost_0": 0.0,
                                                      "train_cost_paid": cost_paid, "env_steps": 100,
                                                      "wall_time": 60.0}) + "\n")
    (run_dir / "run.json").write_text(json.dumps({"commit": "abc123"}))


def test_leaderboard_from_two_fake_runs_has_right_rows_and_numbers(tmp_path):
    root = tmp_path / "runs"
    # fomaml_trpo: high return but unsafe after K = 2; pretrained: lower return, safe
    _fake_run(root, "fomaml_trpo", 0, returns=[[1, 2], [3, 4], [5, 7]], costs=[[0, 0], [1, 2], [3, 5]], cost_paid=40)
    _fake_run(root, "pretrained", 0, returns=[[0, 1], [1, 2], [2, 2]], costs=[[0, 0], [0.5, 0.5], [0.5, 1.5]])
    boards = make_leaderboards(root, tmp_path / "boards", None, "safemeta leaderboard --runs x")
    assert [b.name for b in boards] == ["tiny-nav.md"]
    rows = list(csv.DictReader((tmp_path / "boards" / "tiny-nav.csv").open()))
    assert [r["method"] for r in rows] == ["pretrained / trpolag", "fomaml_trpo / trpo"]  # safe first
    pre, fo = rows
    assert pre["safe"] == "True" and fo["safe"] == "False"
    assert float(fo["return@K mean"]) == 6.0 and float(fo["cost@K mean"]) == 4.0
    assert float(fo["return@1 mean"]) == 3.5 and float(fo["return@0 mean"]) == 1.5
    assert float(pre["cost@K mean"]) == 1.0 and float(pre["within limit@K mean"]) == 0.5
    assert float(fo["train cost paid mean"]) == 40.0 and float(fo["wall time (min) mean"]) == 1.0
    assert float(fo["return@K low"]) <= 6.0 <= float(fo["return@K high"])
    md = (tmp_path / "boards" / "tiny-nav.md").read_text()
    assert "safemeta leaderboard --runs x" in md and "abc123" in md and "tiny-nav-adaptation.png" in md
    assert (tmp_path / "boards" / "tiny-nav-adaptation.png").stat().st_size > 1000
    assert "tiny-nav.md" in (tmp_path / "boards" / "README.md").read_text()
    # what a person wrote in the index survives regeneration; only the marked table is rewritten
    readme = tmp_path / "boards" / "README.md"
    readme.write_text(readme.read_text().replace("| tiny-nav |", "| stale |") + "\n## Findings\nhand-written\n")
    make_leaderboards(root, tmp_path / "boards", None, "safemeta leaderboard --runs x")
    text = readme.read_text()
    assert "hand-written" in text and "| tiny-nav |" in text and "| stale |" not in text
    readme.write_text("# My boards\nnotes without markers\n")
    make_leaderboards(root, tmp_path / "boards", None, "safemeta leaderboard --runs x")
    assert readme.read_text().startswith("# My boards") and "notes without markers" in readme.read_text()
    assert "| tiny-nav |" in readme.read_text()


def test_board_cites_the_grids_that_write_its_family_into_these_runs(tmp_path):
    root = tmp_path / "runs"
    _fake_run(root, "fomaml_trpo", 0, returns=[[1, 2], [3, 4]], costs=[[0, 0], [1, 2]])
    grids = tmp_path / "grids"
    grids.mkdir()
    (grids / "a.yaml").write_text(json.dumps({"out": str(root), "envs": ["tiny-nav", "point-goal"]}))
    (grids / "b.yaml").write_text(json.dumps({"out": str(tmp_path / "other"), "envs": ["tiny-nav"]}))
    (grids / "c.yaml").write_text(json.dumps({"out": str(root), "envs": ["point-goal"]}))
    (grids / "tiny-nav.yaml").write_text(json.dumps({"out": str(tmp_path / "elsewhere"), "envs": ["tiny-nav"]}))
    make_leaderboards(root, tmp_path / "boards", None, "safemeta leaderboard", grids)
    md = (tmp_path / "boards" / "tiny-nav.md").read_text()
    assert f"safemeta bench {grids / 'a.yaml'}" in md
    assert "b.yaml" not in md and "c.yaml" not in md and "tiny-nav.yaml" not in md


def test_leaderboard_errors_name_the_problem(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        make_leaderboards(tmp_path / "nothing", tmp_path / "b", None, "x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="No finished runs"):
        make_leaderboards(tmp_path / "empty", tmp_path / "b", None, "x")


def _protocol(inner="", mult="inherit", k=2):
    return {"solver": {"name": inner or "own-solver", "view": "common" if inner else "own", "settings": {}},
            "adapt_steps": k, "tasks": 2, "cost_limit": 1.0, "eval_episodes": 16,
            "adapt_batch": {"envs_per_task": 8, "episodes_per_env": 1}, "multipliers": mult, "critics": "inherit",
            "inherited": {}, "scored_on": "fresh episodes"}


def _with_protocol(root, algo, protocol, views=None):
    run_dir = next((root).glob(f"{algo}-*/*"))
    report = json.loads((run_dir / "meta_test.json").read_text())
    (run_dir / "meta_test.json").write_text(json.dumps({**report, "protocol": protocol}))
    for name, (prot, returns, costs) in (views or {}).items():
        (run_dir / "views").mkdir(exist_ok=True)
        steps = [{"step": k, "per_task": {"return": list(r), "cost": list(c), "within_limit": [x <= 1 for x in c],
                                          "cost_paid": [0.0, 0.0]}} for k, (r, c) in enumerate(zip(returns, costs))]
        (run_dir / "views" / f"{name}.json").write_text(json.dumps({"cost_limit": 1.0, "steps": steps,
                                                                    "protocol": prot, "view": name}))


def test_board_renders_every_view_with_its_protocol_and_the_papers_verdict(tmp_path):
    root = tmp_path / "runs"
    # c_maml: within d after K but over it at step 1; pretrained: within d at every step, lower return
    _fake_run(root, "c_maml", 0, returns=[[1, 2], [3, 4], [5, 7]], costs=[[0, 0], [3, 3], [0.5, 0.5]])
    _fake_run(root, "pretrained", 0, returns=[[0, 1], [1, 2], [2, 2]], costs=[[0, 0], [0.5, 0.5], [0.5, 0.5]])
    common = _protocol("trpolag", "fresh")
    for algo in ("c_maml", "pretrained"):
        _with_protocol(root, algo, _protocol(), {"common-trpolag": (common, [[1, 1], [2, 2], [3, 3]],
                                                                    [[0, 0], [0, 0], [0, 0]])})
    grids = tmp_path / "grids"
    grids.mkdir()
    grid = grids / "g.yaml"
    grid.write_text(json.dumps({"out": str(root), "envs": ["tiny-nav"], "metric": "mean_cost"}))
    make_leaderboards(root, tmp_path / "boards", None, "safemeta leaderboard", grids)
    rows = list(csv.DictReader((tmp_path / "boards" / "tiny-nav.csv").open()))
    assert [(r["view"], r["method"], r["safe"]) for r in rows][:2] == [
        ("method", "c_maml / trpolag", "True"), ("method", "pretrained / trpolag", "True")]
    assert {r["view"] for r in rows} == {"method", "common-trpolag"}
    md = (tmp_path / "boards" / "tiny-nav.md").read_text()
    assert "## The method as a whole" in md and "## View `common-trpolag`" in md
    assert "one solver for every row, `trpolag` at the family's settings" in md and "at the solver's defaults" in md
    assert "Meta-CPO (Cho & Sun, AAAI-24)" in md and "step 2" in md
    assert (tmp_path / "boards" / "tiny-nav-common-trpolag-adaptation.png").stat().st_size > 1000
    # C-MAML's metric: the cost at every step; c_maml's step-1 cost 3 > d fails it
    grid.write_text(json.dumps({"out": str(root), "envs": ["tiny-nav"], "metric": "cost_every_step"}))
    make_leaderboards(root, tmp_path / "boards", None, "safemeta leaderboard", grids)
    rows = list(csv.DictReader((tmp_path / "boards" / "tiny-nav.csv").open()))
    assert [(r["method"], r["safe"]) for r in rows if r["view"] == "method"] == [
        ("pretrained / trpolag", "True"), ("c_maml / trpolag", "False")]
    assert "C-MAML (Daaboul et al. 2024)" in (tmp_path / "boards" / "tiny-nav.md").read_text()
    grid.write_text(json.dumps({"out": str(root), "envs": ["tiny-nav"], "metric": "vibes"}))
    with pytest.raises(UserError, match="Unknown verdict metric 'vibes'.*Valid: mean_cost, cost_every_step"):
        make_leaderboards(root, tmp_path / "boards", None, "safemeta leaderboard", grids)


def test_one_table_never_mixes_protocols(tmp_path):
    root = tmp_path / "runs"
    _fake_run(root, "c_maml", 0, returns=[[1, 2], [3, 4], [5, 7]], costs=[[0, 0], [3, 3], [0.5, 0.5]])
    _fake_run(root, "pretrained", 0, returns=[[0, 1], [1, 2], [2, 2]], costs=[[0, 0], [0.5, 0.5], [0.5, 0.5]])
    _with_protocol(root, "c_maml", _protocol())
    _with_protocol(root, "pretrained", _protocol(mult="fresh"))
    with pytest.raises(UserError, match="different protocols.*c_maml / trpolag s0.*pretrained / trpolag s0"):
        make_leaderboards(root, tmp_path / "boards", None, "x")
    # a record from before a protocol key existed compares with a new one at that key's default (twin: built-in)
    _with_protocol(root, "pretrained", {**_protocol(), "twin": ""})
    make_leaderboards(root, tmp_path / "boards", None, "x")
    _with_protocol(root, "pretrained", {**_protocol(), "twin": "sg-tiny-nav"})
    with pytest.raises(UserError, match="different protocols"):
        make_leaderboards(root, tmp_path / "boards", None, "x")


def test_grid_views_meta_test_each_finished_cell_once(tmp_path, capsys):
    grid = _grid(tmp_path, views={"common-cpo": {"inner": "cpo", "multipliers": "fresh"}})
    assert run_grid(grid) == 0
    view = next((tmp_path / "runs").glob("fomaml_trpo-trpo-tiny-nav/*/views/common-cpo.json"))
    report = json.loads(view.read_text())
    assert report["protocol"]["solver"]["name"] == "cpo" and report["iteration"] == 2
    stamp = view.stat().st_mtime_ns
    assert run_grid(grid) == 0 and view.stat().st_mtime_ns == stamp  # already there: not recomputed
    with pytest.raises(UserError, match="unknown key.*colour"):
        load_views(_grid(tmp_path, views={"v": {"colour": "red"}}))
    with pytest.raises(UserError, match="names no registered inner solver"):
        load_views(_grid(tmp_path, views={"v": {"inner": "nope"}}))
