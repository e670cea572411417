"""PostgreSQL helpers for tests: a fresh schema per test, and store URLs pointing into it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg


def store_url(base: str, schema: str, **options: object) -> str:
    """``base`` with ``schema=`` (and other store options) added to its query string."""
    parts = urlsplit(base)
    query = [*parse_qsl(parts.query), ("schema", schema)]
    query += [(k, str(v)) for k, v in options.items()]
    return urlunsplit(parts._replace(query=urlencode(query)))


@contextmanager
def fresh_schema(url: str) -> Iterator[str]:
    """Create an empty schema, yield its name, drop it (and everything in it) afterwards."""
    schema = f"uf_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield schema
    finally:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
