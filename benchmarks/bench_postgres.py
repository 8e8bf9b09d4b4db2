"""Dispatch throughput on PostgreSQL: dripcore's PostgresStore with 1, 2 and 4 worker processes, side by side
with pgqueuer (a PostgreSQL job queue on psycopg) doing the same work in the same run.

The work: N steps due now. For dripcore, N enrollments in a one-step sequence
(bulk-loaded), dispatched by ``Drip.tick`` in each worker process: claim (FOR
UPDATE SKIP LOCKED), advance, render, commit state + outbox, send, settle. For
pgqueuer, N jobs enqueued with ``execute_after``, each handled by an entrypoint
that does the same per-step work dripcore's engine does around the store: look
the contact up, render the step with dripcore's Liquid renderer and hand the
``Email`` to the same recording sender. Both run on the same server, one after
the other for each worker count, from a fresh schema (dripcore) or a fresh
installation (pgqueuer, default ``durable`` tables).

Measured per (system, workers): wall time from "go" to the last step sent;
steps/s; CPU seconds per 1,000 steps of the worker processes and, when the
script runs its own server, of the PostgreSQL server processes (the database
shares the machine's cores); duplicates and missing steps (every worker writes
the keys it sent; the parent checks them).

::

    python benchmarks/bench_postgres.py                      # 20,000 steps; a throwaway cluster (needs the binaries)
    python benchmarks/bench_postgres.py --dsn postgresql://... --steps 50000
    python benchmarks/bench_postgres.py --steps 300 --workers 1 2 --repeats 1   # the test suite's smoke run

Needs ``pip install -e '.[bench]'`` (psycopg, psycopg-pool, pgqueuer); without
pgqueuer the dripcore figures are printed alone.

The module also holds the worker processes of ``tests/slow/test_postgres_scale.py``
(``python bench_postgres.py worker CONFIG_JSON``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # for tests.pg_cluster when run as a script
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from dripcore import Drip  # noqa: E402
from dripcore.adapters.postgres import PostgresStore  # noqa: E402
from dripcore.model import UTC, Contact, Enrollment, EnrollmentStatus, ExitReason, Sequence, SequenceStatus, Step  # noqa: E402
from dripcore.ports import ContactDirectory, Email, MailSender, SystemClock  # noqa: E402
from dripcore.render import LiquidRenderer  # noqa: E402

SEQUENCE = Sequence(
    id="bench",
    name="Bench",
    status=SequenceStatus.ACTIVE,
    steps=(Step(position=1, subject="Hello {{ first_name }}", text="Hi {{ first_name }}, welcome aboard."),),
)
PGQ_ENTRYPOINT = "send_step"


# --------------------------------------------------------------------------- shared pieces


class SyntheticContacts(ContactDirectory):
    """Every id is a contact (``<id>@example.com``): a directory with no I/O, the same for both systems."""

    def get(self, contact_id: str) -> Contact | None:
        return Contact(id=contact_id, email=f"{contact_id}@example.com", first_name="Ana")

    def suppress(self, contact_id: str, reason: ExitReason) -> None:
        pass


class KeyRecorder(MailSender):
    """Records the idempotency key of every email it is handed (in memory)."""

    sends_real_mail = False  # a test double: the placeholder unsubscribe link is fine

    def __init__(self, die_after: int | None = None) -> None:
        self.keys: list[str] = []
        self.die_after = die_after
        self.last_at = 0.0

    def send(self, email: Email) -> str | None:
        self.keys.append(email.idempotency_key)
        self.last_at = time.time()
        if self.die_after is not None and len(self.keys) >= self.die_after:
            os.kill(os.getpid(), signal.SIGKILL)  # a crash mid-batch: claimed, committed, partly sent
        return None


class DurableKeySender(KeyRecorder):
    """A key-honouring sender: each key is delivered once, recorded in a table with a unique key.

    A key offered again is not delivered again; the repeat is counted in
    ``attempts``, so a test can tell duplicate attempts (absorbed) from
    duplicate deliveries (impossible here by construction, and checked).
    """

    def __init__(self, dsn: str, schema: str, worker: str, die_after: int | None = None) -> None:
        super().__init__(die_after)
        self.worker = worker
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.sql = (
            f'INSERT INTO "{schema}".sent (key, worker) VALUES (%s, %s) '
            f'ON CONFLICT (key) DO UPDATE SET attempts = "{schema}".sent.attempts + 1 RETURNING attempts'
        )

    def send(self, email: Email) -> str | None:
        row = self.conn.execute(self.sql, (email.idempotency_key, self.worker)).fetchone()
        assert row is not None
        return super().send(email) if row[0] == 1 else f"already-sent:{email.idempotency_key}"

    def close(self) -> None:
        self.conn.close()


def create_sent_table(dsn: str, schema: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            f'CREATE TABLE "{schema}".sent (key text PRIMARY KEY, worker text NOT NULL, '
            "attempts integer NOT NULL DEFAULT 1)"
        )


def populate_dripcore(dsn: str, schema: str, steps: int, *, due: datetime | None = None) -> None:
    """A fresh schema with the one-step sequence and ``steps`` enrollments due now (bulk COPY)."""
    due = due or datetime.now(UTC) - timedelta(seconds=1)
    with PostgresStore(dsn, schema=schema) as store:
        store.save_sequence(SEQUENCE)
        enrollments = (
            Enrollment(
                id=f"enr_{i:07d}", sequence_id=SEQUENCE.id, contact_id=f"c{i:07d}", status=EnrollmentStatus.ACTIVE,
                enrolled_at=due, next_step_due_at=due,
            )
            for i in range(steps)
        )  # fmt: skip
        counters = [(SEQUENCE.id, 0, "recipients", 1), (SEQUENCE.id, 0, "status:active", 1)]
        store.add_enrollments(enrollments, allow_reentry=False, counters=lambda e: counters)


# --------------------------------------------------------------------------- workers (child processes)


def dripcore_worker(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Tick until nothing is due or pending; return what this worker did.

    ``threads`` > 1 runs that many engines (one ``Drip`` each, sharing the
    store's pool) in threads of this process, so one engine's Python work
    overlaps another's database round trips.
    """
    threads = int(cfg.get("threads", 1))
    store = PostgresStore(cfg["dsn"], schema=cfg["schema"], retry_for=30, max_connections=max(4, threads + 1))
    sender: KeyRecorder
    if cfg.get("sender") == "durable":
        sender = DurableKeySender(cfg["dsn"], cfg["schema"], cfg["name"], cfg.get("die_after_sends"))
    else:
        sender = KeyRecorder(cfg.get("die_after_sends"))
    engines = [
        Drip(
            store=store,
            sender=sender,
            contacts=SyntheticContacts(),
            clock=SystemClock(),
            batch_size=cfg.get("batch_size", 500),
            lease=timedelta(seconds=cfg.get("lease_seconds", 60)),
            worker_id=f"{cfg['name']}.{i}",
        )
        for i in range(threads)
    ]
    ticks = [0] * threads
    _ready()
    cpu = time.process_time()
    runners = [
        threading.Thread(target=_tick_until_done, args=(drip, store, ticks, i)) for i, drip in enumerate(engines)
    ]
    for runner in runners:
        runner.start()
    for runner in runners:
        runner.join()
    cpu = time.process_time() - cpu
    sender.close()
    store.close()
    return {"sent": len(sender.keys), "cpu": cpu, "last_at": sender.last_at, "ticks": sum(ticks), "keys": sender.keys}


