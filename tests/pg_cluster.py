"""A throwaway PostgreSQL cluster for tests and benchmarks: initdb + pg_ctl in a temp dir, on a free loopback port.

PostgreSQL refuses to run as root, so when this process is root the server
runs as an unprivileged user (the Debian ``postgres`` user, else ``nobody``)
that owns the temp dir. TCP connections need the superuser's password (SCRAM),
so a wrong password is really refused; local socket connections are trusted.

Used by ``tests/postgres_fixtures.py`` and ``benchmarks/bench_postgres.py``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["PostgresCluster", "drop_schema", "find_bindir", "missing_reason", "unique_schema"]


def find_bindir() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres: on PATH, or Debian's newest version."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).resolve().parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name.split(".")[0] or 0)
    )
    for candidate in reversed(candidates):
        if all((Path(candidate) / tool).exists() for tool in ("initdb", "pg_ctl", "postgres")):
            return Path(candidate)
    return None


def missing_reason() -> str:
    return (
        "PostgreSQL tests need a server: install the binaries (apt-get install postgresql; .ci/run does) "
        "or set DRIPCORE_TEST_POSTGRES_DSN to a database where schemas may be created"
    )


def unique_schema(prefix: str = "t") -> str:
    """A fresh schema name."""
    return f"{prefix}_{secrets.token_hex(6)}"


def drop_schema(dsn: str, schema: str) -> None:
    """Drop a schema made by a test, with everything in it."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_user() -> tuple[int, int] | None:
    """(uid, gid) to run the server as, or None to run it as ourselves."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return entry.pw_uid, entry.pw_gid
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' user exists to run PostgreSQL")


class PostgresCluster:
    """One private PostgreSQL server. ``durable=False`` turns fsync off (fast, for tests)."""

    def __init__(self, bindir: Path, *, durable: bool = False, max_connections: int = 120) -> None:
        self.bindir = bindir
        self.durable = durable
        self.max_connections = max_connections
        self.password = secrets.token_hex(12)
        self.user = "postgres"
        self.port = 0
        self.root = Path(tempfile.mkdtemp(prefix="dripcore-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._as = _server_user()
        if self._as is not None:
            os.chown(self.root, *self._as)
        self._initdb()

    def _run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, object] = {}
        if self._as is not None:
            kwargs = {"user": self._as[0], "group": self._as[1], "extra_groups": []}
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        return subprocess.run(  # type: ignore[call-overload, no-any-return]
            args, check=check, capture_output=True, text=True, timeout=timeout, cwd=self.root, env=env, **kwargs
        )

    def _initdb(self) -> None:
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        if self._as is not None:
            os.chown(pwfile, *self._as)
        try:
            self._run(
                str(self.bindir / "initdb"), "-D", str(self.data), "-U", self.user, f"--pwfile={pwfile}",
                "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync",
            )  # fmt: skip
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"initdb failed: {exc.stderr or exc.stdout}") from exc
        finally:
            pwfile.unlink(missing_ok=True)

    def start(self) -> None:
        """Start the server (on a new free port the first time, the same one after) and wait for it."""
        settings = [
            "-c listen_addresses=127.0.0.1",
            f"-c max_connections={self.max_connections}",
            "-c shared_buffers=128MB",
            f"-k {self.root}",
        ]
        if not self.durable:
            settings += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        for attempt in range(5):
            port = self.port or _free_port()
            result = self._run(
                str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                "-o", " ".join([f"-p {port}", *settings]), "start", check=False,
            )  # fmt: skip
            if result.returncode == 0:
                self.port = port
                return
            if self.port or attempt == 4:
                raise RuntimeError(f"pg_ctl start failed: {result.stderr}\n{self.log_tail()}")
        raise AssertionError("unreachable")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``mode="immediate"`` is a crash: no shutdown checkpoint)."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def destroy(self) -> None:
        """Stop the server and delete its files."""
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def postmaster_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.data / "postmaster.pid").read_text().split()[0])
        return None

    def kill(self) -> None:
        """SIGKILL the postmaster (its backends notice and exit): the server is gone at once."""
        pid = self.postmaster_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def dsn(self, dbname: str = "postgres", *, user: str | None = None, password: str | None = None) -> str:
        """A TCP DSN for ``dbname`` (the superuser's by default)."""
        return (
            f"host=127.0.0.1 port={self.port} dbname={dbname} user={user or self.user} "
            f"password={self.password if password is None else password}"
        )

    def cpu_seconds(self) -> float:
        """CPU seconds used so far by the server: the postmaster, its exited children and its live ones."""
        tick = os.sysconf("SC_CLK_TCK")
        pid = self.postmaster_pid()
        if pid is None:
            return 0.0
        total = 0
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
        for child in _children(pid):
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
        return total / tick


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                found.extend(int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split())
    return found
