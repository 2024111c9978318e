"""`events send` keys a message as the API keys what it writes: ``tenantId:customerRef``."""

from __future__ import annotations

from stripemeter.cli.events import message_key


def test_a_message_is_keyed_by_its_first_events_tenant_and_customer() -> None:
    event = {"tenantId": "acme", "customerRef": "alice", "metric": "requests"}
    assert message_key(event) == b"acme:alice"
    assert message_key([event, {"tenantId": "other"}]) == b"acme:alice"
    assert message_key([]) is None and message_key("not an event") is None and message_key({"x": 1}) is None
