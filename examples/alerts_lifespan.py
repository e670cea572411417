"""Usage alerts delivered in the background of a Starlette (or FastAPI) app.

Run it (``pip install "usageflow[starlette,alerts]"``)::

    USAGEFLOW_ALERT_URL=https://example.com/hooks/usage USAGEFLOW_ALERT_SECRET=s3cret \\
        python examples/alerts_lifespan.py

then ``curl -X POST -H 'x-user: alice' localhost:8000/export`` eight times: the eighth answer
carries ``UsageFlow-Alert: "exports";threshold=80``, and within ``INTERVAL`` seconds the
alert is POSTed, signed, to ``USAGEFLOW_ALERT_URL`` (or logged, when that is not set).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from usageflow import AsyncUsageFlow
from usageflow.alerts import async_webhook_sender, log_handler
from usageflow.integrations.starlette import UsageFlowMiddleware

INTERVAL = 10.0  # seconds between two deliveries

flow = AsyncUsageFlow(os.environ.get("USAGEFLOW_STORE", "sqlite:///usageflow.db"))


async def deliver_forever() -> None:
    """Deliver what is pending, then wait; a failure is logged and retried next time."""
    url, secret = os.environ.get("USAGEFLOW_ALERT_URL"), os.environ.get("USAGEFLOW_ALERT_SECRET")
    handler = async_webhook_sender(url, secret) if url and secret else log_handler
    while True:
        await flow.deliver_alerts(handler)
        await asyncio.sleep(INTERVAL)


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    await flow.create_plan("Free", is_free=True, limits={"exports": 10})
    await flow.set_alert_thresholds("exports", [80, 100])
    task = asyncio.create_task(deliver_forever())
    try:
        yield
    finally:
        task.cancel()  # an alert leased when cancelled is offered again when its lease ends
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await flow.aclose()


async def export(request: Request) -> JSONResponse:
    return JSONResponse({"exported": True})


app = Starlette(routes=[Route("/export", export, methods=["POST"])], lifespan=lifespan)
app.add_middleware(
    UsageFlowMiddleware,
    flow=flow,
    routes={"POST /export": "exports"},
    user_id=lambda request: request.headers.get("x-user"),
)

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, port=8000)
