"""Serves a request through the router: each planned deployment in turn, until one accepts it.

A deployment fails over (to the next deployment, then to the fallbacks) on a 5xx, a timeout, a full queue
or a context-length overflow; any other error is the client's and is answered at once. Once a response
has started streaming it belongs to its deployment: failing over is only possible before that.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from backends.base import BackendUnavailableError, QueueFullError
from backends.remote.upstream import UpstreamError
from gateway.deps import CallContext, may_see_names, usable_names
from gateway.errors import APIError, as_api_error, bad_request, model_not_found, upstream_api_error
from gateway.registry import ManagedModel
from gateway.routing import RemoteModel

logger = logging.getLogger("tandem.gateway")
T = TypeVar("T")
ServeLocal = Callable[[ManagedModel], Awaitable[T]]
ServeRemote = Callable[[RemoteModel, str], Awaitable[T]]


# the deployment is fine, it just cannot take this request now: try the next one, but keep sending it traffic
CAPACITY_CODES = frozenset({"context_length_exceeded", "queue_full", "models_busy", "insufficient_memory"})


# a deployment that failed: skip it for a while
FAILURE_CODES = frozenset({"backend_unavailable", "upstream_timeout"})


def _failover_error(exc: Exception) -> APIError | None:
    """The error as the client would see it, if another deployment may still serve the request.

    Only the deployment's own trouble fails over; tandem's refusals of the caller (its rate limits, its
    access store being down) and the client's mistakes are answered as they are.
    """
    if isinstance(exc, QueueFullError | BackendUnavailableError):
        return as_api_error(exc)
    if isinstance(exc, UpstreamError):
        error = upstream_api_error(exc)
        upstream_trouble = error.status >= 500 or error.status in (408, 429)
        return error if upstream_trouble or error.body.code in CAPACITY_CODES else None
    if isinstance(exc, APIError) and exc.body.code in CAPACITY_CODES | FAILURE_CODES:
        return exc
    return None


async def dispatch(
    call: CallContext, requested: str, serve_local: ServeLocal[T], serve_remote: ServeRemote[T] | None = None
) -> T:
    request, router = call.request, call.router
    team = call.principal.team
    # Ollama clients add a tag; "tiny:latest" is "tiny"
    spec = router.lookup(requested, team) or router.lookup(requested.removesuffix(":latest"), team)
    if spec is None or not may_see_names(request, [requested, spec.name, *spec.aliases]):
        raise model_not_found(requested, usable_names(request, router))
    request.state.tandem_model = spec.name
    last_error: APIError | None = None
    for attempt in router.plan(spec):
        deployment = attempt.deployment
        request.state.tandem_backend = deployment.kind
        request.state.tandem_deployment = deployment.name
        started = time.perf_counter()
        try:
            if deployment.remote is not None:
                if serve_remote is None:
                    raise bad_request(
                        f"model '{spec.name}' is served by a remote upstream: use the OpenAI API /v1"
                    )
                serving = serve_remote(deployment.remote, requested)
            else:
                assert deployment.local is not None
                serving = serve_local(deployment.local)
            result = await asyncio.wait_for(serving, spec.timeout_s)
        except TimeoutError:
            error = APIError(504, f"'{deployment.name}' did not answer within {spec.timeout_s}s",
                             type="server_error", code="upstream_timeout")  # fmt: skip
        except Exception as exc:
            failover = _failover_error(exc)
            if failover is None:
                if isinstance(exc, UpstreamError):  # the client's mistake, as the upstream saw it
                    raise upstream_api_error(exc) from exc
                raise
            error = failover
        else:
            router.succeeded(deployment, time.perf_counter() - started)
            if attempt.fallback_of is not None:
                call.metrics.fallbacks.labels(spec.name, deployment.name).inc()
            return result
        if error.body.code not in CAPACITY_CODES:
            logger.warning("deployment %r of %r failed (%s): %s", deployment.name, spec.name, error.status,
                           error.body.message)  # fmt: skip
            call.metrics.upstream_errors.labels(spec.name, deployment.name).inc()
            router.failed(deployment, spec.cooldown_s)
        last_error = error
    assert last_error is not None
    raise last_error
