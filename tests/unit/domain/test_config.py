from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from stripemeter.domain.config import ENV_VARS, ConfigError, Secret, Settings, load_settings


def test_defaults_and_overrides() -> None:
    settings = load_settings({"STRIPEMETER_PARTITIONS": "2", "STRIPE_API_KEY": "sk_test_123"})
    assert settings.partitions == 2
    assert settings.stripe_api_key.value == "sk_test_123"
    assert settings.state_dir.is_absolute()


def test_secrets_never_show() -> None:
    settings = load_settings({"STRIPE_API_KEY": "sk_test_secret", "DATABASE_URL": "postgresql://u:pw@h/db"})
    assert "sk_test_secret" not in repr(settings)
    assert "pw" not in repr(settings)
    assert str(Secret("x")) == "Secret('**********')"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("STRIPEMETER_PARTITIONS", "many"),
        ("STRIPEMETER_PARTITIONS", "0"),
        ("DATABASE_URL", "mysql://x"),
        ("STRIPEMETER_API_PORT", "70000"),
        ("STRIPEMETER_DB_POOL_SIZE", "1"),
        ("STRIPEMETER_DB_POOL_TIMEOUT_SECONDS", "0"),
        ("STRIPEMETER_DB_POOL_TIMEOUT_SECONDS", "nan"),
        ("STRIPEMETER_DB_STATEMENT_TIMEOUT_SECONDS", "-1"),
        ("STRIPEMETER_HEAVY_REQUESTS_PER_TENANT", "0"),
        ("STRIPEMETER_HEAVY_REQUESTS_TOTAL", "0"),
        ("STRIPEMETER_HEAVY_REQUESTS_TOTAL", "8"),  # the whole pool (8): nothing left for reads
        ("STRIPEMETER_STRIPE_TIMEOUT_SECONDS", "0"),
        ("STRIPEMETER_INVOICE_CHECK_SECONDS", "0"),
        ("STRIPEMETER_INVOICE_DEADLINE_MARGIN_SECONDS", "-1"),
        ("STRIPEMETER_INVOICE_DEADLINE_MARGIN_SECONDS", "300000"),  # beyond Stripe's 72 h
        ("STRIPEMETER_RECONCILE_LAG_CAP_SECONDS", "0"),
        ("STRIPEMETER_RECONCILE_SWEEP_SECONDS", "0"),
        ("STRIPEMETER_STANDBY_REPLICAS", "-1"),
        ("STRIPEMETER_STANDBY_REPLICAS", "4"),
        ("STRIPEMETER_RECONCILE_CLOSING_SECONDS", "-1"),
        ("STRIPEMETER_TOPIC_REPLICATION_FACTOR", "0"),
        ("STRIPEMETER_TOPIC_MIN_INSYNC_REPLICAS", "0"),
        ("STRIPEMETER_TOPIC_MIN_INSYNC_REPLICAS", "4"),  # more than the 3 replicas: every write refused
        ("STRIPEMETER_KAFKA_SESSION_TIMEOUT_SECONDS", "5"),  # below the broker's group minimum
        ("STRIPEMETER_KAFKA_SESSION_TIMEOUT_SECONDS", "3600"),
    ],
)
def test_bad_settings_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({name: value})
    assert name.lower().removeprefix("stripemeter_") in str(info.value).lower() or name in str(info.value)


def test_capacity_settings_are_read_and_the_heavy_cap_follows_the_pool() -> None:
    settings = load_settings(
        {
            "STRIPEMETER_DB_POOL_SIZE": "20",
            "STRIPEMETER_DB_POOL_TIMEOUT_SECONDS": "2.5",
            "STRIPEMETER_DB_STATEMENT_TIMEOUT_SECONDS": "0",
            "STRIPEMETER_HEAVY_REQUESTS_PER_TENANT": "3",
            "STRIPEMETER_HEAVY_REQUESTS_TOTAL": "12",
            "STRIPEMETER_STRIPE_TIMEOUT_SECONDS": "4",
        }
    )
    assert (
        settings.db_pool_size, settings.db_pool_timeout_seconds, settings.db_statement_timeout_seconds,
        settings.heavy_requests_per_tenant, settings.heavy_requests_total, settings.stripe_timeout_seconds,
    ) == (20, 2.5, 0.0, 3, 12, 4.0)  # fmt: skip
    with pytest.raises(ConfigError) as info:
        load_settings({"STRIPEMETER_DB_POOL_SIZE": "4"})  # the default total of 4 would take it all
    assert info.value.field == "STRIPEMETER_HEAVY_REQUESTS_TOTAL"


def test_kafka_cluster_ids_never_look_like_options() -> None:
    from stripemeter.tools.local.kafka import _kafka_cluster_id

    ids = {_kafka_cluster_id() for _ in range(2000)}
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)


ROOT = Path(__file__).resolve().parents[3]


