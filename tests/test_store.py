"""The results store (safemeta/evaluation/store.py): records written atomically, corrupt ones named, boards
rebuilt from the store alone equal the committed ones, and a grid continues from its records."""
import gzip
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from safemeta.bench import run_grid
from safemeta.errors import UserError
from safemeta.evaluation.leaderboard import make_leaderboards
from safemeta.evaluation.store import read_record, record_paths, write_record
from tests.conftest import REPO

FIXTURE = REPO / "tests" / "fixtures"


def test_a_board_rebuilt_from_the_store_equals_the_committed_one(tmp_path, monkeypatch):
    shutil.copytree(FIXTURE / "store", tmp_path / "tests" / "fixtures" / "store")
    shutil.copy(FIXTURE / "store-grid.yaml", tmp_path / "tests" / "fixtures" / "store-grid.yaml")
    monkeypatch.chdir(tmp_path)  # the board cites its grid and store by their repository paths
    make_leaderboards("tests/fixtures/store", "board", None,
                      "safemeta leaderboard --store tests/fixtures/store --out tests/fixtures/store-board "
                      "--grids tests/fixtures", "tests/fixtures", store=True)
    for name in ("tiny-nav.md", "tiny-nav.csv", "README.md"):
        assert (tmp_path / "board" / name).read_bytes() == (FIXTURE / "store-board" / name).read_bytes(), name
    md = (tmp_path / "board" / "tiny-nav.md").read_text()
    assert "## View `common-cpo`" in md and "Records: `tests/fixtures/store`" in md


def _store_copy(tmp_path) -> Path:
    store = tmp_path / "store"
    shutil.copytree(FIXTURE / "store", store)
    return store


def test_a_truncated_or_edited_record_is_named_never_used(tmp_path):
    store = _store_copy(tmp_path)
    first = record_paths(store)[0]
    first.write_bytes(first.read_bytes()[:100])  # truncated
    with pytest.raises(UserError, match=f"'{first}' is truncated"):
        make_leaderboards(store, tmp_path / "b", None, "x", store=True)
    second = record_paths(store)[1]
    data = json.loads(gzip.decompress(second.read_bytes()))
    data["meta_test"]["steps"][-1]["per_task"]["cost"][0] += 123.0  # a hand edit, digest left as it was
    second.write_bytes(gzip.compress(json.dumps(data).encode()))
    shutil.copy(FIXTURE / "store" / first.relative_to(store), first)
    with pytest.raises(UserError, match=f"'{second}' was edited or corrupted"):
        make_leaderboards(store, tmp_path / "b", None, "x", store=True)


def test_a_killed_writer_leaves_no_record(tmp_path, monkeypatch):
    store = _store_copy(tmp_path)
    record = record_paths(store)[0]
    before = record.read_bytes()
    rec = read_record(record)
    run_dir = tmp_path / "run"  # a run directory rebuilt from the record
    run_dir.mkdir()
    (run_dir / "meta_test.json").write_text(json.dumps(rec["meta_test"]))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rec["metrics"]))
    (run_dir / "run.json").write_text(json.dumps(rec["run"]))
    (run_dir / "views").mkdir()
    for name, view in rec["views"].items():
        (run_dir / "views" / f"{name}.json").write_text(json.dumps(view))
    from safemeta.evaluation.store import record_config

    cfg = record_config(rec, record)
    fresh = tmp_path / "fresh"

    def killed(*a, **k):
        raise KeyboardInterrupt  # killed between writing the temporary file and renaming it

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_record(fresh, run_dir, cfg)
    assert not [p for p in fresh.rglob("*") if p.is_file()]  # no record, no temporary file
    with pytest.raises(KeyboardInterrupt):
        write_record(store, run_dir, cfg)  # over an existing record: the old one stays whole
    assert record.read_bytes() == before
    monkeypatch.undo()
    (record.parent / ".tmp-left.partial").write_bytes(b"half a record")  # a leftover of a killed process
    assert record.parent / ".tmp-left.partial" not in record_paths(store)
    written = write_record(fresh, run_dir, cfg)
    assert write_record(fresh, run_dir, cfg).read_bytes() == written.read_bytes()  # same content, same bytes
    again = read_record(written)
    assert all(again[k] == rec[k] for k in ("metrics", "meta_test", "views", "run"))


def test_a_record_from_an_older_config_schema_is_still_found(tmp_path):
    from safemeta.evaluation.store import find_record, record_config

    store = _store_copy(tmp_path)
    path = record_paths(store)[0]
    rec = read_record(path)
    cfg = record_config(rec, path)
    del rec["config"]["critic"]["meta_max_minibatches"]  # as if written before the key existed (default applies)
    _rewrite(path, rec)
    assert find_record(store, cfg)["meta_test"] == rec["meta_test"]
    cfg.eval.episodes += 1  # another setting: another cell
    assert find_record(store, cfg) is None


def _rewrite(path: Path, rec: dict) -> None:
    """Write ``rec`` to ``path`` as a valid record (its digest recomputed), as the store's writer would."""
    import hashlib

    from safemeta.evaluation.store import canonical

    body = {k: v for k, v in rec.items() if k != "digest"}
    body["digest"] = hashlib.sha256(canonical(body)).hexdigest()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(canonical(body), mtime=0))


