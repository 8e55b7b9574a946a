"""GET /dashboard (the page) and GET /dashboard.json (its data); who may read them: guard.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse

from gateway.dashboard.guard import require_metrics_access
from gateway.dashboard.history import RateHistory
from gateway.dashboard.samples import Scrape
from gateway.dashboard.schema import DashboardSnapshot
from gateway.dashboard.snapshot import build_snapshot

INITIAL_MARK = "/*INITIAL_SNAPSHOT*/null"
# the page may run its own inline script and talk to this origin, nothing else
PAGE_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
}


@dataclass
class DashboardState:
    """What the dashboard keeps between polls, one per app (created in its lifespan)."""

    page: str = field(default_factory=lambda: resources.files(__package__).joinpath("page.html").read_text())
    history: RateHistory = field(default_factory=RateHistory)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.dashboard = DashboardState()
    yield


router = APIRouter(tags=["dashboard"], dependencies=[Depends(require_metrics_access)], lifespan=lifespan)


def snapshot(request: Request) -> DashboardSnapshot:
    state = request.app.state
    return build_snapshot(Scrape.of(state.metrics.registry), state.dashboard.history, state.models.loaded())


@router.get("/dashboard.json", response_model=DashboardSnapshot)
async def dashboard_json(request: Request) -> JSONResponse:
    body = snapshot(request).model_dump(mode="json", by_alias=True)
    return JSONResponse(body, headers={"cache-control": "no-store"})


@router.get("/dashboard", response_class=HTMLResponse)
async def dashboard_page(request: Request) -> HTMLResponse:
    """The page, with the current snapshot inline so that it draws before its first poll."""
    initial = snapshot(request).model_dump_json(by_alias=True).replace("<", "\\u003c")
    return HTMLResponse(request.app.state.dashboard.page.replace(INITIAL_MARK, initial), headers=PAGE_HEADERS)
