"""`tandem keys | teams | usage`: a client of a running tandem's admin API, so it works with either store.

The master key comes from TANDEM_MASTER_KEY only (never a flag: argv is visible to every local user);
the server from --url, else TANDEM_URL, else http://127.0.0.1:8000.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from gateway.auth.keys import key_id_of

if TYPE_CHECKING:  # the handlers import them when they run: `tandem serve` parses its command line first
    from pydantic import BaseModel

    from gateway.auth.records import Limits
    from gateway.auth.schemas import KeyInfo, TeamInfo

DEFAULT_URL = "http://127.0.0.1:8000"
TIMEOUT_S = 10.0
M = TypeVar("M", bound="BaseModel")


class AdminError(Exception):
    """What to tell the user (already phrased), e.g. the server's error message."""


def _call(args: argparse.Namespace, method: str, path: str, model: type[M], **kwargs: Any) -> M:
    import httpx  # here, not at the top: the server imports this package and never needs httpx

    url = (args.url or os.environ.get("TANDEM_URL") or DEFAULT_URL).rstrip("/")
    master_key = os.environ.get("TANDEM_MASTER_KEY")
    headers = {"Authorization": f"Bearer {master_key}"} if master_key else {}
    try:
        response = httpx.request(method, f"{url}{path}", headers=headers, timeout=TIMEOUT_S, **kwargs)
    except httpx.HTTPError as exc:
        raise AdminError(f"cannot reach tandem at {url}: {exc}") from exc
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:500]
        hint = " (set TANDEM_MASTER_KEY)" if response.status_code == 401 and not master_key else ""
        raise AdminError(f"{response.status_code}: {message}{hint}")
    return model.model_validate_json(response.content)


def _table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _limits_text(limits: Limits) -> list[str]:
    budget = f"{limits.budget_tokens}/{limits.budget_period}" if limits.budget_tokens else "-"
    return [str(v) if v else "-" for v in (limits.rpm, limits.tpm, limits.max_parallel)] + [budget]


def _limits_from(args: argparse.Namespace) -> dict[str, Any]:
    fields = ("rpm", "tpm", "max_parallel", "budget_tokens", "budget_period")
    return {name: value for name in fields if (value := getattr(args, name)) is not None}


def cmd_keys_create(args: argparse.Namespace) -> int:
    from gateway.auth.schemas import KeyCreate, KeyCreated

    models = [glob.strip() for glob in (args.models or "").split(",") if glob.strip()]
    body = KeyCreate(
        name=args.name, team=args.team, models=models, expires_in=args.expires,
        manage_models=args.manage_models, **_limits_from(args),
    )  # fmt: skip
    created = _call(args, "POST", "/admin/keys", KeyCreated, json=body.model_dump(exclude_none=True))
    # the key alone on stdout (KEY=$(tandem keys create ...) works); the rest on stderr
    print(created.key)
    print(
        f"created key {created.id} ({created.name}{', team ' + created.team if created.team else ''}). "
        "Save it now: tandem keeps only its hash and cannot show it again.",
        file=sys.stderr,
    )
    if not created.enforced:
        print(
            "warning: access control is off on this server (no master key is set), so this key does "
            "nothing yet: every request is served without a key. Set TANDEM_MASTER_KEY (or auth.master_key) "
            "and restart tandem to enforce keys.",
            file=sys.stderr,
        )
    return 0


def _print_keys(keys: Sequence[KeyInfo]) -> None:
    rows = [
        ["ID", "PREFIX", "NAME", "TEAM", "MODELS", "RPM", "TPM", "PARALLEL", "BUDGET", "EXPIRES", "STATUS"]
    ]
    for key in keys:
        expires = key.expires_at.strftime("%Y-%m-%d %H:%M") if key.expires_at else "-"
        models = (",".join(key.models) or "*") + (" +manage" if key.manage_models else "")
        rows.append(
            [
                key.id,
                key.prefix,
                key.name,
                key.team or "-",
                models,
                *_limits_text(key.limits),
                expires,
                key.status,
            ]
        )
    _table(rows)


def cmd_keys_list(args: argparse.Namespace) -> int:
    from gateway.auth.schemas import KeyList

    keys = _call(args, "GET", "/admin/keys", KeyList)
    if args.json:
        print(keys.model_dump_json(indent=2))
    elif keys.data:
        _print_keys(keys.data)
    else:
        print("no keys")
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from gateway.auth.schemas import KeyInfo

    # only the id goes over the wire: URL paths end up in access logs, keys must not
    key = _call(args, "DELETE", f"/admin/keys/{key_id_of(args.key) or args.key}", KeyInfo)
    print(f"revoked key {key.id} ({key.name})")
    return 0


def _print_teams(teams: Sequence[TeamInfo]) -> None:
    rows = [["TEAM", "RPM", "TPM", "PARALLEL", "BUDGET"]]
    rows += [[team.name, *_limits_text(team.limits)] for team in teams]
    _table(rows)


def cmd_teams_set(args: argparse.Namespace) -> int:
    from gateway.auth.records import Limits
    from gateway.auth.schemas import TeamInfo

    team = _call(
        args, "PUT", f"/admin/teams/{args.team}", TeamInfo, json=Limits(**_limits_from(args)).model_dump()
    )
    _print_teams([team])
    return 0


