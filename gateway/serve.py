"""`tandem serve`: from the active profile to a listening server, the models' loads overlapping the rest of
the start-up (cold start: docs/benchmarks.md)."""

from __future__ import annotations

import asyncio
import gc
import logging
import shutil
import sys
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backends.base import BackendUnavailableError
from gateway.config import ConfigError, Profile, TandemConfig, load_config, require_models, select_profile
from gateway.model_store import ModelStore
from gateway.settings import Settings

logger = logging.getLogger("tandem")
PRELOAD_SWITCH_INTERVAL_S = 0.0001


@dataclass(frozen=True)
class ActiveConfig:
    profile_name: str
    profile: Profile
    source: str  # where the config came from, for messages
    config: TandemConfig


def active_config(settings: Settings) -> ActiveConfig:
    config, source = load_config(settings.config)
    name, profile = select_profile(config, source, settings.profile)
    return ActiveConfig(name, profile, source, config)


async def _serve(settings: Settings, active: ActiveConfig) -> None:
    from gateway.startup import begin_preloads, build_manager

    profile_name, source = active.profile_name, active.source
    require_models(active.profile, profile_name, source)
    store = ModelStore(created_models_dir(settings, profile_name))
    models = build_manager(active.profile, profile_name, settings, source, store)
    # The preloads run on other threads while the app is imported here (cold start). llama.cpp's load
    # logs ~2,300 lines through a Python callback, each needing the GIL, which this thread's imports keep
    # for a whole switch interval (5 ms) before handing it over: a short interval while both run lets the
    # load go on near its own speed (beside a busy thread: 17 s at 5 ms, 0.7 s at 0.1 ms, 0.4 s alone).
    switch_interval = sys.getswitchinterval()
    if begin_preloads(models):
        sys.setswitchinterval(PRELOAD_SWITCH_INTERVAL_S)
    from gateway.app import create_app
    from gateway.auth import open_access
    from gateway.drain import Drain, DrainingServer, serve_config
    from gateway.http_protocol import with_header_timeout
    from gateway.routing import Router

    access = await open_access(settings.auth_settings(active.config.auth))
    app = create_app(settings, models, Router(active.profile, models), store, access)
    # SIGTERM: stop accepting at once, let what runs finish within TANDEM_DRAIN_S, then end it properly
    drain = Drain(settings.drain_s)
    config = serve_config(
        app, drain, host=settings.host, port=settings.port, log_level=settings.log_level,
        http=with_header_timeout(settings.header_timeout_s),
    )  # fmt: skip
    server = DrainingServer(config, drain)
    try:
        await models.start()  # preloads: a model that cannot load fails here, before the server listens
    except BackendUnavailableError as exc:
        await models.aclose()
        await access.aclose()
        raise ConfigError(source, [("", str(exc))]) from None
    finally:
        sys.setswitchinterval(switch_interval)
    # what was made while starting lives as long as the process: frozen, it stays out of the collector's
    # full passes, which would otherwise pause the event loop for milliseconds (tail latency). Not collected
    # first: start-up leaves ~1,000 objects of garbage in cycles, and a full pass costs ~0.1 s of cold start.
    # The collector was off since the command line was parsed (serve()); it works from here on.
    gc.freeze()
    gc.enable()
    names = ", ".join(f"{m.spec.name} ({m.spec.backend})" for m in models) or "none"
    logger.info("profile %r from %s: serving %s", profile_name, source, names)
    logger.info("OpenAI-compatible endpoint: http://%s:%d/v1", settings.host, settings.port)
    await server.serve()


def created_models_dir(settings: Settings, profile_name: str) -> Path:
    """Models created through the API belong to the profile they were made in (a llama.cpp model made
    under dev is not served by prod's paged engine).

    Records from before models were kept per profile lie directly in models/created/: each profile
    adopts a copy the first time it starts, so nothing made then is lost.
    """
    root = settings.resolved_home() / "models" / "created"
    directory = root / profile_name
    legacy = sorted(root.glob("*.json"))
    if legacy and not directory.exists():
        directory.mkdir(parents=True)
        for record in legacy:
            shutil.copy2(record, directory / record.name)
        logger.info("profile %r adopted %d model(s) created before per-profile storage", profile_name,
                    len(legacy))  # fmt: skip
    return directory


def run_event_loop(main: Coroutine[Any, Any, None]) -> None:
    """uvloop when it is installed: the gateway's per-request CPU cost is mostly event-loop and HTTP work."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def serve(settings: Settings) -> None:
    """Serve until stopped. gateway.cli.main turns the garbage collector off before its first heavy import
    for this command, and _serve turns it on once the server is up: the imports and the models' loads make
    ~100k objects that live as long as the process, and collecting while they are made, over and over,
    cost ~0.13 s of a ~2 s cold start (measured with gc.callbacks)."""
    run_event_loop(_serve(settings, active_config(settings)))
