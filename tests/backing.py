"""Real PostgreSQL and Redis servers for the tests: throwaway, in a temp dir, on 127.0.0.1 and a
random port. Both come from Debian's packages (``.ci/run`` installs them when missing); a test
that needs one skips, naming the package, only when its binaries are absent.

PostgreSQL refuses to run as root: under root the cluster is initialised and run as the
``postgres`` system user (the package creates it), or as ``egemma-test`` created on the spot.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from tests.servers import free_port

PG_SUPERUSER = "egemma"


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL's bin directory with ``initdb`` and ``pg_ctl``."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_major)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _major(path: str) -> int:
    part = Path(path).parent.parent.name
    return int(part) if part.isdigit() else 0


def _run_as() -> list[str]:
    """The command prefix that runs PostgreSQL's tools as a non-root user (empty if not root)."""
    if os.geteuid() != 0:
        return []
    for name in ("postgres", "egemma-test"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return ["runuser", "-u", name, "--"]
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "egemma-test"],
        check=True,
        capture_output=True,
    )
    return ["runuser", "-u", "egemma-test", "--"]


def _owner() -> tuple[int, int] | None:
    prefix = _run_as()
    if not prefix:
        return None
    entry = pwd.getpwnam(prefix[2])
    return entry.pw_uid, entry.pw_gid


class PostgresCluster:
    """One ``initdb`` cluster; ``url(db)`` for a database, ``new_database()`` for a fresh one."""

    def __init__(self, bindir: Path) -> None:
        self.bin = bindir
        self.root = Path(tempfile.mkdtemp(prefix="egemma-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self._as = _run_as()
        owner = _owner()
        if owner is not None:
            os.chown(self.root, *owner)
        os.chmod(self.root, 0o755)

    def _tool(self, name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self._as, str(self.bin / name), *args],
            check=check,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def init(self) -> None:
        self._tool(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            PG_SUPERUSER,
            "-A",
            "trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale",
            "C",
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} "
            "-c max_connections=200 -c shared_buffers=32MB"
        )
        self._tool(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.root / "log"),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self._tool(
            "pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop", check=False
        )

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{PG_SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:16]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)


def start_postgres() -> PostgresCluster:
    bindir = postgres_bin()
    if bindir is None:
        raise FileNotFoundError("PostgreSQL binaries not found (apt-get install postgresql)")
    cluster = PostgresCluster(bindir)
    try:
        cluster.init()
        cluster.start()
    except BaseException:
        log = cluster.root / "log"
        detail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        cluster.destroy()
        raise RuntimeError(f"PostgreSQL did not start: {detail}") from None
    return cluster


class RedisServer:
    """``redis-server`` on 127.0.0.1 and a random port, no persistence, in a temp dir."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.root = Path(tempfile.mkdtemp(prefix="egemma-redis-"))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.root),
                "--protected-mode",
                "yes",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        import redis

        while time.monotonic() < deadline:
            try:
                redis.Redis.from_url(self.url, socket_timeout=0.5).ping()
                return
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def redis_binary() -> str | None:
    return shutil.which("redis-server")
