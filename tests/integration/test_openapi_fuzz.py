"""schemathesis against the served OpenAPI document: no 5xx, and no response outside the document.

The API runs in this process on the real Kafka and PostgreSQL with keys on, the Stripe emulator behind
it, and an all-tenant admin key; every operation gets valid (positive) and invalid (negative) inputs
generated from the document, derandomized so a run is repeatable. schemathesis calls the API with
``requests`` (blocking), so it runs in a thread while the server answers on the test's event loop.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import aiohttp
import pytest_asyncio
import schemathesis
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from requests.structures import CaseInsensitiveDict
from schemathesis import DataGenerationMethod
from schemathesis.checks import (  # type: ignore[attr-defined]  # documented here, not re-exported
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.exceptions import SkipTest
from schemathesis.internal.result import Ok

from stripemeter.api.app import create_app as create_api
from stripemeter.domain.config import Secret, Settings
from stripemeter.services import api_keys as keys
from stripemeter.streams import heartbeat
from tests.integration.client import eventually
from tests.integration.harness import free_port

CHECKS = (
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
)
EXAMPLES = {DataGenerationMethod.positive: 25, DataGenerationMethod.negative: 15}


@pytest_asyncio.fixture
async def served(env: Settings, emulator: tuple[object, str]) -> AsyncIterator[str]:
    api_settings = env.with_overrides(
        auth_enabled=True,
        rate_limit_per_second=1e6,
        stripe_api_base=emulator[1],
        stripe_api_key=Secret("sk_test_fuzz"),
        apply_wait_seconds=0.2,  # no worker runs: adjustments answer 202 "still being applied" at once
    )
    # the worker's own heartbeat writer stands in for a worker, so readiness answers 200, not 503
    stopping = asyncio.Event()
    beating = asyncio.create_task(
        heartbeat.run(
            env.with_overrides(group_instance_id=f"fuzz-{env.app_id}"), lambda: {"ready": True}, stopping
        )
    )
    server = TestServer(create_api(api_settings), host="127.0.0.1", port=free_port())
    await server.start_server()
    yield str(server.make_url("")).rstrip("/")
    await server.close()
    stopping.set()
    await beating


TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")


def is_http(name: str, value: str) -> bool:
    return bool(TOKEN.fullmatch(name) and FIELD_VALUE.fullmatch(value))


def fuzz(base_url: str, token: str) -> list[str]:
    """Run every operation of the served document; the failures, one line each."""
    schema = schemathesis.from_uri(f"{base_url}/openapi.json", base_url=base_url, validate_schema=True)
    headers = {"Authorization": f"Bearer {token}"}
    failures: list[str] = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result.err()
        operation = result.ok()
        for method, examples in EXAMPLES.items():

            @settings(
                max_examples=examples,
                derandomize=True,
                database=None,
                deadline=None,
                phases=[Phase.explicit, Phase.generate],  # report, do not spend time shrinking
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(data_generation_method=method))
            def run(case: schemathesis.Case) -> None:
                # negative cases add headers that are not HTTP at all (control characters): aiohttp's
                # parser answers those with a plain-text 400 before the app sees them; send the rest
                # (kept a CaseInsensitiveDict, the type schemathesis gives Case.headers and merges by)
                case.headers = CaseInsensitiveDict(
                    {k: v for k, v in (case.headers or {}).items() if is_http(k, v)}
                )
                case.call_and_validate(checks=CHECKS, headers=headers, timeout=30)

            try:
                run()
            except (SkipTest, Unsatisfiable):
                pass  # nothing invalid to send (no parameters, or only a path segment that cannot be empty)
            except Exception as exc:
                failures.append(f"{operation.verbose_name} ({method.name}): {exc}")
    return failures


async def test_the_api_answers_every_generated_request_inside_its_document(
    env: Settings, served: str
) -> None:
    token = await keys.create(env, "*", "admin", "schemathesis")
    async with aiohttp.ClientSession() as session:  # the heartbeat is written before readiness is asked

        async def ready() -> bool:
            async with session.get(f"{served}/health/ready") as response:
                return response.status == 200

        await eventually(ready, timeout=20, what="readiness")
    failures = await asyncio.to_thread(fuzz, served, token)
    assert not failures, "\n\n".join(failures)