def test_a_variant_is_its_own_cell_record_and_board_row(tmp_path):
    """``variant`` (e.g. an ablation) changes nothing in training but keeps its records and rows apart."""
    from safemeta.evaluation.store import find_record, record_config, record_path

    store = _store_copy(tmp_path)
    path = [p for p in record_paths(store) if p.parent.name.startswith("fomaml_trpo-")][0]
    rec = read_record(path)
    cfg = record_config(rec, path)
    cfg.variant = "no-eta"
    assert find_record(store, cfg) is None  # not the preset's record
    assert record_path(store, cfg).parent.name == "fomaml_trpo.no-eta-trpo-tiny-nav"
    rec["config"]["variant"] = "no-eta"
    rec["meta_test"]["steps"][-1]["return_mean"] += 1.0
    _rewrite(record_path(store, cfg), rec)
    assert find_record(store, cfg)["meta_test"] == rec["meta_test"]
    make_leaderboards(store, tmp_path / "b", None, "x", store=True)
    board = (tmp_path / "b" / "tiny-nav.md").read_text()
    assert "fomaml_trpo / trpo" in board  # the preset's row stays
    assert "fomaml_trpo.no-eta / trpo" in board


def test_a_bad_variant_name_is_refused_with_the_rule(tmp_path):
    import safemeta

    with pytest.raises(UserError, match="variant.*'No Eta'.*must match"):
        safemeta.resolve_config([("t", {"env": "tiny-nav", "algo": "c_maml", "variant": "No Eta"})])


def test_a_grid_continues_from_its_store_without_run_directories(tmp_path, capsys):
    store = _store_copy(tmp_path)
    grid = tmp_path / "grid.yaml"
    grid.write_text((FIXTURE / "store-grid.yaml").read_text().replace("tests/fixtures/store", str(store))
                    .replace("runs/store-fixture", str(tmp_path / "runs")))
    assert run_grid(grid) == 0
    out = " ".join(capsys.readouterr().err.split())
    assert "0 trained" in out and "4 already in the store" in out and not (tmp_path / "runs").exists()
    first = record_paths(store)[0]
    first.write_bytes(b"\x1f\x8b broken")
    assert run_grid(grid) == 1  # the corrupt record's cell fails, named; the others are skipped
    err = "".join(capsys.readouterr().err.split())
    assert first.name in err and "istruncatedornotarecord" in err


def _claims_file(tmp_path, seeds: int, subject: str, rivals: list[str], metric: str = "mean_cost") -> Path:
    spec = {"store": str(FIXTURE / "store"), "claims": [{
        "id": "fixture", "paper": "A paper", "statement": "the subject meets d where its rivals do not",
        "family": "tiny-nav", "grid": str(FIXTURE / "store-grid.yaml"), "view": "method", "metric": metric,
        "subject": subject, "rivals": rivals, "seeds": seeds}]}
    path = tmp_path / "claims.yaml"
    path.write_text(json.dumps(spec))
    return path


def test_claims_are_judged_from_the_store_by_the_papers_metric(tmp_path):
    import csv

    from safemeta.evaluation.claims import judge, load_claims
    from safemeta.evaluation.leaderboard import group, load_store

    by_family = group(load_store(FIXTURE / "store"))
    board = {r["method"]: r for r in csv.DictReader((FIXTURE / "store-board" / "tiny-nav.csv").open())
             if r["view"] == "method"}
    both = ["fomaml_trpo / trpo", "random / trpolag"]
    for subject in both:
        rival = [m for m in both if m != subject]
        _, (claim,) = load_claims(_claims_file(tmp_path, 2, subject, rival))
        judged = judge(claim, by_family)
        (label, seeds, value, ret, meets), other = judged.rows[0], judged.rows[1]
        assert label == subject and seeds == 2 and judged.limit == 1.0
        assert value.value == pytest.approx(float(board[subject]["cost@K mean"]))  # the board's number
        assert meets == (value.value <= 1.0)
        want = ("reproduced" if meets and not other[4] else "partly" if meets or value.value <= other[2].value
                else "not reproduced")
        assert judged.verdict == want
    _, (claim,) = load_claims(_claims_file(tmp_path, 5, both[0], both[1:]))
    assert judge(claim, by_family).verdict == "pending (2 of 5 seeds in the store)"
    _, (claim,) = load_claims(_claims_file(tmp_path, 2, both[0], ["nope / trpo"]))
    assert judge(claim, by_family).verdict.startswith("pending (0 of 2")  # a rival with no records yet


