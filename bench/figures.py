"""From the orchestrator's raw results to the report's :class:`~bench.report.Table`: the
rows of every figure and the verdict on every target (issue 7's, with the memory-queue
ratios raised by issue 13 item 1: drain and end to end >= 0.9x raw, p99 <= 1.5x raw at
1,000/s and 10,000/s)."""
from bench.report import RAW, Table, spread

PGVISOR = "pgvisor memory"
TITLES = {
    "drain": "drain rate (notifications/s)",
    "e2e": "end-to-end rate (notifications/s)",
    "lat1000": "latency at 1,000/s: p99 ms",
    "lat10000": "latency at 10,000/s: p99 ms",
}


def _runs(runs):
    return "%d x %s" % (len(runs), "{:,}".format(runs[0]["count"])) if runs else "0"


def rate_rows(table, key, by_contender):
    field = "drain_rate" if key == "drain" else "e2e_rate"
    stats = {c: spread([r[field] for r in runs]) for c, runs in by_contender.items()}
    raw = stats.get(RAW)
    for contender, runs in by_contender.items():
        s = stats[contender]
        ratio = s[0] / raw[0] if s and raw else None
        target = ""
        if contender == PGVISOR and s and raw:
            versus = stats.get("asyncpg")
            target = table.verdict(
                "%s: >= 0.9x raw" % TITLES[key], ratio >= 0.9,
                "%.2fx raw%s" % (ratio, ", %.2fx asyncpg" % (s[0] / versus[0]) if versus else ""))
        table.add(TITLES[key], contender, _runs(runs), s, ratio, target)


def latency_rows(table, key, by_contender):
    stats = {c: spread([r["p99_ms"] for r in runs]) for c, runs in by_contender.items()}
    raw = stats.get(RAW)
    for contender, runs in by_contender.items():
        s = stats[contender]
        ratio = s[0] / raw[0] if s and raw else None
        p50, worst = spread([r["p50_ms"] for r in runs]), spread([r["max_ms"] for r in runs])
        target = "p50 %s, max %s" % ((("%.2f" % p50[0]), "%.1f" % worst[2]) if p50 else ("-", "-"))
        if contender == PGVISOR and ratio is not None:
            rate = "1,000/s" if key == "lat1000" else "10,000/s"
            target += "; " + table.verdict("p99 at %s <= 1.5x raw psycopg2" % rate,
                                           ratio <= 1.5, "%.2fx raw" % ratio)
        table.add(TITLES[key], contender, _runs(runs), s, ratio, target)


def cost_rows(table, costs):
    restart = costs.get("restart")
    if restart:
        s = spread(restart["restart_ms"])
        table.add("restart after kill (ms), kill -> replacement handled its catch_up",
                  "pgvisor", "%d kills" % len(restart["restart_ms"]), s, None,
                  table.verdict("restart after kill < 50 ms median", s[0] < 50, "%.1f ms" % s[0]))
    per_kb = []
    for scale in costs.get("scale") or ():
        if not scale:
            continue
        s, n = spread(scale["verify_ms"]), scale["size"]
        target = ""
        if n == 1000:
            target = table.verdict("verify pass at 1,000 instances < 20 ms", s[0] < 20,
                                   "%.1f ms median" % s[0])
        table.add("verify pass (ms) at {:,} instances".format(n), "pgvisor",
                  "%d passes" % len(scale["verify_ms"]), s, None, target)
        per_kb.append((n, scale["kb_per_instance"]))
    for n, kb in per_kb:
        target = ""
        if n == max(per_kb)[0]:  # the largest count: fixed costs amortized
            target = table.verdict("< 100 KB per supervised instance", kb < 100,
                                   "%.1f KB at {:,} instances".format(n) % kb)
        table.add("memory per instance (KB RSS) at {:,} instances".format(n), "pgvisor", "1",
                  (kb, kb, kb), None, target)
    outage = costs.get("outage")
    if outage:
        table.add("outage: DB stop -> supervisor paused (ms)", "pgvisor",
                  "%d outages" % len(outage["paused_ms"]), spread(outage["paused_ms"]))
        table.add("outage: DB ready -> first notification processed (ms)", "pgvisor",
                  "%d outages" % len(outage["first_processed_ms"]),
                  spread(outage["first_processed_ms"]), None,
                  "server start itself: %.2f s median" % spread(outage["start_s"])[0])


def build_table(results, costs, size):
    """The one table: contender figures, then supervisor costs, then isolation."""
    table = Table()
    for key in ("drain", "e2e", "lat1000", "lat10000"):
        if key in results:
            rows = rate_rows if key in ("drain", "e2e") else latency_rows
            rows(table, key, results[key])
    cost_rows(table, costs)
    isolation_rows(table, costs.get("isolation") or {})
    return table


def isolation_rows(table, by_workers):
    one = spread([r["drain_rate"] for r in by_workers.get(1, ())])
    for workers, runs in sorted(by_workers.items()):
        s = spread([r["drain_rate"] for r in runs])
        label = "pgvisor, %d worker process%s" % (workers, "es" if workers > 1 else "")
        ms = spread([r.get("handler_ms") for r in runs])
        note = "%.2fx 1 worker" % (s[0] / one[0]) if s and one else ""
        if ms:
            note += "; burn() took %.1f ms in the bench process after the run" % ms[0]
        table.add("process isolation, CPU-bound handler (notifications/s)", label, _runs(runs),
                  s if s else ("failed",) * 3, None, note)
