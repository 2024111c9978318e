"""The contracts kept outside the code stay equal to it: ``streams/topics.json`` is what the topic specs
of a default deployment render to."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from stripemeter.domain.config import load_settings
from stripemeter.schemas.topics import deployment_specs, specs_document

ROOT = Path(__file__).resolve().parents[3]


def test_topics_json_is_the_default_deployments_specs() -> None:
    on_file = json.loads((ROOT / "streams" / "topics.json").read_text())
    assert on_file == specs_document(deployment_specs(load_settings({}))), (
        "streams/topics.json is stale: regenerate it as streams/README.md says"
    )


def test_no_symlink_in_the_repository() -> None:
    listing = subprocess.run(
        ["git", "ls-files", "--stage"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    links = [line.split("\t", 1)[1] for line in listing.splitlines() if line.startswith("120000 ")]
    assert links == [], "every tool must resolve the tree as it is: replace these links with files"
