"""Kafka's IncrementalAlterConfigs request (KIP-339), which aiokafka does not offer.

The older AlterConfigs request replaces a topic's whole configuration: every key it does not name goes
back to the broker's default (an operator's ``min.insync.replicas`` or ``segment.bytes`` with it).
The incremental request sets only the keys it names, and answers per topic.
"""

from __future__ import annotations

from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResourceType
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Boolean, Int8, Int16, Int32, Schema, String

SET = 0  # the config operation that sets a key to a value


class IncrementalAlterConfigsResponse_v0(Response):  # type: ignore[misc]  # aiokafka is untyped
    API_KEY = 44
    API_VERSION = 0
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "responses",
            Array(
                ("error_code", Int16),
                ("error_message", String("utf-8")),
                ("resource_type", Int8),
                ("resource_name", String("utf-8")),
            ),
        ),
    )


class IncrementalAlterConfigsRequest_v0(RequestStruct):  # type: ignore[misc]
    API_KEY = 44
    API_VERSION = 0
    RESPONSE_TYPE = IncrementalAlterConfigsResponse_v0
    SCHEMA = Schema(
        (
            "resources",
            Array(
                ("resource_type", Int8),
                ("resource_name", String("utf-8")),
                (
                    "configs",
                    Array(
                        ("name", String("utf-8")),
                        ("config_operation", Int8),
                        ("value", String("utf-8")),
                    ),
                ),
            ),
        ),
        ("validate_only", Boolean),
    )


class IncrementalAlterConfigsRequest(Request[IncrementalAlterConfigsRequest_v0]):  # type: ignore[misc]
    API_KEY = 44

    def __init__(self, resources: list[Any]):
        self._resources = resources

    def build(
        self, request_struct_class: type[IncrementalAlterConfigsRequest_v0]
    ) -> IncrementalAlterConfigsRequest_v0:
        return request_struct_class(self._resources, False)


async def set_topic_configs(admin: AIOKafkaAdminClient, changes: dict[str, dict[str, str]]) -> dict[str, str]:
    """Set the named keys of each topic, leaving its other keys alone. Returns the refusals: topic ->
    the broker's error (an empty dict when every change was applied)."""
    if not changes:
        return {}
    resources = [
        (ConfigResourceType.TOPIC, topic, [(key, SET, value) for key, value in sorted(config.items())])
        for topic, config in sorted(changes.items())
    ]
    response = await admin._send_request(IncrementalAlterConfigsRequest(resources))
    refused: dict[str, str] = {}
    for code, message, _type, name in response.responses:
        if code != 0:
            refused[name] = f"error {code}: {message or 'no message'}"
    return refused
