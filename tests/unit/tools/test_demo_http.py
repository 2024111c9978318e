"""The demo's HTTP client comes back after a 409 busy's Retry-After, and only then."""

from __future__ import annotations

import json
import threading
import urllib.error
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from stripemeter.tools.demo import Http

Answer = tuple[int, dict[str, str], dict[str, Any]]


class Answers(BaseHTTPRequestHandler):
    """Answers each request with the next (status, headers, body) of the server's script."""

    def do_POST(self) -> None:
        status, headers, body = self.server.script.pop(0)  # type: ignore[attr-defined]
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(json.dumps(body).encode())

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Answers)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()


def _base(httpd: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{httpd.server_address[1]}"


def test_a_busy_answer_is_asked_again(server: ThreadingHTTPServer) -> None:
    busy: Answer = (409, {"Retry-After": "0"}, {"error": {"code": "busy", "message": "a run is running"}})
    server.script = [busy, busy, (200, {}, {"runId": "rec_1"})]  # type: ignore[attr-defined]
    assert Http(_base(server)).call("POST", "/v1/reconciliation/run", {"tenantId": "t"}) == {"runId": "rec_1"}


def test_another_conflict_is_not(server: ThreadingHTTPServer) -> None:
    refused = {"error": {"code": "conflict", "message": "stripeCustomerId: another tenant's"}}
    conflict: Answer = (409, {}, refused)
    server.script = [conflict, (200, {}, {})]  # type: ignore[attr-defined]
    with pytest.raises(urllib.error.HTTPError) as info:
        Http(_base(server)).call("POST", "/v1/customers/t/c", {"stripeCustomerId": "cus_1"})
    assert info.value.code == 409
