"""Typed keys for what the API keeps on its aiohttp Application."""

from __future__ import annotations

from aiohttp import web
from aiokafka import AIOKafkaProducer
from psycopg_pool import AsyncConnectionPool

from stripemeter.api.limits import KeyCache
from stripemeter.domain.concurrency import ConcurrencyLimit
from stripemeter.domain.config import Settings
from stripemeter.domain.rates import RateLimiter
from stripemeter.services.reconciliation.run import Reconciler
from stripemeter.services.replayer import Replayer

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", AsyncConnectionPool)
HEALTH_POOL = web.AppKey("health_pool", AsyncConnectionPool)  # readiness's own: never queues behind work
HEAVY = web.AppKey("heavy", ConcurrencyLimit)  # replays, reconciliation runs, adjustments running
PRODUCER = web.AppKey("producer", AIOKafkaProducer)
RECONCILER = web.AppKey("reconciler", Reconciler)
REPLAYER = web.AppKey("replayer", Replayer)
STRIPE_CHECK = web.AppKey("stripe_check", dict)  # the last Stripe reachability check and when
KEY_CACHE = web.AppKey("key_cache", KeyCache)  # key id -> row, bounded
RATE_LIMITER = web.AppKey("rate_limiter", RateLimiter)  # requests per tenant
AUTH_LIMITER = web.AppKey("auth_limiter", RateLimiter)  # failed API-key attempts per client
GAUGES_VERSION = web.AppKey("gauges_version", dict)  # which reconciliation runs the drift gauges show