def test_the_worst_step_is_c_mamls_metric_and_bad_claims_files_are_named(tmp_path):
    from safemeta.evaluation.claims import load_claims, metric_value, write_claims
    from safemeta.evaluation.leaderboard import group, load_store

    method = group(load_store(FIXTURE / "store"))["tiny-nav"][("fomaml_trpo", "trpo")]
    steps = len(method.runs[0].report["steps"])
    costs = [metric_value(type(method)(method.algo, method.inner, method.runs), "mean_cost").value]
    worst = max(float(np.mean(np.concatenate(method.per_task(k, "cost")))) for k in range(steps))
    assert metric_value(method, "cost_every_step").value == pytest.approx(worst) and worst >= costs[0]
    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps({"store": "x", "claims": [{"id": "a", "metric": "vibes"}]}))
    with pytest.raises(UserError, match="missing .*family"):
        load_claims(bad)
    out = write_claims(_claims_file(tmp_path, 2, "fomaml_trpo / trpo", ["random / trpolag"]), tmp_path / "c.md", "x")
    text = out.read_text()
    assert "**Verdict: " in text and "| fomaml_trpo / trpo (subject) | 2 |" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and " / " in line.split("|")[1]]
    summary = [line for line in text.splitlines() if line.startswith("| ") and "| tiny-nav |" in line]
    assert len(rows) == 2 and len(summary) == 1 and "| pending (" not in summary[0]  # verdict and time to claim
    assert float(summary[0].rsplit("|", 2)[1]) == pytest.approx(sum(float(r.rsplit("|", 2)[1]) for r in rows), abs=0.1)


def test_meta_srls_claim_is_judged_from_the_online_records(tmp_path):
    """Hand-made records with known curves: every check holds -> reproduced; the subject worse at high than at
    low similarity -> partly, naming the checks that hold; a missing seed -> pending."""
    from safemeta.evaluation.claims import write_claims
    from safemeta.online.protocol import _cell, load_online_grid
    from safemeta.online.records import write_cell

    grid_file = tmp_path / "g.yaml"
    grid_file.write_text(f"name: g\nlearners: [online_dualdice, fal]\nsettings: {{hi: {{env_cfg: {{similarity: 0.9}}}}, "
                         f"lo: {{env_cfg: {{similarity: 0.2}}}}}}\nseeds: [0, 1]\nbase: {{tasks: 8}}\n"
                         f"store: {tmp_path / 'store'}\nout: {tmp_path / 'lb'}\n")
    grid = load_online_grid(grid_file)

    def write(setting, label, seed, level):  # running means of a gap falling from 2 * level to level over 8 tasks
        gaps = level * np.linspace(2.0, 1.0, 8)
        rows = [{"gap": g, "viol": g / 10, "taog": gaps[:t + 1].mean(), "tacv": gaps[:t + 1].mean() / 10, "alpha": 0.1}
                for t, g in enumerate(gaps)]
        write_cell(grid.store, "g", setting, label, _cell(grid, setting, label, seed), rows, {"wall_time": 60.0})

    for seed in (0, 1):
        for setting, subject, rival in (("hi", 1.0, 3.0), ("lo", 2.0, 3.0)):
            write(setting, "online_dualdice", seed, subject)
            write(setting, "fal", seed, rival)
    claims = tmp_path / "claims.yaml"
    claims.write_text(json.dumps({"store": str(tmp_path / "store"), "claims": [
        {"id": "m", "paper": "Meta-SRL", "statement": "s", "family": "tabular-gridworld", "grid": str(grid_file),
         "metric": "taog_tacv", "subject": "online_dualdice", "rivals": ["fal"],
         "similarity": {"high": "hi", "low": "lo"}, "seeds": 2}]}))
    (tmp_path / "store").mkdir(exist_ok=True)
    text = write_claims(claims, tmp_path / "c.md", "x").read_text()
    assert "**Verdict: reproduced.**" in text and "| hi | online_dualdice (subject) | 2 | 1.50 [1.50, 1.50]" in text
    assert "Time to claim: 1.00 wall minutes" in text
    assert "| m | tabular-gridworld | reproduced | 1.00 |" in text  # the page's summary row
    for seed in (0, 1):
        write("hi", "online_dualdice", seed, 2.5)  # now worse at high similarity than at low
    text = write_claims(claims, tmp_path / "c.md", "x").read_text()
    assert "**Verdict: partly (holds: tasks, baselines).**" in text
    assert "| similarity | TAOG_8 3.75 (high) vs 3.00 (low)" in text
    next((tmp_path / "store" / "g" / "lo").glob("fal-s1-*")).unlink()
    assert "**Verdict: pending (1 of 2 seeds in the store).**" in write_claims(claims, tmp_path / "c.md", "x").read_text()


def test_the_repositorys_claims_file_and_its_grids_load():
    """leaderboards/claims.yaml names valid metrics, and every grid it reads loads (a bench grid, or an online grid
    whose learners include the claim's subject, rivals and trace rows)."""
    from safemeta.bench import load_views
    from safemeta.evaluation.claims import ONLINE_METRIC, load_claims
    from safemeta.online.protocol import load_online_grid

    store, claims = load_claims(REPO / "leaderboards" / "claims.yaml")
    assert claims and Path(REPO / store).is_dir()
    for c in claims:
        for g in c.grid:
            if c.metric == ONLINE_METRIC:
                learners = load_online_grid(REPO / g).learners
                assert {c.subject, *c.rivals, *(c.also or [])} <= set(learners), c.id
            else:
                views = load_views(REPO / g)
                assert c.view == "method" or c.view in views, (c.id, c.view)
