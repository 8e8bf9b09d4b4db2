"""Pickup latency: how long an enrollment made in one process takes to reach the mail sender of an
idle worker in another, on SQLite and on PostgreSQL.

The usual deployment: a web process calls ``enroll()``, a separate worker process runs
``Drip.run()`` with the real clock. Here an *enroller* process (a ``Drip`` calling ``enroll()`` at
random moments) and a *worker* process (``Drip.run()``, whose sender appends the instant each email
reaches it to a file) share one store. A sample is the time from ``enroll()`` returning to the email
reaching the sender. One summary line per store: p50 and p99 (nearest rank: with 30 samples the
slowest one), and their ratio to the targets, 0.5 s and 1 s.

::

    python benchmarks/bench_pickup.py                                  # 30 samples per store; a throwaway cluster
    python benchmarks/bench_pickup.py --before /tmp/pickup_before/src  # also the same against older code
    python benchmarks/bench_pickup.py --stores sqlite --quick          # the test suite's smoke run

``--before SRC`` runs both processes of each store first with ``PYTHONPATH=SRC`` (for instance a
``git archive`` of an earlier commit, unpacked) and prints those figures as "before". The
PostgreSQL figures need the server binaries (``tests/pg_cluster.py``) or ``--dsn``.

The module also holds the two processes (``python bench_pickup.py enroller|worker CONFIG_JSON``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # for tests.pg_cluster when run as a script
    sys.path.insert(0, str(ROOT))

# The processes import dripcore from their PYTHONPATH (the code under test), so its names are
# imported where they are used, not here.

TARGET_P50 = 0.5
TARGET_P99 = 1.0
SEQUENCE_ID = "pickup"


# --------------------------------------------------------------------------- the two processes


def _open_store(cfg: Mapping[str, Any]) -> Any:
    if cfg["store"] == "sqlite":
        from dripcore.adapters.sqlite import SQLiteStore

        return SQLiteStore(cfg["path"])
    from dripcore.adapters.postgres import PostgresStore

    return PostgresStore(cfg["dsn"], schema=cfg["schema"])


def _ports(arrivals: str | None) -> dict[str, Any]:
    """The contacts (every id is one) and the sender (it records arrivals, if asked) of a Drip."""
    from dripcore.model import Contact, ExitReason
    from dripcore.ports import ContactDirectory, Email, MailSender

    class Everyone(ContactDirectory):
        def get(self, contact_id: str) -> Contact | None:
            return Contact(id=contact_id, email=f"{contact_id}@example.com", first_name="Ana")

        def suppress(self, contact_id: str, reason: ExitReason) -> None:
            pass

    class ArrivalRecorder(MailSender):
        sends_real_mail = False  # a test double: the placeholder unsubscribe link is fine

        def send(self, email: Email) -> str | None:
            at = time.time()
            if arrivals is not None:
                with open(arrivals, "a") as out:
                    out.write(f"{email.enrollment_id} {at:.6f}\n")
            return None

    return {"contacts": Everyone(), "sender": ArrivalRecorder()}


def enroller(cfg: Mapping[str, Any]) -> None:
    """Create the sequence, then enroll ``samples`` contacts at random moments, writing the instant
    each ``enroll()`` returned."""
    from dripcore import Drip
    from dripcore.model import Sequence, SequenceStatus, Step
    from dripcore.ports import SystemClock

    store = _open_store(cfg)
    if store.get_sequence(SEQUENCE_ID) is None:
        step = Step(position=1, subject="Welcome {{ first_name }}", text="Hi {{ first_name }}")
        store.save_sequence(Sequence(id=SEQUENCE_ID, name="Pickup", status=SequenceStatus.ACTIVE, steps=(step,)))
    drip = Drip(store=store, clock=SystemClock(), **_ports(None))
    _ready()
    rng = random.Random(cfg["seed"])
    time.sleep(cfg["settle"])  # the worker has ticked once and gone idle
    with open(cfg["enrolled"], "a") as out:
        for i in range(cfg["samples"]):
            time.sleep(rng.uniform(*cfg["gap"]))
            enrollment, _ = drip.enroll(SEQUENCE_ID, f"c{i:05d}")
            out.write(f"{enrollment.id} {time.time():.6f}\n")
            out.flush()
    store.close()


def worker(cfg: Mapping[str, Any]) -> None:
    """``Drip.run()`` with the real clock until killed."""
    from dripcore import Drip
    from dripcore.ports import SystemClock

    store = _open_store(cfg)
    drip = Drip(store=store, clock=SystemClock(), worker_id="pickup-worker", **_ports(cfg["arrivals"]))
    _ready()
    drip.run(idle=cfg["idle"])


def _ready() -> None:
    """Tell the parent this process is set up, and wait for its go (one line on stdin)."""
    print("READY", flush=True)
    sys.stdin.readline()


# --------------------------------------------------------------------------- the parent side


def _start(role: str, cfg: Mapping[str, Any], src: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(src))
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), role, json.dumps(cfg)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env,
    )  # fmt: skip
    assert process.stdout is not None
    if process.stdout.readline().strip() != "READY":
        process.kill()
        raise RuntimeError(f"the {role} process failed to start (exit code {process.wait()})")
    return process


def _go(process: subprocess.Popen[str]) -> None:
    assert process.stdin is not None
    process.stdin.write("GO\n")
    process.stdin.flush()


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for pipe in (process.stdin, process.stdout):
        if pipe is not None:
            with contextlib.suppress(OSError):  # a broken pipe to a process that is gone
                pipe.close()


def _instants(path: Path) -> dict[str, float]:
    if not path.exists():
        return {}
    found: dict[str, float] = {}
    for line in path.read_text().splitlines():
        key, _, at = line.partition(" ")
        if key and at:
            found.setdefault(key, float(at))  # the first arrival, should one come twice
    return found


def nearest_rank(values: list[float], q: float) -> float:
    """The ``q`` quantile by nearest rank (no interpolation): a value that was measured."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


