"""No PostgreSQL password (or ``sslpassword``) in any repr, error or log line, whatever the
shape of the URL: ``user:password@``, ``?password=``, ``?sslpassword=``, and a password holding
an unencoded ``/``, ``#``, ``?`` or ``@``. Connecting fails (port 1), so no database is needed."""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlsplit

import pytest

from usageflow import AsyncUsageFlow, UsageFlow
from usageflow.errors import UsageFlowError
from usageflow.stores.base import Tables
from usageflow.stores.postgres import PostgresSettings, _failure

pytest.importorskip("psycopg")

FAST = "connect_timeout=1&timeout=1"
HOST = "127.0.0.1:1"
DB = "usageflow_db"

#: (url, password, whether libpq can read the URL, so that host and database are shown)
CASES = [
    (f"postgresql://app:Plain-s3cret@{HOST}/{DB}?{FAST}", "Plain-s3cret", True),
    (f"postgresql://app@{HOST}/{DB}?password=Query-s3cret&{FAST}", "Query-s3cret", True),
    (
        f"postgresql://app@{HOST}/{DB}?sslpassword=Ssl-s3cret&sslmode=disable&{FAST}",
        "Ssl-s3cret",
        True,
    ),
    (f"postgresql://app:Zq7/Xk9#Wv3?Rt5@{HOST}/{DB}?{FAST}", "Zq7/Xk9#Wv3?Rt5", False),
    (f"postgresql://app:Zq7/Xk9@{HOST}/{DB}?{FAST}", "Zq7/Xk9", False),
    # An unencoded "@": libpq would take "Xk9@127.0.0.1" for the host.
    (f"postgresql://app:Zq7@Xk9@{HOST}/{DB}?{FAST}", "Zq7@Xk9", False),
    # libpq reads a "?" or "#" in the password (it knows no fragment, and the credentials end
    # at the first "@" before any "/"), and so does usageflow, its own options included.
    (f"postgresql://app:Zq7?Xk9@{HOST}/{DB}?{FAST}", "Zq7?Xk9", True),
    (f"postgresql://app:Zq7#Xk9@{HOST}/{DB}?{FAST}", "Zq7#Xk9", True),
    (f"postgresql://app:Zq7#Xk9@{HOST}/{DB}?connect_timeout=1", "Zq7#Xk9", True),
]


def _pieces(password: str) -> list[str]:
    """The password and each piece of it between ``/``, ``#``, ``?`` and ``@``."""
    pieces = [password]
    for sep in "/#?@":
        pieces = [p for piece in pieces for p in piece.split(sep)] + pieces
    return sorted({p for p in pieces if len(p) >= 3})


def _failures(flow: UsageFlow) -> list[str]:
    texts = []
    with pytest.raises(UsageFlowError) as caught:
        flow.get_plans()
    assert caught.value.is_store_failure
    texts += [str(caught.value), caught.value.message, repr(caught.value.details)]
    assert flow.connection_check() is False

    async def run() -> None:
        aflow = AsyncUsageFlow(flow.store)
        with pytest.raises(UsageFlowError) as caught:
            await aflow.get_plans()
        texts.extend([str(caught.value), repr(caught.value.details)])
        assert await aflow.connection_check() is False
        await aflow.aclose()

    asyncio.run(run())
    return texts


@pytest.mark.parametrize(("url", "password", "readable"), CASES)
def test_no_password_in_repr_errors_or_logs(
    url: str, password: str, readable: bool, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        flow = UsageFlow(url, debug=True)
        try:
            texts = [repr(flow), repr(flow.store), flow.store.url, *_failures(flow)]
        finally:
            flow.close()
    texts.append(caplog.text)
    assert "store=" in caplog.text  # the debug line naming the store was logged
    for text in texts:
        for piece in _pieces(password):
            assert piece not in text, (piece, text)
    shown = repr(flow.store)
    if readable:
        assert HOST in shown and f"/{DB}" in shown and "***" in shown
    else:
        assert shown == "<PostgresStore postgresql://***>"


def test_the_redacted_url_keeps_what_helps_debugging() -> None:
    settings = PostgresSettings(
        "postgresql://app:pw-xyz@db.example:5432/prod?sslmode=require&pool_size=3"
    )
    assert (
        settings.redacted == "postgresql://app:***@db.example:5432/prod?sslmode=require&pool_size=3"
    )
    settings = PostgresSettings("postgresql://app@db.example/prod?sslpassword=pw-xyz")
    assert settings.redacted == "postgresql://app@db.example/prod?sslpassword=***"


def test_a_driver_message_quoting_a_secret_is_replaced() -> None:
    import psycopg

    settings = PostgresSettings(f"postgresql://app@{HOST}/{DB}?password=Query-s3cret")
    exc = psycopg.OperationalError('invalid value "Query-s3cret" somewhere')
    error = _failure(settings, Tables(), exc, "charge")
    assert "Query-s3cret" not in str(error) + repr(error.details)
    assert error.details["original_error"].startswith("OperationalError: ")
    plain = _failure(settings, Tables(), psycopg.OperationalError("server closed"), "charge")
    assert plain.details["original_error"] == "server closed"


@pytest.mark.parametrize("password", ["Zq7#Xk9", "Zq7?Xk9", "Zq7#?:Xk9"])
def test_options_after_a_password_with_hash_or_question_mark_are_honoured(password: str) -> None:
    """The URL is split where libpq splits it: the options after such a password are read
    (usageflow's own and libpq's), not lost in a "fragment"."""
    url = (
        f"postgresql://app:{password}@db.example:5432/prod?pool_size=3&timeout=1.5&sslmode=require"
    )
    settings = PostgresSettings(url)
    assert settings.parseable
    assert (settings.pool_size, settings.timeout) == (3, 1.5)
    assert settings.redacted == (
        "postgresql://app:***@db.example:5432/prod?sslmode=require&pool_size=3&timeout=1.5"
    )
    assert password in settings.secrets


@pytest.mark.parametrize("password", ["Zq7#Xk9", "Zq7?Xk9"])
def test_a_password_with_hash_or_question_mark_connects(
    pg_url: str, schema: str, password: str
) -> None:
    """End to end (the test server trusts local connections, so any password is accepted): the
    user, the database and the ``schema`` option after the password are the ones used."""
    import psycopg

    parts = urlsplit(pg_url)
    base = f"postgresql://{parts.username or 'postgres'}:{password}@{parts.hostname}:{parts.port or 5432}{parts.path}"
    flow = UsageFlow(f"{base}?schema={schema}&timeout=3")  # by hand: urlsplit would cut it
    try:
        flow.migrate()
        flow.create_plan("Free", is_free=True, limits={"x": 1})
        assert flow.consume("u", "x").allowed
    finally:
        flow.close()
    with psycopg.connect(pg_url) as admin:
        found = admin.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = %s AND table_name = 'usage_events'",
            (schema,),
        ).fetchone()
    assert found == (1,)
