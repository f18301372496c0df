"""bench/RESULTS.md is written by several commands, each owning one section: whichever runs,
in whatever order, every other section stays as it was (``make bench`` regenerates the
head; ``bench.run --only memory``, ``bench.delivery``, ``bench.cluster``,
``bench.notifier`` and ``bench.spool`` rewrite only their own)."""
import pytest

from bench import cluster, delivery, handoff, notifier, report, spool


class _Table:
    def markdown(self):
        return "| head table |"

    def verdicts_markdown(self):
        return "- head verdicts"


def _head(path, text):
    report.write_results(path, {"date": "today", "cpu": "two"}, _Table(), text, "a profile",
                         "make bench")


WRITERS = {
    "head": _head,
    "handoff": lambda path, text: handoff.write(path, "## The memory-queue hand-off\n\n" + text),
    "delivery": lambda path, text: delivery.write(path, "## Batch handlers\n\n" + text),
    "cluster": lambda path, text: cluster.write_section(path, "## Multi-node\n\n" + text),
    "notifier": lambda path, text: notifier.write(path, "## The shared notifier\n\n" + text),
    "spool": lambda path, text: spool.write(path, "## The spool\n\n" + text),
}


@pytest.mark.parametrize("order", [
    ("head", "handoff", "delivery", "cluster", "notifier", "spool"),
    ("spool", "notifier", "cluster", "delivery", "handoff", "head"),
    ("notifier", "handoff", "spool", "head", "delivery", "cluster"),
])
def test_each_command_rewrites_its_own_section_and_keeps_the_others(tmp_path, order):
    path = tmp_path / "RESULTS.md"
    version = {}
    for name in order + order[::-1] + order:  # each one again and again, newer figures
        version[name] = version.get(name, 0) + 1
        WRITERS[name](str(path), "FIG-%s-%d" % (name, version[name]))
        text = path.read_text(encoding="utf-8")
        for written, number in version.items():
            assert text.count("FIG-%s-" % written) == 1, (name, written, text)
            assert "FIG-%s-%d" % (written, number) in text, (name, written, text)
    assert text.count("## The memory-queue hand-off") == 1
    assert text.startswith("# pgvisor benchmark results")
