"""GET /openapi.json: the OpenAPI document of the whole HTTP API, kept beside the handlers.

``api/openapi.json`` is read once, at import; ``tests/unit/api/test_openapi.py`` checks that it names every
route the app registers (and nothing else), and ``tests/integration/test_openapi_fuzz.py`` runs
schemathesis against the served document.
"""

from __future__ import annotations

from importlib.resources import files

from aiohttp import web

DOCUMENT = files("stripemeter.api.contract").joinpath("openapi.json").read_bytes()


async def get_document(request: web.Request) -> web.Response:
    return web.Response(body=DOCUMENT, content_type="application/json")