def _tick_until_done(drip: Drip, store: PostgresStore, ticks: list[int], index: int) -> None:
    while True:
        report = drip.tick()
        ticks[index] += 1
        if report.claimed or report.messages:
            continue
        # Nothing claimable now: done when nothing is due or pending anywhere, else
        # sleep until it is (a lease running out, a retry), woken early by NOTIFY.
        wake = [t for t in (store.next_due_at(), store.next_message_at()) if t is not None]
        if not wake:
            return
        wait = (min(wake) - datetime.now(UTC)).total_seconds()
        if wait > 0:
            store.wait_for_work(min(wait, 0.5))


def pgqueuer_worker(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Drain the queue with pgqueuer's QueueManager; each job renders and sends one step."""
    with contextlib.suppress(ImportError):
        import uvloop  # pgqueuer's recommended event loop, when installed

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return asyncio.run(_pgqueuer_worker(cfg))


async def _pgqueuer_worker(cfg: Mapping[str, Any]) -> dict[str, Any]:
    from pgqueuer import Job, PsycopgDriver, Queries, QueueManager
    from pgqueuer.domain.types import QueueExecutionMode

    conn = await psycopg.AsyncConnection.connect(cfg["dsn"], autocommit=True)
    qm = QueueManager(Queries(PsycopgDriver(conn)))
    contacts = SyntheticContacts()
    renderer = LiquidRenderer()
    sender = KeyRecorder()
    step = SEQUENCE.steps[0]

    @qm.entrypoint(PGQ_ENTRYPOINT)
    async def send_step(job: Job) -> None:
        assert job.payload is not None
        enrollment_id, contact_id = job.payload.decode().split(" ")
        contact = contacts.get(contact_id)
        assert contact is not None
        enrollment = Enrollment(
            id=enrollment_id, sequence_id=SEQUENCE.id, contact_id=contact_id, status=EnrollmentStatus.ACTIVE,
            enrolled_at=job.created, next_step_due_at=job.execute_after,
        )  # fmt: skip
        rendered = renderer.render(step, sequence=SEQUENCE, contact=contact, enrollment=enrollment)
        sender.send(
            Email(
                idempotency_key=f"{enrollment_id}:1", enrollment_id=enrollment_id, sequence_id=SEQUENCE.id,
                contact_id=contact_id, position=1, to=contact.email, subject=rendered.subject, html=rendered.html,
                text=rendered.text, headers=rendered.headers,
            )
        )  # fmt: skip

    _ready()
    cpu = time.process_time()
    await qm.run(
        batch_size=cfg.get("batch_size", 100),
        mode=QueueExecutionMode.drain,
        dequeue_timeout=timedelta(seconds=1),
        log_aggregation_interval=timedelta(0),
    )
    cpu = time.process_time() - cpu
    await conn.close()
    return {"sent": len(sender.keys), "cpu": cpu, "last_at": sender.last_at, "keys": sender.keys}


def _ready() -> None:
    """Tell the parent this worker is set up, and wait for its go (one line on stdin)."""
    print("READY", flush=True)
    sys.stdin.readline()


def _worker_main(raw: str) -> None:
    cfg = json.loads(raw)
    result = (pgqueuer_worker if cfg["kind"] == "pgqueuer" else dripcore_worker)(cfg)
    keys = result.pop("keys")
    Path(cfg["keys_path"]).write_text("\n".join(keys) + ("\n" if keys else ""))
    print("RESULT " + json.dumps(result), flush=True)


# --------------------------------------------------------------------------- the parent side


def start_workers(configs: list[dict[str, Any]]) -> list[subprocess.Popen[str]]:
    """Start one worker process per config and wait until each is READY (set up, connected)."""
    processes = []
    for cfg in configs:
        processes.append(
            subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "worker", json.dumps(cfg)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                cwd=ROOT,
            )
        )
    for p in processes:
        assert p.stdout is not None
        line = p.stdout.readline()
        if line.strip() != "READY":
            for q in processes:
                q.kill()
            raise RuntimeError(f"a worker failed to start (exit code {p.wait()})")
    return processes


