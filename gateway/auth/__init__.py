"""Access control for a team-shared tandem: API keys, per-key and per-team limits, usage.

Off unless a master key is set. Keys are `sk-tandem-<id>-<secret>`, stored as sha256 only. Limits (rpm,
tpm, parallel, token budgets per period) are enforced atomically in Redis by Lua scripts (or in process
without Redis, for one replica). See access.py for the request path, admin.py for /admin, cli.py for
`tandem keys | teams | usage`.
"""

from gateway.auth.access import Access, RejectionHook, open_access
from gateway.auth.admin import admin_router
from gateway.auth.admission import Admission
from gateway.auth.cli import add_cli_commands
from gateway.auth.principal import Principal
from gateway.auth.records import Limits, UsageRow
from gateway.auth.settings import AuthSettings

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
