"""The stores every conformance test runs over.

Each entry builds a fresh, empty store for one test. Stores that need a server read its address
from the environment and are skipped, with the reason, when it is absent; CI sets the variables
so that nothing is skipped there.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from usageflow.stores import open_store
from usageflow.stores.base import Store

StoreFactory = Callable[[Path], "contextmanager[Store]"]

POSTGRES_URL_ENV = "USAGEFLOW_TEST_POSTGRES_URL"


@contextmanager
def memory_store(tmp_path: Path) -> Iterator[Store]:
    store = open_store("memory://")
    yield store
    store.close()


@contextmanager
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    store = open_store(f"sqlite:///{tmp_path / 'usageflow.db'}")
    store.migrate()
    yield store
    store.close()


#: name -> (factory, skip reason or None). Networked stores register themselves below.
STORES: dict[str, tuple[Callable[[Path], object], str | None]] = {
    "memory": (memory_store, None),
    "sqlite": (sqlite_store, None),
}


def store_params() -> list[object]:
    return [
        pytest.param(name, id=name, marks=[pytest.mark.skip(reason=reason)] if reason else [])
        for name, (_factory, reason) in STORES.items()
    ]


def postgres_url() -> str | None:
    return os.environ.get(POSTGRES_URL_ENV) or None
