"""The reuse dashboard: a read-only web view of the store (studies, trials, cache entries).

`memotune dashboard` serves it (dashboard.app). It reads the store through
cache/ and the run and study records (flows.run_records) and never writes.
"""
