"""The benchmarks still run: ``python -m bench.run --smoke`` (tiny sizes, one repetition)
exits 0 and prints the table. No speed is asserted here: benchmarks are never timed tests."""
import os
import subprocess
import sys

import asyncpg  # noqa: F401  (make test installs the bench extras: missing fails, never skips)
import pyinstrument  # noqa: F401
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_smoke_benchmarks_run_every_contender_and_print_the_table(tmp_path):
    results = tmp_path / "RESULTS.md"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--smoke", "--results", str(results)],
        cwd=ROOT, capture_output=True, text=True, timeout=140)
    assert proc.returncode == 0, "bench.run --smoke failed:\n%s\n%s" % (
        proc.stdout[-3000:], proc.stderr[-3000:])
    out = proc.stdout
    assert "| figure | contender | runs x n | median | min | max | vs raw | target |" in out
    for contender in ("raw psycopg2", "asyncpg", "pgvisor memory", "pgvisor spool fsync=off",
                      "pgvisor spool fsync=on", "pgvisor, 2 worker processes"):
        assert "| %s |" % contender in out, contender
    for figure in ("drain rate", "latency at 1,000/s", "restart after kill", "verify pass",
                   "memory per instance", "outage: DB stop", "process isolation"):
        assert figure in out, figure
    assert "0 failure(s)" in out
    written = results.read_text(encoding="utf-8")
    assert "## Machine" in written and "| raw psycopg2 |" in written


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_smoke_notifier_figures_run_and_append_their_section(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# earlier report\n", encoding="utf-8")
    for _ in range(2):  # a second run replaces the section, it does not add one
        proc = subprocess.run(
            [sys.executable, "-m", "bench.notifier", "--smoke", "--results", str(results)],
            cwd=ROOT, capture_output=True, text=True, timeout=110)
        assert proc.returncode == 0, "bench.notifier --smoke failed:\n%s\n%s" % (
            proc.stdout[-3000:], proc.stderr[-3000:])
    for figure in ("producer NOTIFY tps, pgvisor with 1 instance", "pgvisor backends with",
                   "memory per instance (KB RSS) at 50 subscribed", "fan-out:"):
        assert figure in proc.stdout, figure
    written = results.read_text(encoding="utf-8")
    assert written.startswith("# earlier report") and written.count("## The shared notifier") == 1


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_smoke_chaos_run_injects_every_fault_and_loses_no_row(tmp_path):
    report = tmp_path / "reliability.rst"
    proc = subprocess.run(
        [sys.executable, os.path.join("bench", "chaos.py"), "--smoke", "--report", str(report)],
        cwd=ROOT, capture_output=True, text=True, timeout=140)
    assert proc.returncode == 0, "bench/chaos.py --smoke failed:\n%s\n%s" % (
        proc.stdout[-5000:], proc.stderr[-3000:])
    for fault in ("backend terminations", "Postgres crash", "instance restarts",
                  "half-open connection", "kill -9 of the service", "SIGHUP",
                  "registry edits", "poison rows", "failover"):
        assert "phase: %s" % fault in proc.stdout, fault
    written = report.read_text(encoding="utf-8")
    assert "missing, memory instance" in written
    for instance in ("memory", "spool"):
        row = next(line for line in written.splitlines()
                   if line.startswith("missing, %s instance" % instance))
        assert row.split()[-1] == "0", row
    assert "Verdict: every committed row reached both instances." in written
    assert "final states" in written and "memory running, spool running" in written


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_smoke_delivery_figures_run_and_keep_the_rest_of_the_report(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# earlier report\n\n<!-- notifier figures (python -m bench.notifier) -->"
                       "\n## The shared notifier\n", encoding="utf-8")
    for _ in range(2):  # a second run replaces the section, it does not add one
        proc = subprocess.run(
            [sys.executable, "-m", "bench.delivery", "--smoke", "--results", str(results)],
            cwd=ROOT, capture_output=True, text=True, timeout=110)
        assert proc.returncode == 0, "bench.delivery --smoke failed:\n%s\n%s" % (
            proc.stdout[-3000:], proc.stderr[-3000:])
    for contender in ("raw psycopg2, a list per read", "pgvisor, batch = 1000",
                      "pgvisor, 4 processors, order_key (100 keys)"):
        assert "| %s |" % contender in proc.stdout, contender
    written = results.read_text(encoding="utf-8")
    assert written.startswith("# earlier report")
    assert written.count("## Batch handlers and per-key order") == 1
    assert written.index("## Batch handlers") < written.index("## The shared notifier")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_smoke_cluster_figures_run_and_keep_the_other_sections(tmp_path):
    results = tmp_path / "RESULTS.md"
    notifier = "<!-- notifier figures (python -m bench.notifier) -->\n## The shared notifier\n"
    results.write_text("# earlier report\n\n" + notifier, encoding="utf-8")
    for _ in range(2):  # a second run replaces the section, it does not add one
        proc = subprocess.run(
            [sys.executable, "-m", "bench.cluster", "--smoke", "--fast", "--results",
             str(results)], cwd=ROOT, capture_output=True, text=True, timeout=55)
        assert proc.returncode == 0, "bench.cluster --smoke failed:\n%s\n%s" % (
            proc.stdout[-3000:], proc.stderr[-3000:])
    for figure in ("time to a full assignment", "coordination queries per second",
                   "time to reassign a killed node's share",
                   "instances running on two nodes at once, worst sample"):
        assert figure in proc.stdout, figure
    assert "| 0 | 0: met |" in proc.stdout  # nobody ran twice, nothing ran nowhere
    written = results.read_text(encoding="utf-8")
    assert written.startswith("# earlier report") and written.count("## Multi-node") == 1
    assert written.endswith(notifier)  # the notifier's section still last, untouched


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_smoke_memory_hand_off_writes_only_its_own_section(tmp_path):
    results = tmp_path / "RESULTS.md"
    notifier = "<!-- notifier figures (python -m bench.notifier) -->\n## The shared notifier\n"
    results.write_text("# earlier report\n\n" + notifier, encoding="utf-8")
    for _ in range(2):  # a second run replaces the section, it does not add one
        proc = subprocess.run(
            [sys.executable, "-m", "bench.run", "--only", "memory", "--smoke",
             "--results", str(results)],
            cwd=ROOT, capture_output=True, text=True, timeout=110)
        assert proc.returncode == 0, "bench.run --only memory --smoke failed:\n%s\n%s" % (
            proc.stdout[-3000:], proc.stderr[-3000:])
    for figure in ("drain rate", "end to end", "p99 NOTIFY -> handler at 1,000/s",
                   "p99 NOTIFY -> handler at 10,000/s"):
        assert figure in proc.stdout, figure
    written = results.read_text(encoding="utf-8")
    assert written.startswith("# earlier report") and written.endswith(notifier)
    assert written.count("## The memory-queue hand-off") == 1
