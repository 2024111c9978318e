"""The Dockerfile builds an image with every package of the project in it, from a pinned base and
locked dependencies, running as a non-root user; its build context holds only what it copies."""

from __future__ import annotations

import os
import re
import tomllib

from packaging.requirements import Requirement

from stripemeter.tools.lockfile import COMMAND, LOCKFILE, dependencies_digest, recorded_digest
from tests.ops.deployment import ROOT

PACKAGE = ROOT / "stripemeter"
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def test_every_python_package_is_installed_by_a_non_editable_install() -> None:
    """An editable install finds modules that `packages` forgets; the image's `pip install .` does not."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    for folder, dirs, files in os.walk(PACKAGE):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        if "__init__.py" in files:
            relative = os.path.relpath(folder, PACKAGE)
            package = "stripemeter" if relative == "." else "stripemeter." + relative.replace(os.sep, ".")
            assert package in listed, f"{package} is missing from [tool.setuptools] packages"


def copied() -> set[str]:
    return {
        src for line in re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE, re.M) for src in line.split()
    }


def test_dockerfile_copies_every_package_folder() -> None:
    """stripemeter/ and every folder pyproject.toml maps into it as package data (the contracts)."""
    mapped = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    assert set(mapped.values()) == {"api", "schemas"}
    assert {"stripemeter", *mapped.values()} <= copied()
    assert "STRIPEMETER_STATE_DIR=/var/lib/stripemeter" in DOCKERFILE


def test_the_base_image_is_pinned_by_version_and_digest() -> None:
    bases = re.findall(r"^FROM (\S+)", DOCKERFILE, re.M)
    assert bases == ["${BASE}", "${BASE}"]
    [base] = re.findall(r"^ARG BASE=(\S+)$", DOCKERFILE, re.M)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+@sha256:[0-9a-f]{64}", base), base


def test_dependencies_come_from_the_lockfile_with_hashes_and_nothing_is_resolved_at_build() -> None:
    installs = [line for line in DOCKERFILE.splitlines() if re.search(r"pip (install|wheel)", line)]
    assert any(f"--require-hashes --only-binary=:all: -r /src/{LOCKFILE}" in line for line in installs)
    for line in installs:  # the project's own wheel: built and installed without its dependencies
        assert "-r /src/" in line or "--no-deps" in line, line


def test_it_runs_as_a_non_root_user_with_a_default_command() -> None:
    # numeric, as runAsNonRoot needs; 65534 (nobody) is the manifests' runAsUser
    assert re.findall(r"^USER (\S+)$", DOCKERFILE, re.M) == ["65534:65534"]
    assert "chown 65534:65534 /var/lib/stripemeter" in DOCKERFILE
    # CMD, not ENTRYPOINT: compose and the manifests give the whole command line
    assert re.findall(r"^CMD (.+)$", DOCKERFILE, re.M) == ['["stripemeter", "api"]']
    assert "ENTRYPOINT" not in DOCKERFILE


def pattern_regex(pattern: str) -> str:
    """A .dockerignore pattern as a regular expression (``**/`` any folders, ``*`` and ``?`` within one)."""
    out = ""
    for token in re.split(r"(\*\*/|\*|\?)", pattern.strip("/")):
        out += {"**/": "(?:.*/)?", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token))
    return out


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path, or a folder above it, decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    verdict = False
    for pattern in patterns:
        regex = pattern_regex(pattern.removeprefix("!"))
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            verdict = not pattern.startswith("!")
    return verdict


def test_the_build_context_holds_what_the_dockerfile_copies_and_no_local_state() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for source in copied():
        assert not ignored(source, patterns), f"{source} is copied but .dockerignore leaves it out"
    for local in (".venv", ".stack", ".git", ".pytest_cache", ".mypy_cache", ".ruff_cache", "dist", "build"):
        assert ignored(local, patterns), f"{local} would be sent to the build"
        assert ignored(f"{local}/x/y", patterns), f"{local}/x/y would be sent to the build"
    for cache in ("stripemeter/__pycache__/cli.cpython-311.pyc", "streams/__pycache__/x.pyc", "tests/x.py"):
        assert ignored(cache, patterns), cache


def test_the_lockfile_is_resolved_from_the_current_dependencies() -> None:
    """Changing pyproject.toml's dependencies (or requires-python) without `./dev lock` fails here."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    lockfile = (ROOT / LOCKFILE).read_text()
    assert recorded_digest(lockfile) == dependencies_digest(pyproject), (
        f"{LOCKFILE} was resolved from other dependencies than pyproject.toml's: run `{COMMAND}`"
    )
    pins = dict(re.findall(r"^([A-Za-z0-9._-]+)==(\S+)", lockfile, re.M))
    normalized = {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in pins.items()}
    for line in tomllib.loads(pyproject)["project"]["dependencies"]:
        requirement = Requirement(line)
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        assert name in normalized, f"{name} is not in {LOCKFILE}: run `{COMMAND}`"
        assert requirement.specifier.contains(normalized[name], prereleases=True), (
            f"{LOCKFILE} pins {name}=={normalized[name]}, outside {requirement.specifier}: run `{COMMAND}`"
        )


def test_every_locked_package_has_hashes() -> None:
    entries = re.split(r"^(?=[A-Za-z0-9])", (ROOT / LOCKFILE).read_text(), flags=re.M)
    pinned = [entry for entry in entries if "==" in entry.split("\n", 1)[0]]
    assert len(pinned) > 20
    for entry in pinned:
        assert re.search(r"--hash=sha256:[0-9a-f]{64}", entry), entry.split("\n", 1)[0]


def test_a_changed_dependency_changes_the_digest() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert dependencies_digest(pyproject) != dependencies_digest(
        pyproject.replace('"orjson>=3.10"', '"orjson>=3.11"')
    )
    assert dependencies_digest(pyproject) != dependencies_digest(
        pyproject.replace('"orjson>=3.10",', '"orjson>=3.10",\n    "requests",')
    )
    # the dev extra is not in the image: changing it needs no new lock
    assert dependencies_digest(pyproject) == dependencies_digest(
        pyproject.replace('"pytest>=8"', '"pytest>=9"')
    )
