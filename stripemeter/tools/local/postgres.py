"""PostgreSQL for the local stack: Debian's server binaries, our own cluster on loopback.

Postgres refuses to run as root. When we are root the cluster runs as the ``postgres`` system user
and its data lives under ``/var/lib/postgresql/stripemeter/`` (reachable by that user wherever the
checkout is), with a symlink from the state directory so it is easy to find.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from stripemeter.domain.config import Settings
from stripemeter.domain.errors import Permanent


class PostgresSetupError(Permanent, RuntimeError):
    pass


def find_bindir() -> Path | None:
    """The newest installed PostgreSQL server's bin directory."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parent.parent.name)
    )
    return Path(candidates[-1]).parent if candidates else None


def install_server() -> Path:
    """Install Debian's PostgreSQL server if missing (needs root), return its bin directory."""
    bindir = find_bindir()
    if bindir:
        return bindir
    if os.geteuid() != 0:
        raise PostgresSetupError("PostgreSQL is not installed; run: sudo apt-get install -y postgresql")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "postgresql"]):
        result = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            raise PostgresSetupError(
                f"{' '.join(cmd)} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
            )
    bindir = find_bindir()
    if bindir is None:
        raise PostgresSetupError("postgresql installed but no server binary found under /usr/lib/postgresql")
    return bindir


@dataclass(frozen=True)
class LocalPostgres:
    bindir: Path
    data_dir: Path
    link: Path  # where the state directory points at data_dir
    host: str
    port: int
    user: str
    password: str
    database: str

    @classmethod
    def from_settings(cls, settings: Settings, bindir: Path) -> LocalPostgres:
        url = urlparse(settings.database_url.value)
        link = settings.state_dir / "postgres"
        if os.geteuid() == 0:
            tag = hashlib.sha256(str(settings.state_dir).encode()).hexdigest()[:12]
            data_dir = Path("/var/lib/postgresql/stripemeter") / tag
        else:
            data_dir = link
        return cls(
            bindir=bindir,
            data_dir=data_dir,
            link=link,
            host=url.hostname or "127.0.0.1",
            port=url.port or 5432,
            user=unquote(url.username or "stripemeter"),
            password=unquote(url.password or "stripemeter"),
            database=(url.path or "/stripemeter").lstrip("/") or "stripemeter",
        )

    @property
    def socket_dir(self) -> Path:
        return self.data_dir

    def _as_owner(self, argv: list[str]) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *argv]
        return argv

    def run(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(self._as_owner(argv), capture_output=True, text=True)
        if check and result.returncode != 0:
            raise PostgresSetupError(f"{' '.join(argv)} failed:\n{result.stdout}{result.stderr}")
        return result

    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def init(self) -> None:
        """initdb once; an existing cluster is never touched."""
        if self.link != self.data_dir and not self.link.exists():
            self.link.parent.mkdir(parents=True, exist_ok=True)
            self.link.symlink_to(self.data_dir)
        if self.initialized():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.data_dir, "postgres", "postgres")
            shutil.chown(self.data_dir.parent, "postgres", "postgres")
        self.data_dir.chmod(0o700)
        self.run(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ]
        )
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write(
                "\n# stripemeter local stack\n"
                f"listen_addresses = '{self.host}'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.socket_dir}'\n"
                "max_connections = 100\nshared_buffers = 128MB\n"
                "fsync = on\nsynchronous_commit = on\n"
            )

    def server_command(self) -> list[str]:
        return self._as_owner([str(self.bindir / "postgres"), "-D", str(self.data_dir)])

    def ready(self) -> bool:
        result = subprocess.run(
            [str(self.bindir / "pg_isready"), "-h", self.host, "-p", str(self.port), "-q"],
            capture_output=True,
        )
        return result.returncode == 0

    def psql(self, sql: str, database: str = "postgres") -> str:
        return self.run(
            [
                str(self.bindir / "psql"),
                "-h",
                str(self.socket_dir),
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                database,
                "-v",
                "ON_ERROR_STOP=1",
                "-tAc",
                sql,
            ]
        ).stdout.strip()

    def ensure_database(self) -> None:
        """The application role and database, created once; the password follows DATABASE_URL."""
        role = self.user.replace('"', '""')
        password = self.password.replace("'", "''")
        exists = self.psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{self.user}'")
        verb = "ALTER" if exists == "1" else "CREATE"
        self.psql(f"{verb} ROLE \"{role}\" LOGIN PASSWORD '{password}'")
        if self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'") != "1":
            self.psql(f'CREATE DATABASE "{self.database}" OWNER "{role}"')
