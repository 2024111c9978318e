"""Background processes with a pidfile and a log file, started at most once."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Managed:
    """A named background process of the stack.

    ``own_pidfile`` is a pidfile the process writes itself (PostgreSQL's ``postmaster.pid``): it names
    the running server even when the process that launched it (``runuser`` for a root stack) is gone.
    """

    name: str
    run_dir: Path
    log_dir: Path
    own_pidfile: Path | None = None

    @property
    def pidfile(self) -> Path:
        return self.run_dir / f"{self.name}.pid"

    @property
    def logfile(self) -> Path:
        return self.log_dir / f"{self.name}.log"

    def pid(self) -> int | None:
        """The running process's pid: from its own pidfile if it has one, else from the one written
        when it was started; None when neither names a live process."""
        for path in (self.own_pidfile, self.pidfile):
            pid = read_pid(path) if path is not None else None
            if pid is not None and pid_alive(pid):
                return pid
        return None

    def start(
        self, argv: Sequence[str], env: Mapping[str, str] | None = None, cwd: Path | None = None
    ) -> int:
        """Start ``argv`` in its own session unless already running; returns the pid."""
        running = self.pid()
        if running:
            return running
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.logfile, "ab") as log:
            proc = subprocess.Popen(
                list(argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
        self.pidfile.write_text(f"{proc.pid}\n")
        return proc.pid

    def stop(
        self,
        timeout: float = 30.0,
        sig: signal.Signals = signal.SIGTERM,
        gone: Callable[[], bool] | None = None,
    ) -> bool:
        """Signal the process group, SIGKILL after ``timeout``; True if something was stopped.

        ``gone`` is an extra check (a closed port, say) for processes whose launcher exits first.
        """
        pid = self.pid()
        if pid is None:
            self.pidfile.unlink(missing_ok=True)
            return False

        def stopped() -> bool:
            return not pid_alive(pid) and (gone is None or gone())

        _signal_group(pid, sig)
        if not wait_for(stopped, timeout):
            _signal_group(pid, signal.SIGKILL)
            wait_for(lambda: not pid_alive(pid), 10)
        self.pidfile.unlink(missing_ok=True)
        return True


def read_pid(path: Path) -> int | None:
    """The pid on a pidfile's first line (PostgreSQL's has more lines after it)."""
    try:
        return int(path.read_text().split("\n", 1)[0].strip())
    except (FileNotFoundError, PermissionError, ValueError):
        return None


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return True


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""
