"""Slow tests with real processes: SIGKILL crashes, PostgreSQL scale-out, benchmark smoke runs (see tests/README.md)."""
