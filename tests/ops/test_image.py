"""The Dockerfile builds an image with every package of the project in it."""

from __future__ import annotations

import os
import re
import tomllib

from tests.ops.deployment import ROOT

PACKAGE = ROOT / "stripemeter"


def test_every_python_package_is_installed_by_a_non_editable_install() -> None:
    """An editable install finds modules that `packages` forgets; the image's `pip install .` does not.
    The top-level streams/, api/ and schemas/ are linked into stripemeter/: the walk follows them."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    for folder, dirs, files in os.walk(PACKAGE, followlinks=True):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        if "__init__.py" in files:
            relative = os.path.relpath(folder, PACKAGE)
            package = "stripemeter" if relative == "." else "stripemeter." + relative.replace(os.sep, ".")
            assert package in listed, f"{package} is missing from [tool.setuptools] packages"


def test_dockerfile_copies_every_package_folder() -> None:
    """stripemeter/ and the folders linked into it: a link whose target is not copied breaks the image."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (\S+) ", dockerfile, re.M))
    linked = {os.readlink(p) for p in PACKAGE.iterdir() if p.is_symlink()}
    assert linked == {"../streams", "../api", "../schemas"}
    assert {"stripemeter", *(target.removeprefix("../") for target in linked)} <= copied
    assert "ENV STRIPEMETER_STATE_DIR=/var/lib/stripemeter" in dockerfile
    assert "chown nobody" in dockerfile and "USER nobody" in dockerfile
