"""The container's memory and limit (cgroup v2 and v1) and the state filesystem's space, as the
gauges behind the memory and volume alerts read them."""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import REGISTRY

from stripemeter.adapters.host import cgroup_memory, filesystem_space, install_host_gauges

GIB = 1 << 30


def files(root: Path, contents: dict[str, str]) -> Path:
    for name, text in contents.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_v2_working_set_is_usage_less_inactive_files_and_the_limit_the_lowest_above(tmp_path: Path) -> None:
    files(
        tmp_path,
        {
            "cgroup.controllers": "cpu memory",
            "memory.max": "max",  # the hierarchy's top: no limit
            "kubepods/pod1/memory.max": str(GIB),  # the pod's limit
            "kubepods/pod1/c1/memory.max": "max",  # the container's own: none
            "kubepods/pod1/c1/memory.current": str(700 << 20),
            "kubepods/pod1/c1/memory.stat": "anon 1\ninactive_file 104857600\nactive_file 5\n",
        },
    )
    assert cgroup_memory(tmp_path, "0::/kubepods/pod1/c1\n") == (600 << 20, GIB)


def test_v2_inside_a_container_reads_the_top_and_no_limit_is_zero(tmp_path: Path) -> None:
    files(tmp_path, {"cgroup.controllers": "memory", "memory.max": "max", "memory.current": "4096"})
    # the namespace shows the container's cgroup as "/"; a path not mounted here falls back to the top
    assert cgroup_memory(tmp_path, "0::/\n") == (4096, 0)
    assert cgroup_memory(tmp_path, "0::/elsewhere\n") == (4096, 0)


def test_v1_memory_controller_with_and_without_a_limit(tmp_path: Path) -> None:
    files(
        tmp_path,
        {
            "memory/memory.limit_in_bytes": "9223372036854771712",  # "no limit"
            "memory/docker/abc/memory.limit_in_bytes": str(2 * GIB),
            "memory/docker/abc/memory.usage_in_bytes": str(GIB),
            "memory/docker/abc/memory.stat": "cache 10\ntotal_inactive_file 1073741000\n",
        },
    )
    hybrid = "5:memory:/docker/abc\n0::/docker/abc\n"  # a hybrid host: v1 holds the memory controller
    assert cgroup_memory(tmp_path, hybrid) == (824, 2 * GIB)
    (tmp_path / "memory/docker/abc/memory.limit_in_bytes").write_text("9223372036854771712")
    assert cgroup_memory(tmp_path, hybrid) == (824, 0)


def test_no_cgroup_files_read_as_zero(tmp_path: Path) -> None:
    assert cgroup_memory(tmp_path, "") == (0, 0)


def test_filesystem_space_of_a_state_dir_not_made_yet(tmp_path: Path) -> None:
    stats = os.statvfs(tmp_path)
    free, size = filesystem_space(tmp_path / "worker" / "sm-1")
    assert size == stats.f_blocks * stats.f_frsize
    assert 0 < free <= size


def test_the_gauges_read_at_each_scrape(tmp_path: Path) -> None:
    root = files(tmp_path / "cg", {"cgroup.controllers": "memory", "memory.max": str(GIB)})
    (root / "memory.current").write_text("1000")
    install_host_gauges(tmp_path / "state", cgroup_root=root)
    assert REGISTRY.get_sample_value("stripemeter_memory_working_set_bytes") == 1000
    assert REGISTRY.get_sample_value("stripemeter_memory_limit_bytes") == GIB
    (root / "memory.current").write_text("2000")  # a new value at the next scrape, nothing cached
    assert REGISTRY.get_sample_value("stripemeter_memory_working_set_bytes") == 2000
    size = REGISTRY.get_sample_value("stripemeter_data_dir_size_bytes")
    free = REGISTRY.get_sample_value("stripemeter_data_dir_free_bytes")
    assert size is not None and free is not None and 0 < free <= size
