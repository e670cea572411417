"""What counts as a secret in a store URL, and how a URL is shown without its secrets: one
rule for every store. PostgreSQL URLs are shown as the PostgreSQL store reads them (by libpq's
rules, :func:`usageflow.stores.postgres.display_url`), with the same parameter names masked."""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = ["credentials_end", "is_secret_param", "redact_url"]

#: A parameter whose name contains one of these (case-insensitive) carries a secret...
_SECRET_WORDS = ("password", "passwd", "pwd", "secret", "token", "key", "credential", "signature")
#: ...and so does one with one of these names.
_SECRET_NAMES = frozenset({"pass", "auth", "sig"})
#: Supabase keys wherever they appear: the JWT keys (anon, service role) and the newer
#: ``sb_secret_`` / ``sb_publishable_`` ones.
_KEYS = re.compile(r"eyJ[\w-]*\.[\w-]+\.[\w-]*|sb_(?:secret|publishable)_[\w-]+")
#: ``name=value`` in a libpq keyword string (``host=db password='x y'``).
_PAIR = re.compile(r"([A-Za-z_][\w.-]*)(\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)")


def is_secret_param(name: str) -> bool:
    """True when a URL parameter (or connection keyword) called ``name`` holds a secret."""
    lowered = name.strip().lower()
    return lowered in _SECRET_NAMES or any(word in lowered for word in _SECRET_WORDS)


def credentials_end(rest: str) -> int:
    """In the part of a URL after ``://``, the index of the ``@`` that ends the credentials,
    or -1: the first ``@`` before any ``/``, as libpq reads it (so a ``?`` or ``#`` in a
    password is part of it)."""
    for i, char in enumerate(rest):
        if char == "@":
            return i
        if char == "/":
            return -1
    return -1


def _mask_params(text: str) -> str:
    pieces = re.split(r"([&;])", text)
    return "".join(
        f"{piece.partition('=')[0]}=***"
        if "=" in piece and is_secret_param(piece.partition("=")[0])
        else piece
        for piece in pieces
    )


def _redact_generic(scheme: str, rest: str) -> str:
    at = credentials_end(rest)
    if rest.count("@") > (1 if at >= 0 else 0):
        # An "@" no parser can place: a password holding "/" or "@", or one in the path or
        # query. Nothing of it is shown.
        return f"{scheme}://***"
    start = at + 1
    cut = next((i for i in range(start, len(rest)) if rest[i] in "?#"), len(rest))
    shown = rest[:cut]
    if at >= 0:
        user, colon, _ = rest[:at].partition(":")
        shown = (f"{user}:***" if colon else "***") + shown[at:]
    tail = rest[cut:]
    if tail.startswith("?"):
        query, hash_mark, fragment = tail[1:].partition("#")
        shown += "?" + _mask_params(query) + (hash_mark + _mask_params(fragment))
    elif tail:
        shown += "#" + _mask_params(tail[1:])
    return f"{scheme}://{shown}"


def redact_url(url: str, *, postgres: Callable[[str], str] | None = None) -> str:
    """``url`` fit to show in a message or a log: every secret it may carry replaced by
    ``***``. A password (also one holding unencoded ``/``, ``#``, ``?``), the values of secret
    parameters (``password=``, ``sslpassword=``, ``key=``, ``apikey=``, ``token=``,
    ``secret=``, ... in the query or the fragment) and Supabase keys anywhere; a URL whose
    ``@`` cannot be placed is shown as ``scheme://***``. Text that is not a URL (a libpq
    keyword string, a class name) has its secret ``name=value`` pairs masked. A PostgreSQL
    URL is shown by ``postgres`` (which reads it by libpq's rules) when given."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        shown = _PAIR.sub(lambda m: f"{m[1]}{m[2]}***" if is_secret_param(m[1]) else m[0], url)
    elif postgres is not None and scheme.lower().split("+", 1)[0] in ("postgresql", "postgres"):
        shown = postgres(url)
    else:
        shown = _redact_generic(scheme, rest)
    return _KEYS.sub("***", shown)
