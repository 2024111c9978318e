"""The HTTP service: a thin aiohttp app over PostgreSQL and Kafka."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web
from aiokafka import AIOKafkaProducer

from stripemeter.adapters.host import install_host_gauges
from stripemeter.adapters.kafka.client_auth import client_kwargs
from stripemeter.adapters.postgres.pool import open_pool
from stripemeter.api import (
    adjustments,
    health,
    ingest,
    invoices,
    ledger_pages,
    mappings,
    openapi,
    operator_metrics,
    pushes,
    reconciliation,
    replay,
    stripe_webhook,
    tenants,
    usage,
)
from stripemeter.api.appkeys import (
    AUTH_LIMITER,
    GAUGES_VERSION,
    HEALTH_POOL,
    HEAVY,
    KEY_CACHE,
    POOL,
    PRODUCER,
    RATE_LIMITER,
    RECONCILER,
    REPLAYER,
    SETTINGS,
    STRIPE_CHECK,
)
from stripemeter.api.auth import auth_middleware
from stripemeter.api.errors import ApiError, api_error, database_error, error_response, json_response
from stripemeter.api.http_metrics import Handler, metrics_middleware
from stripemeter.api.limits import KeyCache, failure_limiter
from stripemeter.api.params import no_nul_middleware
from stripemeter.domain.concurrency import ConcurrencyLimit
from stripemeter.domain.config import Settings
from stripemeter.domain.errors import StripemeterError
from stripemeter.domain.rates import RateLimiter
from stripemeter.schemas.topics import TopicNames
from stripemeter.services.reconciliation.build import build_reconciler, kafka_publisher, stripe_configured
from stripemeter.services.replayer import build_replayer

log = logging.getLogger(__name__)

# 1000 events of at most ~4 KiB meta each, with room to spare; above it: 413
MAX_BODY_BYTES = 6 * 1024 * 1024


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return json_response(exc.body(), status=exc.status, headers=exc.headers)
    except StripemeterError as exc:  # a domain error: answered by its kind (api/errors.py)
        error = api_error(exc)
        if error is None:
            log.exception("unhandled error on %s %s", request.method, request.path)
            return error_response(500, "internal_error", "internal error; see the API log")
        return json_response(error.body(), status=error.status, headers=error.headers)
    except web.RequestPayloadError as exc:  # e.g. Content-Encoding: gzip over bytes that are not gzip
        response = json_response(
            {"error": {"code": "invalid_body", "message": f"body: cannot be read ({exc})", "field": "body"}},
            status=400,
        )
        response.force_close()  # the rest of the body cannot be read: the connection cannot go on
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)
    except Exception as exc:
        refused = database_error(exc)
        if refused is not None:
            log.warning("%s %s: %s (%s)", request.method, request.path, refused.code, type(exc).__name__)
            return json_response(refused.body(), status=refused.status, headers=refused.headers)
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal_error", "internal error; see the API log")


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        middlewares=[metrics_middleware, error_middleware, auth_middleware, no_nul_middleware],
        client_max_size=MAX_BODY_BYTES,
    )
    app[SETTINGS] = settings
    app[STRIPE_CHECK] = {}
    app[KEY_CACHE] = KeyCache()
    app[AUTH_LIMITER] = failure_limiter(settings.auth_failures_per_minute)
    app[GAUGES_VERSION] = {}
    app[RATE_LIMITER] = RateLimiter(settings.rate_limit_per_second)
    app[HEAVY] = ConcurrencyLimit(settings.heavy_requests_per_tenant, settings.heavy_requests_total)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        url, statement_timeout = settings.database_url.value, settings.db_statement_timeout_seconds
        app[POOL] = await open_pool(
            url, settings.db_pool_size, settings.db_pool_timeout_seconds, statement_timeout
        )
        app[HEALTH_POOL] = await open_pool(url, 1, health.TIMEOUT, statement_timeout)
        producer = AIOKafkaProducer(
            **client_kwargs(settings.kafka),
            acks="all",
            enable_idempotence=True,
            linger_ms=1,
            max_request_size=8 * 1024 * 1024,
            request_timeout_ms=15000,
        )
        await producer.start()
        app[PRODUCER] = producer
        names = TopicNames(settings.topic_prefix, settings.app_id)
        app[REPLAYER] = build_replayer(settings, producer)
        if stripe_configured(settings):
            app[RECONCILER] = build_reconciler(settings, kafka_publisher(producer, names.drift))
        yield
        await producer.stop()
        await app[POOL].close()
        await app[HEALTH_POOL].close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/health/live", health.live)
    app.router.add_get("/health/ready", health.ready)
    app.router.add_get("/metrics", operator_metrics.metrics_handler(app, operator=False))
    app.router.add_get("/openapi.json", openapi.get_document)
    app.router.add_post("/v1/events/ingest", ingest.ingest)
    app.router.add_get("/v1/events", ledger_pages.get_events)
    app.router.add_get("/v1/watermarks", ledger_pages.get_watermarks)
    app.router.add_get("/v1/usage/history", usage.get_history)
    app.router.add_put("/v1/mappings/{tenantId}/{metric}", mappings.put_metric)
    app.router.add_delete("/v1/mappings/{tenantId}/{metric}", mappings.delete_metric)
    app.router.add_get("/v1/mappings/{tenantId}", mappings.list_metrics)
    app.router.add_put("/v1/customers/{tenantId}/{customerRef}", mappings.put_customer)
    app.router.add_delete("/v1/customers/{tenantId}/{customerRef}", mappings.delete_customer)
    app.router.add_get("/v1/customers/{tenantId}", mappings.list_customers)
    app.router.add_put("/v1/tenants/{tenantId}/meters/{eventName}", tenants.put_meter)
    app.router.add_delete("/v1/tenants/{tenantId}/meters/{eventName}", tenants.delete_meter)
    app.router.add_get("/v1/tenants/{tenantId}/meters", tenants.list_meters)
    app.router.add_get("/v1/stripe/pushes", pushes.get_pushes)
    app.router.add_post(stripe_webhook.PATH, stripe_webhook.post_webhook)
    app.router.add_get("/v1/invoices", invoices.list_invoices)
    app.router.add_get("/v1/invoices/{invoiceId}", invoices.get_invoice)
    app.router.add_get("/v1/reconciliation/summary", reconciliation.get_summary)
    app.router.add_post("/v1/reconciliation/run", reconciliation.post_run)
    app.router.add_post("/v1/replay", replay.post_replay)
    app.router.add_get("/v1/replay/{replayId}", replay.get_replay)
    app.router.add_post("/v1/adjustments", adjustments.post_adjustment)
    app.router.add_get("/v1/adjustments", adjustments.list_adjustments)
    return app


def run(settings: Settings) -> None:
    """The API, and its operator listener unless its port is 0 (api/operator_metrics.py)."""
    app = create_app(settings)
    install_host_gauges()  # memory against the container's limit
    if settings.operator_metrics_port:
        app.cleanup_ctx.append(operator_metrics.operator_listener(app, [error_middleware]))
    # aiohttp prints where it listens; in JSON that line is logged instead, so every line is JSON
    json_logs = settings.log_format == "json"
    if json_logs:
        logging.getLogger("stripemeter.api").info(
            "listening on http://%s:%d", settings.api_host, settings.api_port
        )
    web.run_app(
        app,
        host=settings.api_host,
        port=settings.api_port,
        access_log=None,
        print=None if json_logs else print,
    )
