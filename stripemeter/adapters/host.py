"""What the host gives this process: its container's memory and memory limit (cgroup v2, or v1), and
the space left on the filesystem of the worker's state. Read at each scrape into the gauges of
``domain.metrics`` (``install_host_gauges``)."""

from __future__ import annotations

import os
from pathlib import Path

from stripemeter.domain import metrics

CGROUP_ROOT = Path("/sys/fs/cgroup")
UNLIMITED = 1 << 60  # cgroup v1 says "no limit" with a number near 2**63 (rounded to pages)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _own_cgroup(proc_cgroup: str, root: Path) -> tuple[Path, int]:
    """The folder of this process's cgroup and the cgroup version: v1's memory controller when it is
    mounted (a hybrid host lists both, and v1 holds the memory accounting then), else v2's unified
    hierarchy. The hierarchy's top when the path named is not there (inside a container, whose
    cgroup namespace shows its own cgroup as the top)."""
    entries = [line.split(":", 2) for line in proc_cgroup.splitlines() if line.count(":") >= 2]
    for _, controllers, path in entries:
        if "memory" in controllers.split(",") and (root / "memory").is_dir():
            own = root / "memory" / path.lstrip("/")
            return (own if own.is_dir() else root / "memory"), 1
    for hierarchy, controllers, path in entries:
        if hierarchy == "0" and controllers == "":
            own = root / path.lstrip("/")
            return (own if own.is_dir() else root), 2
    return root, 2


def _stat(folder: Path, key: str) -> int:
    for line in (_read(folder / "memory.stat") or "").splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.isdigit():
            return int(value)
    return 0


def cgroup_memory(root: Path = CGROUP_ROOT, proc_cgroup: str | None = None) -> tuple[int, int]:
    """(working set, limit) in bytes of this process's cgroup; 0 for what is unknown or unlimited.

    The working set is usage less inactive file pages, as the kubelet counts it (those pages are
    reclaimed before the OOM killer runs). The limit is the lowest of this cgroup's and those above
    it up to ``root``: a pod's limit sits on the pod's cgroup as much as on the container's."""
    text = proc_cgroup if proc_cgroup is not None else _read(Path("/proc/self/cgroup")) or ""
    folder, version = _own_cgroup(text, root)
    usage_file, limit_file, inactive = (
        ("memory.current", "memory.max", "inactive_file")
        if version == 2
        else ("memory.usage_in_bytes", "memory.limit_in_bytes", "total_inactive_file")
    )
    usage = _read(folder / usage_file)
    working_set = max(0, int(usage) - _stat(folder, inactive)) if usage and usage.isdigit() else 0
    limits = []
    top = root if version == 2 else root / "memory"
    at = folder
    while True:
        raw = _read(at / limit_file)
        if raw and raw.isdigit() and int(raw) < UNLIMITED:
            limits.append(int(raw))
        if at == top or top not in at.parents:
            break
        at = at.parent
    return working_set, min(limits, default=0)


def filesystem_space(path: Path) -> tuple[int, int]:
    """(free to an unprivileged process, size) in bytes of the filesystem holding ``path``, or of its
    nearest existing folder above (the state dir is made when the worker first writes)."""
    at = path
    while not at.exists() and at != at.parent:
        at = at.parent
    stats = os.statvfs(at)
    return stats.f_bavail * stats.f_frsize, stats.f_blocks * stats.f_frsize


def install_host_gauges(state_dir: Path | None = None, cgroup_root: Path = CGROUP_ROOT) -> None:
    """The memory gauges, and with ``state_dir`` (a worker) the filesystem gauges, read at each scrape."""
    metrics.MEMORY_WORKING_SET.set_function(lambda: cgroup_memory(cgroup_root)[0])
    metrics.MEMORY_LIMIT.set_function(lambda: cgroup_memory(cgroup_root)[1])
    if state_dir is not None:
        metrics.DATA_DIR_FREE.set_function(lambda: filesystem_space(state_dir)[0])
        metrics.DATA_DIR_SIZE.set_function(lambda: filesystem_space(state_dir)[1])