class Figure:
    """One (store, code) run: the pickup latencies of the samples that arrived."""

    def __init__(self, store: str, label: str, samples: int, latencies: list[float]) -> None:
        self.store, self.label, self.samples, self.latencies = store, label, samples, latencies

    @property
    def arrived(self) -> int:
        return len(self.latencies)

    @property
    def p50(self) -> float:
        return nearest_rank(self.latencies, 0.5) if self.latencies else math.inf

    @property
    def p99(self) -> float:
        return nearest_rank(self.latencies, 0.99) if self.latencies else math.inf

    @property
    def met(self) -> bool:
        return self.arrived == self.samples and self.p50 <= TARGET_P50 and self.p99 <= TARGET_P99

    def line(self) -> str:
        lost = "" if self.arrived == self.samples else f" ({self.samples - self.arrived} never arrived)"
        return (
            f"{self.store:<8} {self.label:<6}: {self.arrived} samples{lost}, enroll() -> sender "
            f"p50 {self.p50:.3f} s ({self.p50 / TARGET_P50:.2f}x the {TARGET_P50:g} s target), "
            f"p99 {self.p99:.3f} s ({self.p99 / TARGET_P99:.2f}x the {TARGET_P99:g} s target); "
            f"target {'met' if self.met else 'MISSED'}"
        )


