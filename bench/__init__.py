"""agentd's benchmarks: each figure is a ratio against a floor measured in the same run.

Machines are noisy, so no figure stands alone: every bench measures a floor
(a minimal program doing the same job) in the same run and reports the ratio
beside the absolute value and the target. A missed target prints MISS; the
run still exits 0, because a bench is a measurement, not a test.

    python -m bench                  every bench (what `make bench` runs)
    python -m bench startup          one bench (or several, by name)
    python -m bench --quick          reduced counts, for a smoke run
    python -m bench --list           the benches and what each measures

Results go to the terminal as a table and to bench/results/*.json.
See docs/performance.md for what each bench measures and the figures measured.

This package's __init__ stays import-free: the load generator and the floor
programs run as ``python -m bench.<module>`` and must not pay for anything here.
"""
