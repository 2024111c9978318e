"""A small kustomize: renders deploy/k8s's overlays with what they use (resources, nameSuffix,
patches as strategic merges keyed by name, replicas, images, secretGenerator literals), so the tests
need no kustomize binary. Where kubectl or kustomize is installed, tests/ops/test_k8s.py checks that
this rendering equals theirs."""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import yaml

Manifest = dict[str, Any]


def build(folder: Path) -> list[Manifest]:
    kustomization: dict[str, Any] = yaml.safe_load((folder / "kustomization.yaml").read_text())
    docs: list[Manifest] = []
    for resource in kustomization.get("resources", []):
        target = folder / resource
        docs += build(target) if target.is_dir() else [d for d in yaml.safe_load_all(target.read_text()) if d]
    for generator in kustomization.get("secretGenerator", []):
        docs.append(_secret(generator))
    suffix = kustomization.get("nameSuffix", "")
    for doc in docs:
        if doc["kind"] != "Namespace":
            doc["metadata"]["name"] += suffix
    for patch in kustomization.get("patches", []):
        for change in yaml.safe_load_all((folder / patch["path"]).read_text()):
            (target,) = [d for d in docs if _id(d) == _id(change)]
            merge(target, change)
    for entry in kustomization.get("replicas", []):
        for doc in docs:
            if doc["metadata"]["name"] == entry["name"] and "replicas" in doc.get("spec", {}):
                doc["spec"]["replicas"] = entry["count"]
    for entry in kustomization.get("images", []):
        for doc in docs:
            for container in pod_containers(doc):
                _set_image(container, entry)
    return docs


def pod_containers(doc: Manifest) -> list[dict[str, Any]]:
    """Init containers and containers of a workload (nothing for other kinds)."""
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    found: list[dict[str, Any]] = spec.get("initContainers", []) + spec.get("containers", [])
    return found


def merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """A strategic merge as kustomize does it for the fields the overlays patch: maps merge, lists of
    named items merge by name, other lists are replaced."""
    for key, value in patch.items():
        old = target.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            merge(old, value)
        elif isinstance(value, list) and isinstance(old, list) and _named(value) and _named(old):
            by_name = {item["name"]: item for item in old}
            for item in value:
                if item["name"] in by_name:
                    merge(by_name[item["name"]], item)
                else:
                    old.append(copy.deepcopy(item))
        else:
            target[key] = copy.deepcopy(value)


def _named(items: list[Any]) -> bool:
    return all(isinstance(item, dict) and "name" in item for item in items)


def _id(doc: Manifest) -> tuple[str, str, str | None]:
    return doc["kind"], doc["metadata"]["name"], doc["metadata"].get("namespace")


def _secret(generator: dict[str, Any]) -> Manifest:
    data = {}
    for literal in generator.get("literals", []):
        key, _, value = literal.partition("=")
        data[key] = base64.b64encode(value.encode()).decode()
    metadata = {"name": generator["name"]}
    if "namespace" in generator:
        metadata["namespace"] = generator["namespace"]
    return {"apiVersion": "v1", "kind": "Secret", "metadata": metadata, "type": "Opaque", "data": data}


def _set_image(container: dict[str, Any], entry: dict[str, str]) -> None:
    name, _, tag = container["image"].partition(":")
    if name != entry["name"]:
        return
    name = entry.get("newName", name)
    tag = entry.get("newTag", tag)
    container["image"] = f"{name}:{tag}" if tag else name
