"""Ready-made handlers for :meth:`UsageFlow.deliver_alerts`, and the receiving side's check.

* :func:`webhook_sender` / :func:`async_webhook_sender`: POST each alert as JSON to a URL,
  signed the way Stripe signs its webhooks (``UsageFlow-Signature: t=<unix time>,v1=<hex
  HMAC-SHA256 of "<t>.<body>">``), with ``UsageFlow-Alert-Id`` for the receiver to
  deduplicate on (delivery is at least once). A transport error or an answer other than 2xx
  raises, so the alert stays undelivered and is offered again.
* :func:`verify_signature`: the receiver's check of that header (constant-time, with a
  tolerance on the timestamp, several ``v1`` values accepted while a secret is rotated).
* :func:`log_handler`: one log line per alert on the ``usageflow`` logger.

The senders need ``httpx`` (``pip install "usageflow[alerts]"``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from usageflow.errors import ErrorCodes, UsageFlowError, config_error, missing_dependency
from usageflow.models import Alert

__all__ = [
    "SIGNATURE_HEADER",
    "AlertDeliveryFailed",
    "async_webhook_sender",
    "log_handler",
    "payload",
    "sign",
    "verify_signature",
    "webhook_sender",
]

SIGNATURE_HEADER = "UsageFlow-Signature"
ALERT_ID_HEADER = "UsageFlow-Alert-Id"
#: How old (or how far ahead) a signature's timestamp may be, in seconds, by default.
TOLERANCE = 300.0

logger = logging.getLogger("usageflow")


def payload(alert: Alert) -> bytes:
    """The JSON body an alert is sent as: its fields, and ``"type": "usage.alert"``."""
    body = {"type": "usage.alert", **alert.model_dump(mode="json")}
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def sign(body: bytes, secret: str, timestamp: int | None = None) -> str:
    """The ``UsageFlow-Signature`` value of ``body``: ``t=<unix seconds>,v1=<hex HMAC>``."""
    t = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


def _checked(url: object, secret: object) -> tuple[str, str]:
    if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
        raise config_error("the alert webhook URL must be an http(s) URL")
    if not urlsplit(url).netloc:
        raise config_error("the alert webhook URL has no host")
    if not isinstance(secret, str) or not secret:
        raise config_error("the alert webhook needs a secret (a non-empty string) to sign with")
    return url, secret


def _headers(alert: Alert, body: bytes, secret: str) -> dict[str, str]:
    return {
        "content-type": "application/json",
        SIGNATURE_HEADER: sign(body, secret),
        ALERT_ID_HEADER: str(alert.id),
    }


class AlertDeliveryFailed(Exception):
    """The receiver of an alert webhook answered other than 2xx (its URL is shown without
    its query, which may hold a token)."""

    def __init__(self, url: str, status: int) -> None:
        shown = urlsplit(url)._replace(query="", fragment="").geturl()
        super().__init__(f"the alert webhook {shown} answered {status}")
        self.status = status


def _refused(url: str, status: int) -> AlertDeliveryFailed:
    return AlertDeliveryFailed(url, status)


def webhook_sender(
    url: str, secret: str, *, timeout: float = 10.0, client: Any = None
) -> Callable[[Alert], None]:
    """A handler that POSTs each alert to ``url``, signed with ``secret``; raises when the
    request fails or the answer is not 2xx. ``client``: an ``httpx.Client`` to send with
    (one is made, and kept, otherwise)."""
    url, secret = _checked(url, secret)
    try:
        import httpx
    except ImportError:
        raise missing_dependency("httpx", "alerts") from None
    http = client if client is not None else httpx.Client(timeout=timeout)

    def send(alert: Alert) -> None:
        body = payload(alert)
        response = http.post(url, content=body, headers=_headers(alert, body, secret))
        if not 200 <= response.status_code < 300:
            raise _refused(url, response.status_code)

    return send


def async_webhook_sender(
    url: str, secret: str, *, timeout: float = 10.0, client: Any = None
) -> Callable[[Alert], Awaitable[None]]:
    """:func:`webhook_sender` for :class:`AsyncUsageFlow`, over an ``httpx.AsyncClient``."""
    url, secret = _checked(url, secret)
    try:
        import httpx
    except ImportError:
        raise missing_dependency("httpx", "alerts") from None
    http = client if client is not None else httpx.AsyncClient(timeout=timeout)

    async def send(alert: Alert) -> None:
        body = payload(alert)
        response = await http.post(url, content=body, headers=_headers(alert, body, secret))
        if not 200 <= response.status_code < 300:
            raise _refused(url, response.status_code)

    return send


def _signature_error(message: str) -> UsageFlowError:
    return UsageFlowError(ErrorCodes.USAGE_WEBHOOK_SIGNATURE_ERROR, message, {})


def verify_signature(
    body: bytes,
    header: str | None,
    secret: str | list[str],
    *,
    tolerance: float = TOLERANCE,
    now: float | None = None,
) -> dict[str, Any]:
    """Check an alert webhook's ``UsageFlow-Signature`` against the raw ``body`` and answer
    the alert as a dict. ``secret`` may be a list (each is tried: rotate secrets without
    refusing what is in flight); ``tolerance`` bounds the timestamp's distance from ``now``.
    A missing, malformed, stale or wrong signature is ``USAGE_WEBHOOK_SIGNATURE_ERROR``; a
    body that is not a JSON object, ``USAGE_WEBHOOK_PAYLOAD_ERROR``."""
    if not header:
        raise _signature_error(f"no {SIGNATURE_HEADER} header")
    parts = [item.partition("=") for item in header.split(",")]
    stamps = [value.strip() for key, _, value in parts if key.strip() == "t"]
    signatures = [value.strip() for key, _, value in parts if key.strip() == "v1"]
    if len(stamps) != 1 or not stamps[0].isdigit() or not signatures:
        raise _signature_error(f"malformed {SIGNATURE_HEADER} header")
    timestamp = int(stamps[0])
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise _signature_error("the signature's timestamp is outside the tolerance")
    secrets = [secret] if isinstance(secret, str) else list(secret)
    if not secrets or not all(isinstance(s, str) and s for s in secrets):
        raise config_error("verify_signature needs the secret (a non-empty string)")
    expected = [sign(body, s, timestamp).rpartition("v1=")[2] for s in secrets]
    if not any(hmac.compare_digest(e, given) for e in expected for given in signatures):
        raise _signature_error("the signature does not match the body")
    try:
        decoded = json.loads(body)
    except ValueError:
        decoded = None
    if not isinstance(decoded, dict):
        raise UsageFlowError(
            ErrorCodes.USAGE_WEBHOOK_PAYLOAD_ERROR, "the alert body is not a JSON object", {}
        )
    return decoded


def log_handler(alert: Alert) -> None:
    """Log one ``INFO`` line for an alert on the ``usageflow`` logger."""
    logger.info(
        "usageflow alert: user %r reached %s%% of %s (%s of %s)",
        alert.user_id,
        alert.threshold,
        alert.feature_name,
        alert.usage,
        alert.limit,
    )
