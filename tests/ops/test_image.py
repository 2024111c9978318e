"""The Dockerfile builds an image with every package of the project in it."""

from __future__ import annotations

import re
import tomllib

from tests.ops.deployment import ROOT


def test_every_python_package_is_installed_by_a_non_editable_install() -> None:
    """An editable install finds modules that `packages` forgets; the image's `pip install .` does not."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    package_dir: dict[str, str] = setuptools["package-dir"]
    listed = set(setuptools["packages"])
    for top, folder in package_dir.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / folder).parts
            package = ".".join((top, *parts))
            assert package in listed, f"{package} is missing from [tool.setuptools] packages"


def test_dockerfile_copies_every_package_folder() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (\S+) ", dockerfile, re.M))
    package_dir = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    assert set(package_dir.values()) <= copied
    assert "ENV STRIPEMETER_STATE_DIR=/var/lib/stripemeter" in dockerfile
    assert "chown nobody" in dockerfile and "USER nobody" in dockerfile