def go(processes: list[subprocess.Popen[str]]) -> float:
    """Release every worker at once; return the start instant (time.time())."""
    started = time.time()
    for p in processes:
        assert p.stdin is not None
        p.stdin.write("GO\n")
        p.stdin.flush()
    return started


def collect(processes: list[subprocess.Popen[str]], timeout: float) -> list[dict[str, Any] | None]:
    """Each worker's result (None for one that died), once all have exited."""
    results: list[dict[str, Any] | None] = []
    deadline = time.monotonic() + timeout
    for p in processes:
        assert p.stdout is not None
        try:
            out, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in processes:
                q.kill()
            raise
        line = next((x for x in out.splitlines() if x.startswith("RESULT ")), None)
        results.append(None if line is None else json.loads(line[len("RESULT ") :]))
    return results


def read_keys(paths: list[Path]) -> list[str]:
    keys: list[str] = []
    for path in paths:
        if path.exists():
            keys.extend(k for k in path.read_text().splitlines() if k)
    return keys


class Figure:
    """One (system, workers) run."""

    def __init__(self, system: str, workers: int, steps: int, wall: float, worker_cpu: float,
                 server_cpu: float | None, sent: int, duplicates: int, missing: int) -> None:  # fmt: skip
        self.system, self.workers, self.steps = system, workers, steps
        self.wall, self.worker_cpu, self.server_cpu = wall, worker_cpu, server_cpu
        self.sent, self.duplicates, self.missing = sent, duplicates, missing

    @property
    def rate(self) -> float:
        return self.steps / self.wall if self.wall > 0 else float("inf")

    def cpu_per_1000(self) -> str:
        server = "n/a" if self.server_cpu is None else f"{self.server_cpu * 1000 / self.steps:.3f} s"
        return f"workers {self.worker_cpu * 1000 / self.steps:.3f} s + postgres {server}"


