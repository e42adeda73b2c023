"""What a run tells its user: TensorBoard scalars equal to the metrics log, whole progress lines without a
terminal, and a verdict in plain words at the end."""
import json
import re

import pytest

from tests.conftest import run_cli


def test_tensorboard_events_hold_the_logged_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    r = run_cli("train", "--tensorboard", "--env", "tiny-nav", "--iters", "3", "--out", str(tmp_path), "--no-progress",
                "--set", "trainer.eval_every=2", "--set", "eval.tasks=1", "--set", "eval.adapt_steps=1",
                "--set", "eval.episodes=2", "--set", "trainer.tasks_per_iter=2")
    assert r.returncode == 0, r.stderr
    run_dir = next(tmp_path.glob("*/*"))
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    for key in ("train/return_0", "train/cost_K", "env_steps", "critic/ev_reward", "eval/cost_K"):
        logged = [(row["iter"], row[key]) for row in rows if key in row]
        read = [(e.step, e.value) for e in events.Scalars(key)]
        assert [s for s, _ in read] == [s for s, _ in logged] and len(logged) >= 1
        assert [v for _, v in read] == pytest.approx([v for _, v in logged], rel=1e-6)


def test_without_a_terminal_progress_is_whole_lines_and_the_run_ends_with_a_verdict(tmp_path):
    r = run_cli("train", "--env", "tiny-nav", "--iters", "20", "--out", str(tmp_path), "--set", "eval.tasks=2",
                "--set", "eval.adapt_steps=1", "--set", "eval.episodes=2", "--set", "trainer.tasks_per_iter=2")
    assert r.returncode == 0, r.stderr
    lines = [x for x in r.stderr.splitlines() if "iteration" in x]
    assert len(lines) == 20  # one every 5% of 20 iterations
    pattern = re.compile(r"^fomaml_trpo/trpo on tiny-nav: iteration (\d+)/20  return -?\d+\.\d{3}  cost \d+\.\d{3}  "
                         r"elapsed \d\d:\d\d:\d\d  remaining \d\d:\d\d:\d\d$")
    assert all(pattern.match(x) for x in lines), lines
    assert [int(pattern.match(x).group(1)) for x in lines] == list(range(1, 21))
    assert "…" not in r.stderr
    run_dir = next(tmp_path.glob("*/*"))
    verdict = re.search(r"Verdict on 2 held-out tasks after K = 1 fine-tuning steps \(scored on fresh episodes\): "
                        r"(\d) of 2 tasks \(\d+%\) keep their mean episode cost within the limit d = 1", r.stderr)
    report = json.loads((run_dir / "meta_test.json").read_text())
    assert verdict and int(verdict.group(1)) == sum(report["steps"][-1]["per_task"]["within_limit"])
    assert f"Run directory: {run_dir}" in r.stderr
