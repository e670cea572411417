"""Errors raised by UsageFlow.

Every failure UsageFlow reports is a :class:`UsageFlowError` carrying a machine-readable
``code`` (one of :class:`ErrorCodes`), a human ``message`` and a ``details`` dict::

    UsageFlowError
      .code = USAGE_INVALID_PARAMS     bad argument: nothing was read or written
      .code = USAGE_CONFIG_ERROR       bad configuration, missing driver, or the store failed
                                       (details: original_error, table, operation)
      .code = USAGE_LIMIT_ERROR        no plan applies, an unknown plan, or a quota refused
      .code = USAGE_ADJUSTMENT_ERROR   adjustments disabled or an invalid adjustment
      .code = USAGE_RESERVATION_ERROR  a reservation that does not exist or was settled differently
      .code = USAGE_IDEMPOTENCY_ERROR  an idempotency key reused with different arguments
      .code = USAGE_WEBHOOK_SIGNATURE_ERROR  a webhook signature that does not verify
      .code = USAGE_WEBHOOK_PAYLOAD_ERROR    a webhook body that is not a Stripe event

Messages and details never contain keys or secrets.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

__all__ = ["ErrorCodes", "UsageFlowError"]


class ErrorCodes(str, Enum):
    """The codes a :class:`UsageFlowError` can carry. Members compare equal to their names."""

    USAGE_INVALID_PARAMS = "USAGE_INVALID_PARAMS"
    USAGE_CONFIG_ERROR = "USAGE_CONFIG_ERROR"
    USAGE_LIMIT_ERROR = "USAGE_LIMIT_ERROR"
    USAGE_ADJUSTMENT_ERROR = "USAGE_ADJUSTMENT_ERROR"
    USAGE_RESERVATION_ERROR = "USAGE_RESERVATION_ERROR"
    USAGE_IDEMPOTENCY_ERROR = "USAGE_IDEMPOTENCY_ERROR"
    USAGE_WEBHOOK_SIGNATURE_ERROR = "USAGE_WEBHOOK_SIGNATURE_ERROR"
    USAGE_WEBHOOK_PAYLOAD_ERROR = "USAGE_WEBHOOK_PAYLOAD_ERROR"

    def __str__(self) -> str:
        return self.value


class UsageFlowError(Exception):
    """A failure with a stable ``code``, a readable ``message`` and contextual ``details``."""

    code: ErrorCodes
    message: str
    details: dict[str, Any]

    def __init__(
        self, code: ErrorCodes, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message
        self.details = dict(details or {})

    @property
    def is_store_failure(self) -> bool:
        """True when the store (database, network) failed, as opposed to bad input or config."""
        return self.code is ErrorCodes.USAGE_CONFIG_ERROR and "original_error" in self.details

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.code, self.message, self.details))


def invalid(message: str, **details: Any) -> UsageFlowError:
    return UsageFlowError(ErrorCodes.USAGE_INVALID_PARAMS, message, details)


def config_error(message: str, **details: Any) -> UsageFlowError:
    return UsageFlowError(ErrorCodes.USAGE_CONFIG_ERROR, message, details)


def limit_error(message: str, **details: Any) -> UsageFlowError:
    return UsageFlowError(ErrorCodes.USAGE_LIMIT_ERROR, message, details)


def adjustment_error(message: str, **details: Any) -> UsageFlowError:
    return UsageFlowError(ErrorCodes.USAGE_ADJUSTMENT_ERROR, message, details)


def reservation_error(message: str, **details: Any) -> UsageFlowError:
    return UsageFlowError(ErrorCodes.USAGE_RESERVATION_ERROR, message, details)


def idempotency_error(message: str, **details: Any) -> UsageFlowError:
    return UsageFlowError(ErrorCodes.USAGE_IDEMPOTENCY_ERROR, message, details)


def missing_dependency(module: str, extra: str) -> UsageFlowError:
    return config_error(
        f"this feature needs the optional dependency {module!r}: pip install 'usageflow[{extra}]'",
        module=module,
        extra=extra,
    )
