"""`pgvisor demo` runs its whole story on a throwaway PostgreSQL and proves nothing was
lost (the real CLI in a subprocess)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.timeout(120)
def test_demo_runs_to_its_summary_and_loses_no_row():
    proc = subprocess.run(
        [sys.executable, "-m", "supervisor.cli", "demo", "--pace", "0.4"],
        cwd=ROOT, capture_output=True, text=True, timeout=110,
        env=dict(os.environ, PYTHONPATH=ROOT))
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    for step in ("killing river", "restarting the database", "registry edit",
                 "every produced row reached the index", "demo cluster removed"):
        assert step in out, out
    assert "restarts=1" in out  # the kill was answered with a restart
    assert "password" not in out.lower()
