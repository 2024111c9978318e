"""The local stack's API key file is owner-only at every start, whatever mode it was left with."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from stripemeter.domain.config import Settings
from stripemeter.services import api_keys


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(state_dir=tmp_path)


def fake_database(
    monkeypatch: pytest.MonkeyPatch, *, active: bool, scopes: tuple[str, ...] = ("admin", "operator")
) -> list[str]:
    created: list[str] = []

    async def _active_scopes(settings: Settings, key_id: str) -> list[str]:
        return list(scopes) if active else []

    async def create(settings: Settings, tenant: str, scopes: str, description: str | None) -> str:
        assert scopes == "admin,operator"
        created.append(tenant)
        return "smk_newid_newsecret"

    async def revoke(settings: Settings, key_id: str) -> bool:
        created.append(f"revoked {key_id}")
        return True

    monkeypatch.setattr(api_keys, "_active_scopes", _active_scopes)
    monkeypatch.setattr(api_keys, "revoke", revoke)
    monkeypatch.setattr(api_keys, "create", create)
    return created


@pytest.mark.parametrize("left_with", [0o644, 0o666, 0o640, 0o604])
def test_a_kept_key_file_is_made_owner_only(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, left_with: int
) -> None:
    created = fake_database(monkeypatch, active=True)
    path = api_keys.local_key_file(settings)
    path.write_text("smk_oldid_oldsecret\n")
    path.chmod(left_with)
    assert api_keys.ensure_local_key(settings) == (path, False)
    assert created == []
    assert mode(path) == 0o600


def test_a_rewritten_key_file_is_made_owner_only(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The key in the file was revoked: a new one is written over it, and the old mode does not stay."""
    created = fake_database(monkeypatch, active=False)
    path = api_keys.local_key_file(settings)
    path.write_text("smk_oldid_oldsecret\n")
    path.chmod(0o644)
    assert api_keys.ensure_local_key(settings) == (path, True)
    assert created == ["*"]
    assert path.read_text() == "smk_newid_newsecret\n"
    assert mode(path) == 0o600


def test_a_new_key_file_is_owner_only(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_database(monkeypatch, active=False)
    path, created = api_keys.ensure_local_key(settings)
    assert created and mode(path) == 0o600


def test_a_local_key_without_the_operator_scope_is_replaced(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key made before the operator scope existed could not grant meters: the stack makes a new one."""
    created = fake_database(monkeypatch, active=True, scopes=("admin",))
    path = api_keys.local_key_file(settings)
    path.write_text("smk_oldid_oldsecret\n")
    assert api_keys.ensure_local_key(settings) == (path, True)
    assert created == ["revoked oldid", "*"] and path.read_text() == "smk_newid_newsecret\n"
