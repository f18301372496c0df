"""``pgvisor queue stats|requeue DIR`` on real spool directories (no database needed)."""
import json

import pytest

from instances.spool import FileQueue
from tests.acceptance.service_process import run_cli


def counts(directory):
    result = run_cli("queue", "stats", directory, "--json", timeout=30)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.timeout(60)
def test_queue_stats_and_requeue_errors(tmp_path):
    spool = tmp_path / "spool"
    queue = FileQueue(str(spool))
    for n in range(3):
        queue.put({"channel": "c", "payload": "p%d" % n})
    item = queue.get(timeout=5)
    queue.failed(item, "ValueError('bad')", "Traceback...")
    queue.close()

    before = counts(spool)
    assert (before["incoming"], before["errors"]) == (2, 1)
    human = run_cli("queue", "stats", spool, timeout=30)
    assert "incoming 2" in human.stdout and "errors 1" in human.stdout

    plain = run_cli("queue", "requeue", spool, "--json", timeout=30)
    assert plain.returncode == 0, plain.stderr
    assert json.loads(plain.stdout)["errors_requeued"] == 0
    with_errors = run_cli("queue", "requeue", spool, "--errors", timeout=30)
    assert with_errors.returncode == 0, with_errors.stderr
    assert "1 from errors/" in with_errors.stdout
    after = counts(spool)
    assert (after["incoming"], after["errors"]) == (3, 0)


@pytest.mark.timeout(60)
def test_queue_on_a_directory_that_is_no_spool_exits_2_and_creates_nothing(tmp_path):
    result = run_cli("queue", "requeue", tmp_path / "typo", timeout=30)
    assert result.returncode == 2
    assert "is not a spool directory" in result.stderr
    assert not (tmp_path / "typo").exists()