def cmd_teams_show(args: argparse.Namespace) -> int:
    from gateway.auth.schemas import TeamInfo, TeamList

    if args.team:
        _print_teams([_call(args, "GET", f"/admin/teams/{args.team}", TeamInfo)])
    else:
        teams = _call(args, "GET", "/admin/teams", TeamList).data
        if teams:
            _print_teams(teams)
        else:
            print("no team limits set")
    return 0


def cmd_usage(args: argparse.Namespace) -> int:
    from gateway.auth.schemas import UsageReport

    params = {name: value for name in ("key", "team", "since", "until") if (value := getattr(args, name))}
    report = _call(args, "GET", "/admin/usage", UsageReport, params=params)
    if args.json:
        print(report.model_dump_json(indent=2))
        return 0
    print(f"usage {report.since} .. {report.until} (UTC)")
    if not report.data:
        print("no requests")
        return 0
    rows = [["DATE", "KEY", "TEAM", "MODEL", "REQUESTS", "PROMPT", "COMPLETION", "TOTAL"]]
    for r in report.data:
        counts = (r.requests, r.prompt_tokens, r.completion_tokens, r.total_tokens)
        rows.append([str(r.date), r.key_id, r.team or "-", r.model, *map(str, counts)])
    totals = [
        sum(getattr(r, f) for r in report.data) for f in ("requests", "prompt_tokens", "completion_tokens")
    ]
    rows.append(["total", "", "", "", *map(str, totals), str(totals[1] + totals[2])])
    _table(rows)
    return 0


Handler = Callable[[argparse.Namespace], int]


def _reporting(handler: Handler) -> Handler:
    """A server or connection error becomes one line on stderr and status 1, not a traceback."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        from pydantic import ValidationError

        try:
            return handler(args)
        except AdminError as exc:
            print(f"tandem: {exc}", file=sys.stderr)
            return 1
        except ValidationError as exc:  # an argument the server would refuse, e.g. --expires 3x
            error = exc.errors()[0]
            where = ".".join(str(p) for p in error["loc"])
            print(f"tandem: {where}: {error['msg']}", file=sys.stderr)
            return 2

    return run


def _with_limits(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rpm", type=int, help="requests per minute")
    parser.add_argument("--tpm", type=int, help="tokens per minute (prompt + max_tokens reserved)")
    parser.add_argument("--max-parallel", dest="max_parallel", type=int, help="requests in flight at once")
    parser.add_argument("--budget-tokens", dest="budget_tokens", type=int, help="tokens per budget period")
    parser.add_argument("--budget-period", dest="budget_period", help="e.g. 1d (default), 7d, 30d")


def add_cli_commands(subparsers: argparse._SubParsersAction) -> None:
    """Registers `keys`, `teams` and `usage` on the `tandem` parser; handlers are set as `handler`."""
    url = argparse.ArgumentParser(add_help=False)
    url.add_argument("--url", help=f"a running tandem (default env TANDEM_URL, else {DEFAULT_URL})")

    keys = subparsers.add_parser("keys", help="create, list and revoke API keys (needs TANDEM_MASTER_KEY)")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", parents=[url], help="create a key; prints it once")
    create.add_argument("--name", required=True)
    create.add_argument("--team")
    create.add_argument("--models", help="comma-separated globs the key may call, e.g. 'qwen*,llama-3*'")
    create.add_argument("--expires", help="lifetime, e.g. 30d (default: never)")
    create.add_argument(
        "--manage-models", dest="manage_models", action="store_true",
        help="the key may pull, create, copy and delete models (default: only the master key may)",
    )  # fmt: skip
    _with_limits(create)
    create.set_defaults(handler=_reporting(cmd_keys_create))
    listing = key_commands.add_parser("list", parents=[url], help="keys by id and prefix (never the secret)")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_reporting(cmd_keys_list))
    revoke = key_commands.add_parser("revoke", parents=[url], help="revoke a key at once on every replica")
    revoke.add_argument("key", metavar="KEY_OR_ID")
    revoke.set_defaults(handler=_reporting(cmd_keys_revoke))

    teams = subparsers.add_parser("teams", help="limits shared by all keys of a team")
    team_commands = teams.add_subparsers(dest="teams_command", required=True)
    team_set = team_commands.add_parser("set", parents=[url], help="set a team's limits (others removed)")
    team_set.add_argument("team")
    _with_limits(team_set)
    team_set.set_defaults(handler=_reporting(cmd_teams_set))
    show = team_commands.add_parser("show", parents=[url], help="one team's limits, or every team's")
    show.add_argument("team", nargs="?")
    show.set_defaults(handler=_reporting(cmd_teams_show))

    report = subparsers.add_parser("usage", parents=[url], help="requests and tokens per key, model and day")
    report.add_argument("--key", help="one key (id or prefix)")
    report.add_argument("--team")
    report.add_argument("--since", help="first UTC day, YYYY-MM-DD (default: 29 days before --until)")
    report.add_argument("--until", help="last UTC day, YYYY-MM-DD (default: today)")
    report.add_argument("--json", action="store_true")
    report.set_defaults(handler=_reporting(cmd_usage))


def main(argv: list[str] | None = None) -> int:
    """These commands alone (tests, or `python -m gateway.auth.cli`); `tandem` registers the same ones."""
    parser = argparse.ArgumentParser(prog="tandem")
    add_cli_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