def run_one(
    system: str,
    dsn: str,
    workers: int,
    steps: int,
    *,
    cluster: Any,
    scratch: Path,
    batch: int,
    tag: str,
    threads: int = 1,
) -> Figure:
    """Load ``steps`` fresh steps, run ``workers`` processes of ``system`` over them, measure."""
    schema = f"bench_{tag}"
    configs = []
    for i in range(workers):
        cfg: dict[str, Any] = {"kind": system, "dsn": dsn, "schema": schema, "name": f"{system}-{i}",
                               "batch_size": batch, "keys_path": str(scratch / f"{tag}-{i}.keys"),
                               "threads": threads}  # fmt: skip
        configs.append(cfg)
    if system == "dripcore":
        _drop_schema(dsn, schema)
        populate_dripcore(dsn, schema, steps)
    else:
        asyncio.run(_populate_pgqueuer(dsn, steps))
    _vacuum(dsn)
    processes = start_workers(configs)
    server_before = cluster.cpu_seconds() if cluster is not None else None
    started = go(processes)
    results = collect(processes, timeout=600)
    finished = time.time()
    server_cpu = None if cluster is None else cluster.cpu_seconds() - (server_before or 0.0)
    keys = read_keys([Path(c["keys_path"]) for c in configs])
    done = [r for r in results if r is not None]
    last = max((r["last_at"] for r in done if r["last_at"]), default=finished)
    expected = {f"enr_{i:07d}:1" for i in range(steps)}
    unique = set(keys)
    if system == "dripcore":
        _drop_schema(dsn, schema)
    else:
        asyncio.run(_uninstall_pgqueuer(dsn))
    return Figure(
        system, workers, steps, wall=last - started, worker_cpu=sum(r["cpu"] for r in done), server_cpu=server_cpu,
        sent=len(keys), duplicates=len(keys) - len(unique), missing=len(expected - unique),
    )  # fmt: skip


async def _populate_pgqueuer(dsn: str, steps: int) -> None:
    from pgqueuer import PsycopgDriver, Queries

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        queries = Queries(PsycopgDriver(conn))
        if await queries.schema_is_installed():
            await queries.uninstall()
        await queries.install()
        chunk = 5000
        for start in range(0, steps, chunk):
            ids = range(start, min(start + chunk, steps))
            await queries.enqueue(
                [PGQ_ENTRYPOINT] * len(ids),
                [f"enr_{i:07d} c{i:07d}".encode() for i in ids],
                [0] * len(ids),
                execute_after=[timedelta(0)] * len(ids),
            )


async def _uninstall_pgqueuer(dsn: str) -> None:
    from pgqueuer import PsycopgDriver, Queries

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await Queries(PsycopgDriver(conn)).uninstall()


