"""Access control for a team-shared tandem: API keys, per-key and per-team limits, usage.

Off unless a master key is set. Keys are `sk-tandem-<id>-<secret>`, stored as sha256 only. Limits (rpm,
tpm, parallel, token budgets per period) are enforced atomically in Redis by Lua scripts (or in process
without Redis, for one replica). See access.py for the request path, admin.py for /admin, cli.py for
`tandem keys | teams | usage`.

The names below are imported from their modules on first use: the `tandem` command line reads its
commands from gateway.auth.cli before anything else, and `tandem serve` begins its model's load before
it imports the request path (FastAPI, the admin routes) — cold start.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.auth.access import Access, RejectionHook, open_access
    from gateway.auth.admin import admin_router
    from gateway.auth.admission import Admission
    from gateway.auth.cli import add_cli_commands
    from gateway.auth.principal import Principal
    from gateway.auth.records import Limits, UsageRow
    from gateway.auth.settings import AuthSettings

_MODULE_OF = {
    "Access": "access",
    "RejectionHook": "access",
    "open_access": "access",
    "admin_router": "admin",
    "Admission": "admission",
    "add_cli_commands": "cli",
    "Principal": "principal",
    "Limits": "records",
    "UsageRow": "records",
    "AuthSettings": "settings",
}

__all__ = [
    "Access",
    "Admission",
    "AuthSettings",
    "Limits",
    "Principal",
    "RejectionHook",
    "UsageRow",
    "add_cli_commands",
    "admin_router",
    "open_access",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'gateway.auth' has no attribute {name!r}")
    return getattr(importlib.import_module(f"gateway.auth.{module}"), name)
