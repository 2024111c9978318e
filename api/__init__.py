"""The HTTP API's contract: ``openapi.json``, served at ``GET /openapi.json``. Shipped as package data
(``stripemeter.api.contract``); the handlers are in ``stripemeter/api/``."""