def _drop_schema(dsn: str, schema: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _vacuum(dsn: str) -> None:
    """Fresh statistics for both systems' tables before the clock starts."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


@contextlib.contextmanager
def server(dsn: str | None) -> Iterator[tuple[str, Any]]:
    """``(dsn, cluster)``: the given DSN (cluster None), or a throwaway durable cluster of our own."""
    if dsn:
        yield dsn, None
        return
    from tests.pg_cluster import PostgresCluster, find_bindir, missing_reason

    bindir = find_bindir()
    if bindir is None:
        raise SystemExit(f"no PostgreSQL: pass --dsn, or {missing_reason()}")
    cluster = PostgresCluster(bindir, durable=True)
    try:
        cluster.start()
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench")
        yield cluster.dsn("bench"), cluster
    finally:
        cluster.destroy()


def have_pgqueuer() -> bool:
    try:
        import pgqueuer  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the benchmark; print one summary line per figure; return the figures by name."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", help="a database to use (default: start a throwaway cluster)")
    parser.add_argument("--steps", type=int, default=20_000, help="due steps per run (default 20,000)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="worker counts (default 1 2 4)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure; the median is reported")
    parser.add_argument("--batch", type=int, default=500, help="dripcore's batch size (default 500)")
    parser.add_argument("--pgqueuer-batch", type=int, default=100, help="pgqueuer's batch size (default 100)")
    parser.add_argument("--threads", type=int, default=1, help="engine threads per dripcore worker process")
    parser.add_argument("--no-pgqueuer", action="store_true", help="dripcore alone")
    args = parser.parse_args(argv)
    systems = ["dripcore"]
    if not args.no_pgqueuer:
        if have_pgqueuer():
            systems.append("pgqueuer")
        else:
            print("pgqueuer is not installed (pip install -e '.[bench]'): dripcore figures only", flush=True)
    figures: dict[str, float] = {}
    medians: dict[tuple[str, int], Figure] = {}
    with tempfile.TemporaryDirectory(prefix="dripcore-bench-") as tmp, server(args.dsn) as (dsn, cluster):
        scratch = Path(tmp)
        for workers in args.workers:
            runs: dict[str, list[Figure]] = {s: [] for s in systems}
            for repeat in range(args.repeats):
                for system in systems:  # interleaved, so a noisy neighbour slows both
                    batch = args.batch if system == "dripcore" else args.pgqueuer_batch
                    runs[system].append(
                        run_one(system, dsn, workers, args.steps, cluster=cluster, scratch=scratch, batch=batch,
                                tag=f"{system}_{workers}_{repeat}", threads=args.threads)
                    )  # fmt: skip
            for system in systems:
                medians[(system, workers)] = _median(runs[system])
        best_pgq = max((f.rate for (s, _), f in medians.items() if s == "pgqueuer"), default=None)
        for (system, workers), fig in sorted(medians.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            pgq = medians.get(("pgqueuer", workers))
            ratio = "" if pgq is None else f"; {fig.rate / pgq.rate:.2f}x pgqueuer with {workers}"
            if system == "dripcore" and best_pgq:
                ratio += f", {fig.rate / best_pgq:.2f}x pgqueuer's best"
            print(
                f"{system:<9} {workers} worker{'s' if workers > 1 else ' '}: {fig.rate:8.0f} steps/s "
                f"({fig.steps} steps in {fig.wall:.2f} s wall); CPU per 1,000 steps: {fig.cpu_per_1000()}; "
                f"duplicates {fig.duplicates}, missing {fig.missing}{ratio}",
                flush=True,
            )
            figures[f"{system}_{workers}_rate"] = fig.rate
            figures[f"{system}_{workers}_duplicates"] = fig.duplicates
            figures[f"{system}_{workers}_missing"] = fig.missing
            figures[f"{system}_{workers}_worker_cpu_per_1000"] = fig.worker_cpu * 1000 / fig.steps
        if ("dripcore", 2) in medians and ("pgqueuer", 2) in medians:
            d, p = medians[("dripcore", 2)], medians[("pgqueuer", 2)]
            met = d.rate >= p.rate and d.duplicates == 0 and d.missing == 0
            print(
                f"target (dripcore with 2 workers >= pgqueuer with 2, zero duplicates): "
                f"{'met' if met else 'MISSED'}, {d.rate / p.rate:.2f}x",
                flush=True,
            )
    return figures


def _median(runs: list[Figure]) -> Figure:
    ordered = sorted(runs, key=lambda f: f.rate)
    middle = ordered[len(ordered) // 2]
    # Correctness over every run, not just the median one.
    middle.duplicates = max(f.duplicates for f in runs)
    middle.missing = max(f.missing for f in runs)
    middle.worker_cpu = statistics.median(f.worker_cpu for f in runs)
    return middle


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "worker":
        threading.excepthook = lambda args: os._exit(3)  # a dead thread must not leave a worker hanging
        _worker_main(sys.argv[2])
    else:
        main()
