"""``usageflow.stores.redact_url`` masks every secret a URL may carry, whatever its shape: a
password in ``user:password@`` (with unencoded ``/``, ``#`` or ``?`` in it), secret query or
fragment parameters, a Supabase key anywhere; PostgreSQL URLs are shown by the PostgreSQL
store's own rule. And the places that show a URL (the unknown-scheme error, the debug log, a
Supabase store's repr) use it."""

from __future__ import annotations

import logging

import pytest

from usageflow import ErrorCodes, UsageFlow, UsageFlowError
from usageflow.stores import redact_url

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoic2VydmljZV9yb2xlIn0.c2lnbmF0dXJl"

#: (url, the secrets it carries, what must still be shown)
CASES = [
    ("mysql://app:Pa55-word@db:3306/x", ["Pa55-word"], "mysql://app:***@db:3306/x"),
    ("redis://:Pa55-word@cache:6379/0", ["Pa55-word"], "redis://:***@cache:6379/0"),
    ("https://ghp_T0kenValue@git.example/x", ["ghp_T0kenValue"], "https://***@git.example/x"),
    (
        "mysql://app:Zq7/Xk9#Wv3?Rt5@db/x",
        ["Zq7/Xk9#Wv3?Rt5", "Zq7", "Xk9", "Wv3", "Rt5"],
        "mysql://***",
    ),
    ("mysql://app:Zq7#Xk9@db/x", ["Zq7#Xk9", "Xk9"], "mysql://app:***@db/x"),
    ("mysql://app:Zq7?Xk9@db/x", ["Zq7?Xk9", "Xk9"], "mysql://app:***@db/x"),
    (
        "mysql://db/x?password=Pw1x&sslpassword=Pw2x&key=Pw3x&apikey=Pw4x&token=Pw5x"
        "&secret=Pw6x&api_key=Pw7x&access_token=Pw8x&client_secret=Pw9x&sslmode=require",
        [f"Pw{i}x" for i in range(1, 10)],
        "mysql://db/x?password=***&sslpassword=***&key=***&apikey=***&token=***&secret=***"
        "&api_key=***&access_token=***&client_secret=***&sslmode=require",
    ),
    ("https://cb.example/done#access_token=Pw1x&state=a", ["Pw1x"], "#access_token=***&state=a"),
    (
        f"https://x.supabase.co?apikey={JWT}",
        [JWT, JWT.split(".")[1]],
        "https://x.supabase.co?apikey=***",
    ),
    (
        f"https://x.supabase.co/rest/v1/{JWT}",
        [JWT.split(".")[1]],
        "https://x.supabase.co/rest/v1/***",
    ),
    ("https://x.supabase.co/k/sb_secret_AbC123xyz", ["AbC123xyz"], "https://x.supabase.co/k/***"),
    # PostgreSQL: the store's own rule (libpq's parser, every secret parameter masked).
    ("postgresql://app:Pa55-word@db:5432/x", ["Pa55-word"], "postgresql://app:***@db:5432/x"),
    (
        "postgresql://app@db/x?password=Pw1x&sslpassword=Pw2x&pool_size=3",
        ["Pw1x", "Pw2x"],
        "postgresql://app:***@db/x?sslpassword=***&pool_size=3",
    ),
    (
        "postgresql://app:Zq7#Xk9@db/x?timeout=2",
        ["Zq7#Xk9", "Xk9"],
        "postgresql://app:***@db/x?timeout=2",
    ),
    ("postgresql://app:Zq7/Xk9@db/x", ["Zq7", "Xk9"], "postgresql://***"),
    # Not a URL: a libpq keyword string, a class name.
    ("host=db password=Pa55-word dbname=x", ["Pa55-word"], "host=db password=*** dbname=x"),
    ("MemoryStore", [], "MemoryStore"),
]


@pytest.mark.parametrize(("url", "secrets", "shown"), CASES)
def test_every_secret_is_masked(url: str, secrets: list[str], shown: str) -> None:
    text = redact_url(url)
    for secret in secrets:
        assert secret not in text, (secret, text)
    assert shown in text


def test_the_unknown_scheme_error_shows_no_secret() -> None:
    with pytest.raises(UsageFlowError) as caught:
        UsageFlow("mysql://app:Zq7#Xk9@db/x?token=T0kenValue")
    error = caught.value
    assert error.code is ErrorCodes.USAGE_CONFIG_ERROR
    text = str(error) + repr(error.details)
    for secret in ("Zq7", "Xk9", "T0kenValue"):
        assert secret not in text
    assert error.details["store"] == "mysql://app:***@db/x?token=***"


def test_a_supabase_url_carrying_the_key_shows_it_nowhere(caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("supabase")
    key = "sb_secret_Zq7Xk9Wv3Rt5"
    with caplog.at_level(logging.DEBUG, logger="usageflow"):
        flow = UsageFlow(
            supabase_url=f"https://ref.supabase.co?apikey={key}", supabase_key=key, debug=True
        )
    try:
        texts = [repr(flow.store), flow.store.url, repr(flow.store.to_async()), caplog.text]  # type: ignore[attr-defined]
    finally:
        flow.close()
    assert "store=https://ref.supabase.co?apikey=***" in caplog.text
    for text in texts:
        assert "Zq7Xk9" not in text, text