def run_one(store: str, label: str, src: Path, target: Mapping[str, Any], args: argparse.Namespace,
            scratch: Path) -> Figure:  # fmt: skip
    """Start an enroller and a worker on a fresh store, enroll ``args.samples`` contacts, measure."""
    tag = f"{store}-{label}-{secrets.token_hex(3)}"
    enrolled, arrivals = scratch / f"{tag}.enrolled", scratch / f"{tag}.arrivals"
    cfg: dict[str, Any] = {"store": store, **target, "idle": args.idle}
    enroller_cfg = {**cfg, "samples": args.samples, "gap": args.gap, "settle": args.settle, "seed": args.seed,
                    "enrolled": str(enrolled)}  # fmt: skip
    first = _start("enroller", enroller_cfg, src)  # creates the schema and the sequence
    try:
        second = _start("worker", {**cfg, "arrivals": str(arrivals)}, src)
    except BaseException:
        _stop(first)
        raise
    try:
        _go(second)
        _go(first)
        first.wait(timeout=args.settle + args.samples * args.gap[1] + 120)
        # Whatever is still on its way gets the worker's idle time (its longest sleep) and some.
        deadline = time.monotonic() + args.idle + 15
        while len(_instants(arrivals)) < args.samples and time.monotonic() < deadline and second.poll() is None:
            time.sleep(0.1)
    finally:
        _stop(first)
        _stop(second)
    returned, arrived = _instants(enrolled), _instants(arrivals)
    latencies = [arrived[key] - at for key, at in returned.items() if key in arrived]
    return Figure(store, label, args.samples, latencies)


@contextlib.contextmanager
def postgres(dsn: str | None) -> Iterator[str]:
    """The given DSN, or a throwaway cluster's."""
    if dsn:
        yield dsn
        return
    from tests.pg_cluster import PostgresCluster, find_bindir, missing_reason

    bindir = find_bindir()
    if bindir is None:
        raise SystemExit(f"no PostgreSQL: pass --dsn, or {missing_reason()}")
    cluster = PostgresCluster(bindir)
    try:
        cluster.start()
        yield cluster.dsn()
    finally:
        cluster.destroy()


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the benchmark; print one summary line per (store, code); return the figures by name."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--stores", nargs="+", choices=["sqlite", "postgres"], default=["sqlite", "postgres"])
    parser.add_argument("--samples", type=int, default=30, help="enrollments per run (default 30)")
    parser.add_argument("--gap", type=float, nargs=2, default=[0.2, 1.5], metavar=("MIN", "MAX"),
                        help="seconds between enrollments, drawn uniformly (default 0.2 1.5)")  # fmt: skip
    parser.add_argument("--idle", type=float, default=30.0, help="the worker's Drip.run(idle=...) (default 30)")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds the worker idles before the first")
    parser.add_argument("--seed", type=int, default=7, help="seed of the enrollment moments")
    parser.add_argument("--before", type=Path, help="the src directory of older code to measure first")
    parser.add_argument("--dsn", help="a PostgreSQL database to use (default: a throwaway cluster)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 3 samples, short gaps")
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.gap, args.settle = 3, [0.05, 0.3], 0.3
    codes = [("before", args.before.resolve())] if args.before else []
    codes.append(("after", ROOT / "src"))
    figures: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dripcore-pickup-")))
        dsn = stack.enter_context(postgres(args.dsn)) if "postgres" in args.stores else None
        for store in args.stores:
            for label, src in codes:
                if store == "sqlite":
                    target: dict[str, Any] = {"path": str(scratch / f"{label}-{secrets.token_hex(3)}.db")}
                else:
                    target = {"dsn": dsn, "schema": f"pickup_{label}_{secrets.token_hex(3)}"}
                try:
                    figure = run_one(store, label, src, target, args, scratch)
                finally:
                    if store == "postgres" and args.dsn:
                        from tests.pg_cluster import drop_schema

                        drop_schema(args.dsn, target["schema"])
                print(figure.line(), flush=True)
                for name, value in (("p50", figure.p50), ("p99", figure.p99), ("samples", figure.samples),
                                    ("arrived", figure.arrived)):  # fmt: skip
                    figures[f"{store}_{label}_{name}"] = float(value)
    return figures


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] in ("enroller", "worker"):
        (enroller if sys.argv[1] == "enroller" else worker)(json.loads(sys.argv[2]))
    else:
        main()
