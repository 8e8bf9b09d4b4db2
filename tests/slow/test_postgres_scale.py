"""Scale-out on PostgreSQL with real worker processes: nothing lost, nothing delivered twice, even when one
worker is SIGKILLed mid-batch. Plus a smoke run of ``benchmarks/bench_postgres.py``.

The workers are ``benchmarks/bench_postgres.py worker`` subprocesses: each runs
``Drip.tick`` on its own ``PostgresStore`` until nothing is due or pending, and
hands emails to a key-honouring sender that records every key in a table of
the same database (unique key, counting repeated attempts).
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dripcore.adapters.postgres import PostgresStore
from dripcore.model import UTC

pytest_plugins = ["tests.postgres_fixtures"]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench() -> Iterator[Any]:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_postgres

        yield bench_postgres
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def _configs(bench: Any, dsn: str, schema: str, tmp_path: Path, count: int, **extra: Any) -> list[dict[str, Any]]:
    return [
        {
            "kind": "dripcore",
            "dsn": dsn,
            "schema": schema,
            "name": f"w{i}",
            "sender": "durable",
            "keys_path": str(tmp_path / f"w{i}.keys"),
            **extra,
        }
        for i in range(count)
    ]


def _sent(dsn: str, schema: str) -> tuple[int, int, dict[str, int]]:
    """(keys delivered, repeated attempts absorbed, deliveries per worker) from the sender's table."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        delivered, repeats = conn.execute(
            f'SELECT count(*), coalesce(sum(attempts - 1), 0) FROM "{schema}".sent'
        ).fetchone()  # type: ignore[misc]
        per_worker = dict(conn.execute(f'SELECT worker, count(*) FROM "{schema}".sent GROUP BY worker').fetchall())
    return int(delivered), int(repeats), per_worker


def _outbox_summary(dsn: str, schema: str) -> dict[str, int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return dict(conn.execute(f'SELECT status, count(*) FROM "{schema}".outbox GROUP BY status').fetchall())


def test_four_workers_dispatch_20000_steps_once_each(
    bench: Any, postgres_dsn: str, new_schema: Callable[[], str], tmp_path: Path
) -> None:
    """4 worker processes, 20,000 due steps: every step delivered exactly once, none lost, none repeated."""
    schema = new_schema()
    steps = 20_000
    bench.populate_dripcore(postgres_dsn, schema, steps)
    bench.create_sent_table(postgres_dsn, schema)
    started = time.monotonic()
    processes = bench.start_workers(_configs(bench, postgres_dsn, schema, tmp_path, 4, batch_size=500))
    bench.go(processes)
    results = bench.collect(processes, timeout=300)
    elapsed = time.monotonic() - started
    assert all(r is not None for r in results), [p.returncode for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0, 0]
    delivered, repeats, per_worker = _sent(postgres_dsn, schema)
    assert delivered == steps, "every due step is delivered (zero lost)"
    assert repeats == 0, "no key was offered twice (zero duplicate attempts, so zero duplicate deliveries)"
    assert sum(r["sent"] for r in results) == steps
    assert len(per_worker) == 4 and min(per_worker.values()) > 0, f"the work was shared: {per_worker}"  # noqa: PT018
    assert _outbox_summary(postgres_dsn, schema) == {"delivered": steps}
    with PostgresStore(postgres_dsn, schema=schema) as store:
        assert store.count_due(datetime.now(UTC)) == 0
        assert store.next_due_at() is None
        assert store.next_message_at() is None
        stats = store.counters("bench")
        assert stats[(1, "delivered")] == steps
        assert stats[(0, "status:completed")] == steps
    print(f"{steps:,} steps with 4 workers in {elapsed:.1f} s: {per_worker}")


def test_a_worker_killed_mid_batch_is_covered_by_the_others_without_duplicates(
    bench: Any, postgres_dsn: str, new_schema: Callable[[], str], tmp_path: Path
) -> None:
    """One of three workers SIGKILLs itself mid-batch (claimed, committed, partly sent). After its lease
    expires the others deliver the rest of its batch; the key-honouring sender delivers each step once."""
    schema = new_schema()
    steps, batch, lease = 3_000, 200, 3
    bench.populate_dripcore(postgres_dsn, schema, steps)
    bench.create_sent_table(postgres_dsn, schema)
    configs = _configs(bench, postgres_dsn, schema, tmp_path, 3, batch_size=batch, lease_seconds=lease)
    configs[0]["die_after_sends"] = batch + batch // 2  # in the middle of its second batch
    processes = bench.start_workers(configs)
    bench.go(processes)
    results = bench.collect(processes, timeout=300)
    assert processes[0].returncode == -signal.SIGKILL
    assert results[0] is None
    assert all(r is not None for r in results[1:])
    delivered, repeats, per_worker = _sent(postgres_dsn, schema)
    assert delivered == steps, "nothing lost: the dead worker's claims were delivered by the others"
    assert per_worker["w0"] == batch + batch // 2
    # The dead worker's half-sent batch was offered again after its lease expired; the sender absorbed
    # the repeats of what it had already delivered (at most the rest of that batch).
    assert repeats <= batch
    assert _outbox_summary(postgres_dsn, schema) == {"delivered": steps}
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        leased_to_dead = conn.execute(
            f'SELECT count(*) FROM "{schema}".enrollments WHERE lease_owner LIKE %s', ("w0.%",)
        ).fetchone()
    assert leased_to_dead == (0,), "no enrollment is left leased to the dead worker"


def test_bench_postgres_smoke_dripcore(bench: Any, postgres_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The benchmark runs end to end on a tiny workload (dripcore alone) and reports clean figures."""
    figures = bench.main(["--dsn", postgres_dsn, "--steps", "300", "--workers", "1", "2", "--repeats", "1",
                          "--no-pgqueuer"])  # fmt: skip
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    assert all("steps/s" in line and "CPU per 1,000 steps" in line for line in lines)
    assert figures["dripcore_1_duplicates"] == 0
    assert figures["dripcore_2_missing"] == 0


def test_bench_postgres_smoke_side_by_side(bench: Any, postgres_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    """With pgqueuer installed (the ``bench`` extra), both systems run and each line gives the ratio."""
    pytest.importorskip("pgqueuer", reason="pgqueuer is in the 'bench' extra: pip install -e '.[bench]'")
    figures = bench.main(["--dsn", postgres_dsn, "--steps", "300", "--workers", "2", "--repeats", "1"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert any(line.startswith("dripcore") and "x pgqueuer" in line for line in lines)
    assert any(line.startswith("pgqueuer") for line in lines)
    assert any(line.startswith("target") for line in lines)
    assert figures["dripcore_2_duplicates"] == figures["pgqueuer_2_duplicates"] == 0
    assert figures["dripcore_2_missing"] == figures["pgqueuer_2_missing"] == 0
