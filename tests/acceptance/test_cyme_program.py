"""A cyme-style script (tests/acceptance/cyme_program.py, only cyme's documented names)
runs as its own process against a real Postgres and sees cyme's documented behaviour."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.timeout(90)
def test_a_cyme_style_script_runs_with_only_cymes_names(pg_dsn, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "tests.acceptance.cyme_program", pg_dsn, str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=80)
    assert result.returncode == 0, result.stdout + result.stderr
    seen = json.loads(result.stdout.splitlines()[-1])
    # The documented class attributes and their values.
    assert seen["defaults"] == {"interval": 60.0, "restart_max_rate": "1/m",
                                "paused": False, "wait_after_broker_revived": 35.0}
    # A subclass changes them; an argument left None takes the class attribute.
    assert seen["subclass"] == {"interval": 30.0, "restart_max_rate": "5/m",
                                "wait_after_broker_revived": 2.0, "budget": "5/m"}
    assert seen["current"] is True and seen["current_after_set_current"] is None
    # The asynchronous operations: greenlets whose value is {name: outcome}.
    assert seen["paused_when_running"] is False
    assert seen["verify"] == {"river": "unchanged"}
    assert seen["restart"] == {"river": "restarted"}
    assert seen["shutdown"] == {"river": "stopped"}
    assert seen["after_shutdown"] == "stopped"
    # pause() holds supervision, resume() lets it go on; an explicit restart still works.
    assert seen["paused_after_pause"] is True and seen["paused_after_resume"] is False
    assert seen["restart_while_paused"] == {"river": "started"}
    assert seen["final_state"] == "running"