def test_the_readme_documents_every_variable_read() -> None:
    """Every variable config.py reads has a row in the README's Configuration table."""
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    documented = {name for row in rows for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", row.split(" | ")[0])}
    assert set(ENV_VARS) - documented == set()
    assert documented - set(ENV_VARS) == set()


def test_every_setting_is_used() -> None:
    """A setting read from the environment and used nowhere misleads whoever sets it."""
    sources = "\n".join(
        path.read_text()
        for folder in ("stripemeter", "streams", "api")
        for path in (ROOT / folder).rglob("*.py")
        if path.name != "config.py"
    )
    unused = [f.name for f in fields(Settings) if not re.search(rf"\.{f.name}\b", sources)]
    assert unused == []


@pytest.mark.parametrize("value", ["enabled", "y", "2", "disabled", "n", "-1", "tru", "of f"])
def test_an_unknown_boolean_stops_the_process_naming_the_variable(value: str) -> None:
    """A mistyped STRIPEMETER_AUTH used to read as false: authentication silently off."""
    with pytest.raises(ConfigError) as info:
        load_settings({"STRIPEMETER_AUTH": value})
    assert info.value.field == "STRIPEMETER_AUTH"
    assert "STRIPEMETER_AUTH" in str(info.value) and repr(value) in str(info.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        *[(v, True) for v in ("true", "TRUE", "True", "1", "yes", "YES", "on", "On", " on ")],
        *[(v, False) for v in ("false", "FALSE", "0", "no", "No", "off", "OFF")],
    ],
)
def test_booleans_accept_the_usual_words_in_any_case(value: str, expected: bool) -> None:
    assert load_settings({"STRIPEMETER_AUTH": value}).auth_enabled is expected


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("STRIPEMETER_LOG_LEVEL", "loud"),
        ("STRIPEMETER_LOG_LEVEL", "verbose"),
        ("STRIPEMETER_LOG_LEVEL", "10"),
        ("STRIPEMETER_LOG_FORMAT", "logfmt"),
        ("STRIPEMETER_STORE", "memory://"),
        ("STRIPEMETER_STORE", "rocksdb"),
        ("STRIPEMETER_STORE", "redis://x"),
        ("STRIPEMETER_INVOICE_RELEASE", "later"),
        ("STRIPEMETER_INVOICE_UNPROVEN", "finalize"),
    ],
)
def test_an_unknown_choice_stops_the_process_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({name: value})
    assert info.value.field == name
    assert name in str(info.value) and repr(value) in str(info.value)


@pytest.mark.parametrize(
    ("name", "value", "attr", "expected"),
    [
        ("STRIPEMETER_LOG_LEVEL", "debug", "log_level", "DEBUG"),
        ("STRIPEMETER_LOG_LEVEL", "Warning", "log_level", "WARNING"),
        ("STRIPEMETER_LOG_FORMAT", "JSON", "log_format", "json"),
        ("STRIPEMETER_STORE", "ROCKSDB://", "store", "rocksdb://"),
        ("STRIPEMETER_INVOICE_RELEASE", "Schedule", "invoice_release", "schedule"),
        ("STRIPEMETER_INVOICE_UNPROVEN", "RELEASE", "invoice_unproven", "release"),
    ],
)
def test_choices_accept_any_case(name: str, value: str, attr: str, expected: str) -> None:
    assert getattr(load_settings({name: value}), attr) == expected


def test_every_boolean_setting_is_read_strictly() -> None:
    """Any boolean added later is strict too: each one refuses a word it does not know."""
    booleans = [env for env, attr in ENV_VARS.items() if isinstance(getattr(Settings(), attr), bool)]
    assert booleans
    for env in booleans:
        with pytest.raises(ConfigError) as info:
            load_settings({env: "enabled"})
        assert info.value.field == env


def test_settings_env_round_trips_through_load_settings() -> None:
    """A child process reads what settings_env writes (booleans as True/False) back unchanged."""
    from stripemeter.domain.config import settings_env

    settings = load_settings({"STRIPEMETER_AUTH": "off", "STRIPEMETER_LOG_LEVEL": "debug"})
    again = load_settings(settings_env(settings))
    assert (again.auth_enabled, again.log_level, again.store) == (False, "DEBUG", "rocksdb://")


def test_customer_ownership_takes_its_two_values_and_refuses_others() -> None:
    assert load_settings({"STRIPEMETER_CUSTOMER_OWNERSHIP": "Stripe-Metadata"}).customer_ownership == (
        "stripe-metadata"
    )
    assert load_settings({}).customer_ownership == "first-binding"
    with pytest.raises(ConfigError, match="STRIPEMETER_CUSTOMER_OWNERSHIP"):
        load_settings({"STRIPEMETER_CUSTOMER_OWNERSHIP": "metadata"})


def test_the_operator_listener_never_shares_the_api_port_and_statement_timeouts_fit_postgresql() -> None:
    with pytest.raises(ConfigError, match="STRIPEMETER_OPERATOR_METRICS_PORT"):
        load_settings(
            {
                "STRIPEMETER_API_HOST": "0.0.0.0",
                "STRIPEMETER_API_PORT": "9464",
                "STRIPEMETER_OPERATOR_METRICS_PORT": "9464",
            }
        )
    for bad in ("inf", "nan", "2147484", "-1"):
        with pytest.raises(ConfigError, match="STRIPEMETER_DB_STATEMENT_TIMEOUT_SECONDS"):
            load_settings({"STRIPEMETER_DB_STATEMENT_TIMEOUT_SECONDS": bad})
    assert (
        load_settings({"STRIPEMETER_DB_STATEMENT_TIMEOUT_SECONDS": "2147483"}).db_statement_timeout_seconds
        == 2147483
    )
