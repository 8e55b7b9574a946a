"""POST /api/pull: download a model from the Hugging Face Hub and serve it, as /api/create would.

Failures known before the first byte (a bad reference, a repo or file that does not exist, an unreachable
Hub) answer with their status; once progress is streaming, a failure is an {"error": ...} line, as in
Ollama. A client that goes away stops the download.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, ValidationError

from gateway.config import ModelSpec
from gateway.deps import AdminDep, ModelsDep, SettingsDep, StoreDep
from gateway.errors import APIError, bad_request
from gateway.pull import (
    FileProgress,
    PullCancelled,
    PullError,
    PullEvent,
    PullPlan,
    parse_reference,
    plan_pull,
)
from gateway.pull_space import GB, PullSpace, download_within
from gateway.routes.ollama_manage import _install
from gateway.routes.ollama_models import LATEST

logger = logging.getLogger("tandem.gateway")
router = APIRouter(prefix="/api", tags=["ollama"])
Installer = Callable[[Path], Awaitable[None]]


class PullRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None  # what to pull: hf://ORG/REPO[:FILE]
    name: str | None = None  # the name to serve it as; alone, Ollama's older spelling of `model`
    insecure: bool = False  # accepted for Ollama clients; huggingface_hub decides TLS
    stream: bool = True


def _event_line(event: PullEvent) -> str:
    if isinstance(event, FileProgress):
        body = {"status": f"pulling {event.file.path}", "digest": event.file.digest,
                "total": event.total, "completed": event.completed}  # fmt: skip
    else:
        body = {"status": event.text}
    return json.dumps(body) + "\n"


async def _run_download(plan: PullPlan, report: Callable[[PullEvent], None], space: PullSpace) -> Path:
    try:
        return await asyncio.to_thread(download_within, plan, report, space)
    except PullError as exc:
        raise APIError(exc.status, str(exc)) from None


async def _stream(plan: PullPlan, name: str, install: Installer, space: PullSpace) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[PullEvent | None] = asyncio.Queue()
    stop = threading.Event()  # set when this generator ends early: the worker thread then stops too

    def report(event: PullEvent) -> None:  # runs in the download thread
        if stop.is_set():
            raise PullCancelled
        loop.call_soon_threadsafe(events.put_nowait, event)

    def finished(task: asyncio.Future[Path]) -> None:
        if not task.cancelled():
            task.exception()  # retrieved here so a cancelled pull logs nothing; re-raised below otherwise
        events.put_nowait(None)

    yield json.dumps({"status": "pulling manifest"}) + "\n"
    work = asyncio.ensure_future(_run_download(plan, report, space))
    work.add_done_callback(finished)
    try:
        while (event := await events.get()) is not None:
            yield _event_line(event)
        await install(work.result())
    except APIError as exc:  # too late for a status code
        yield json.dumps({"error": exc.body.message}) + "\n"
        return
    except Exception as exc:  # a bug, not the Hub: logged with its traceback, and the client told
        logger.exception("pulling %s failed", plan.reference.repo_id)
        yield json.dumps({"error": f"pulling {plan.reference.repo_id} failed: {exc}"}) + "\n"
        return
    finally:
        stop.set()
    yield json.dumps({"status": "writing manifest"}) + "\n"
    yield json.dumps({"status": "success", "model": name}) + "\n"


@router.post("/pull", response_model=None)
async def pull(
    body: PullRequest, models: ModelsDep, store: StoreDep, settings: SettingsDep, _: AdminDep
) -> Response:
    """Admin-only (see deps.require_admin): a pull can replace a model other keys use and fills the disk."""
    source = body.model or body.name
    if not source:
        raise bad_request("model is required: hf://ORG/REPO[:FILE]")
    try:
        reference = parse_reference(source)
    except PullError as exc:
        raise APIError(exc.status, str(exc)) from None
    name = (body.name if body.model and body.name else reference.default_name()).removesuffix(LATEST)
    try:
        ModelSpec(name=name, backend="llamacpp", path="-")  # the name is checked before any download
    except ValidationError as exc:
        raise bad_request(f"invalid model name {name!r}: {exc.errors()[0]['msg']}") from None
    existing = models.resolve(name)
    if existing is not None and not existing.user_created:
        raise bad_request(f"model {name!r} is defined in the config file; pull under another name")
    root = settings.resolved_home() / "models" / "pulled"
    quota = None if settings.pull_quota_gb is None else int(settings.pull_quota_gb * GB)
    space = PullSpace(root, quota)
    try:
        plan = await asyncio.to_thread(plan_pull, reference, root)
        await asyncio.to_thread(space.allowance, plan)  # 507 before the first byte if it cannot fit
    except PullError as exc:
        raise APIError(exc.status, str(exc)) from None

    async def install(path: Path) -> None:
        spec = ModelSpec(name=name, backend=plan.backend, path=str(path))
        await _install(models, store, spec, path)

    if body.stream:
        return StreamingResponse(_stream(plan, name, install, space), media_type="application/x-ndjson")
    await install(await _run_download(plan, lambda event: None, space))
    return JSONResponse({"status": "success", "model": name})
