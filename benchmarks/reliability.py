"""The reliability table: every injected fault and hostile-input fuzz, run now, with its outcome.

    .venv/bin/python benchmarks/reliability.py

Runs the fault, executor and fuzz tests through pytest (JUnit XML for outcomes, Hypothesis statistics for
the number of fuzz cases) and prints a Markdown table: the fault, how it is injected, what must hold
afterwards, the outcome, and the command that reproduces the row.
"""
from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

ROWS = [  # (test id, fault injected, what is checked afterwards)
    ("tests/test_trainer.py::test_sigkill_mid_training_then_resume_matches_uninterrupted_run",
     "trainer SIGKILLed right after its 2nd checkpoint (iteration 6 of 30)",
     "`--resume` ends with the uninterrupted run's metrics and meta-test, row for row"),
    ("tests/test_faults.py::test_crash_during_a_checkpoint_write_resumes_from_the_previous_one",
     "process dies with half of checkpoint 4 written",
     "checkpoint 4 never appears; resume from 2 (one interval lost) gives the uninterrupted metrics"),
    ("tests/test_trainer.py::test_corrupt_latest_checkpoint_falls_back_to_previous",
     "latest checkpoint truncated to 100 bytes", "reported with a warning, the previous one loaded"),
    ("tests/test_faults.py::test_nan_meta_update_is_skipped_logged_and_never_checkpointed",
     "outer update writes NaN into theta (plugin, 2nd iteration)",
     "update undone, `skipped_update` = 1 logged, every checkpoint finite, training goes on"),
    ("tests/test_faults.py::test_nonfinite_inner_step_is_undone_for_that_task_only",
     "inner step returns NaN params and Inf state for one task of three",
     "that task keeps its previous params and state, the others step; flagged per task"),
    ("tests/test_faults.py::test_checkpointer_refuses_nonfinite_state_and_reports_a_failed_write",
     "checkpoint of a NaN state; disk full (ENOSPC) mid-write",
     "NaN state not written; failed write leaves no temp file, names the intact last checkpoint"),
    ("tests/test_faults.py::test_full_disk_and_unwritable_out_fail_before_training",
     "1000 bytes free on the disk; `--out` under a regular file",
     "exit 2 before anything is created, message names the path"),
    ("tests/test_faults.py::test_nan_at_the_vec_cmdp_boundary_is_named",
     "NaN action into a VecCMDP; Inf cost out of it", "EnvFault naming the field and the task index"),
    ("tests/test_faults.py::test_out_of_bound_actions_are_clipped_by_every_family",
     "actions of size 1e6 into each built-in family", "same transition as the clipped action, all finite"),
    ("tests/test_executor.py::test_killed_worker_is_restarted_and_the_iteration_completes",
     "a Ray worker SIGKILLs itself in its first inner step",
     "actor restarted, shard retried, metrics and theta identical to the local executor's"),
    ("tests/test_executor.py::test_ray_executor_equals_local_for_any_worker_count",
     "(no fault) same run on local, Ray x1, Ray x2 workers", "identical metrics and theta"),
    ("tests/test_fuzz.py::test_random_overrides_give_a_config_or_a_clean_error",
     "random `--set KEY=VALUE` lists (valid and junk keys, YAML edge values)",
     "a valid config with every key kept, or a UserError naming the key / value"),
    ("tests/test_fuzz.py::test_random_command_lines_exit_cleanly",
     "random command lines from the CLI's words and random text", "exit 0 or 2, `error:` message, no traceback"),
]


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
                               "--hypothesis-show-statistics", *[r[0] for r in ROWS]],
                              cwd=REPO, capture_output=True, text=True)
        outcomes: dict[str, list[str]] = {}
        for case in ET.parse(xml).getroot().iter("testcase"):
            name = case.get("name", "").split("[")[0]
            failed = any(child.tag in ("failure", "error") for child in case)
            skipped = any(child.tag == "skipped" for child in case)
            outcomes.setdefault(name, []).append("failed" if failed else "skipped" if skipped else "passed")
    cases = {name: int(n) for name, n in re.findall(r"::(test_\w+):\n.*?(\d+) passing", proc.stdout, re.S)}
    print("| fault or hostile input injected | must hold afterwards | outcome | reproduce |")
    print("|---|---|---|---|")
    for test_id, fault, check in ROWS:
        name = test_id.split("::")[1]
        got = outcomes.get(name, ["not run"])
        outcome = got[0] if len(got) == 1 else f"{got.count('passed')}/{len(got)} passed"
        if name in cases:
            outcome += f", {cases[name]} cases"
        print(f"| {fault} | {check} | {outcome} | `pytest {test_id}` |")
    print(f"\npytest exit code {proc.returncode}; {proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ''}")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
