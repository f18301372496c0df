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


@pytest.mark.timeout(60)
def test_queue_requeue_owner_gives_back_the_claims_of_a_host_that_will_not_come_back(
        tmp_path):
    spool = tmp_path / "spool"
    queue = FileQueue(str(spool))
    queue.put({"n": 0})
    queue.close()
    gone = "elsewhere-0123456789ab.4026531836-4242-1"  # another host: never judged dead
    (spool / "pending" / gone).mkdir(mode=0o700)
    for name in (spool / "incoming").iterdir():
        name.rename(spool / "pending" / gone / name.name)
    plain = run_cli("queue", "requeue", spool, "--json", timeout=30)
    assert json.loads(plain.stdout)["pending"] == {gone: 1}  # alive as far as we can tell
    typo = run_cli("queue", "requeue", spool, "--owner", "nobody", timeout=30)
    assert typo.returncode == 2 and "--owner nobody" in typo.stderr and gone in typo.stderr
    result = run_cli("queue", "requeue", spool, "--owner", gone, "--json", timeout=30)
    assert result.returncode == 0, result.stderr
    after = json.loads(result.stdout)
    assert after["pending_requeued"] == 1 and after["incoming"] == 1, after
    assert gone not in after["pending"]
    assert [name.name.rpartition(".")[2] for name in (spool / "incoming").iterdir()] == ["1"]


@pytest.mark.timeout(60)
def test_queue_requeue_errors_with_a_filter_replays_only_what_matches(tmp_path):
    spool = tmp_path / "spool"
    queue = FileQueue(str(spool))
    for n in range(3):
        queue.put({"n": n})
    items = [queue.get(timeout=5) for _ in range(3)]
    queue.failed(items[0], ConnectionError("db down"), None)
    queue.failed(items[1], KeyError("payload"), None)
    queue.failed(items[2], ConnectionError("db down"), None)
    queue.close()
    alone = run_cli("queue", "requeue", spool, "--reason", "failed", timeout=30)
    assert alone.returncode == 2 and "add --errors" in alone.stderr
    result = run_cli("queue", "requeue", spool, "--errors", "--error-contains", "db down",
                     "--json", timeout=30)
    assert result.returncode == 0, result.stderr
    after = json.loads(result.stdout)
    assert (after["errors_requeued"], after["incoming"], after["errors"]) == (2, 2, 1)
