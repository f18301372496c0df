"""`pgvisor demo` runs its whole story on a throwaway PostgreSQL and proves nothing was
lost (the real CLI in a subprocess); its status page answers while the story runs."""
import json
import os
import re
import subprocess
import sys
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.timeout(120)
def test_demo_runs_to_its_summary_and_loses_no_row():
    proc = subprocess.Popen(
        [sys.executable, "-m", "supervisor.cli", "demo", "--pace", "0.4"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=ROOT))
    try:
        lines = []
        for line in proc.stdout:  # until the URL; the story goes on meanwhile
            lines.append(line)
            url = re.search(r"status page: (http://127\.0\.0\.1:\d+/)", line)
            if url or "MISSING" in line:
                break
        assert url, "".join(lines)
        with urllib.request.urlopen(url.group(1), timeout=10) as page:
            assert b"static/status.js" in page.read()
        with urllib.request.urlopen(url.group(1) + "status", timeout=10) as answer:
            names = {view["name"] for view in json.loads(answer.read())["instances"]}
        assert names == {"river", "audit"}
        rest, err = proc.communicate(timeout=100)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    out = "".join(lines) + rest
    assert proc.returncode == 0, out + err
    for step in ("killing river", "restarting the database", "registry edit",
                 "every produced row reached the index", "demo cluster removed"):
        assert step in out, out
    assert "restarts=1" in out  # the kill was answered with a restart
    assert "password" not in out.lower()
