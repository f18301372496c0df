"""The docs build with warnings as errors, the import contracts hold, and ruff is clean:
the same checks as tox's docs, imports and lint environments, run with the suite so CI
keeps the docs and the layering true to the code."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)


def _run(args, timeout):
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.timeout(180)
def test_docs_build_without_warnings(tmp_path):
    code, out = _run([sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html", "docs",
                      str(tmp_path / "html")], 170)
    assert code == 0, out


@pytest.mark.timeout(120)
def test_import_contracts_hold():
    code, out = _run([os.path.join(BIN, "lint-imports"), "--config", "tox.ini"], 110)
    assert code == 0, out


@pytest.mark.timeout(60)
def test_ruff_is_clean():
    code, out = _run([os.path.join(BIN, "ruff"), "check", "--line-length", "100", "--select",
                      "E,F,W,B,I", "--ignore", "E501", "supervisor", "instances", "tests",
                      "bench"], 50)
    assert code == 0, out
