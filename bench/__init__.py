"""pgvisor's benchmarks: ``python -m bench.run`` (or ``make bench`` / ``make bench-smoke``).

Never imported by the library; see bench/README.md for what each module measures.
"""
