"""`tandem pull hf://ORG/REPO[:FILE]`: the running server downloads and registers; this shows its progress."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # httpx and rich are imported when `tandem pull` runs, not by every `tandem` command
    from rich.console import Console

DEFAULT_URL = os.environ.get("TANDEM_URL", "http://127.0.0.1:8000")


def api_headers() -> dict[str, str]:
    """The API key, when the server asks for one (TANDEM_API_KEY)."""
    key = os.environ.get("TANDEM_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


def _show(lines: Iterator[str], console: Console) -> int:
    """Ollama's pull stream: one progress bar per file on a terminal, one line per finished file otherwise."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TaskID,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())  # fmt: skip
    bars: dict[str, TaskID] = {}
    finished: set[str] = set()
    with Progress(*columns, console=console, disable=not console.is_terminal) as progress:
        for line in lines:
            event = json.loads(line) if line.strip() else {}
            status = str(event.get("status", ""))
            if "error" in event:
                progress.console.print(f"tandem: {event['error']}", style="red", markup=False)
                return 1
            if "completed" in event:
                if status not in bars:
                    bars[status] = progress.add_task(status, total=event.get("total"))
                progress.update(bars[status], completed=event["completed"], total=event.get("total"))
                if not console.is_terminal and event["completed"] == event.get("total") not in (None, 0):
                    if status not in finished:
                        progress.console.print(f"{status}: {event['completed']} bytes", markup=False)
                    finished.add(status)
            elif status == "success":
                model = event.get("model")
                served = f": serving as {model} (try `tandem chat {model}`)" if model else ""
                progress.console.print("success" + served, markup=False)
                return 0
            elif status:
                progress.console.print(status, markup=False)
    console.print("tandem: the server ended the pull before it finished; see its log", style="red")
    return 1


def cmd_pull(args: argparse.Namespace) -> int:
    import httpx
    from rich.console import Console

    body = {"model": args.reference, "stream": True, **({"name": args.name} if args.name else {})}
    url = args.url.rstrip("/")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # its per-request INFO lines are noise here
    # stdout carries the progress; a pipe gets the final state of each bar, not animation frames
    console = Console(highlight=False)
    try:
        with httpx.stream("POST", f"{url}/api/pull", json=body, headers=api_headers(),
                          timeout=httpx.Timeout(30, read=None)) as response:  # fmt: skip
            if response.status_code != 200:
                response.read()
                try:
                    message = response.json().get("error", response.text)
                except ValueError:
                    message = response.text
                print(f"tandem: {message} (HTTP {response.status_code})", file=sys.stderr)
                return 1
            return _show(response.iter_lines(), console)
    except httpx.ConnectError:
        print(f"tandem: cannot reach tandem at {url}: is `tandem serve` running? "
              "(start it, or point --url / TANDEM_URL at it)", file=sys.stderr)  # fmt: skip
        return 1
    except httpx.HTTPError as exc:
        print(f"tandem: the connection to {url} failed during the pull: {exc}", file=sys.stderr)
        return 1


def add_commands(commands: argparse._SubParsersAction) -> None:
    pull = commands.add_parser("pull", help="download a model from Hugging Face (on a running tandem)")
    pull.add_argument("reference", metavar="hf://ORG/REPO[:FILE]", help="a GGUF file, or a checkpoint repo")
    pull.add_argument("--name", help="serve it under this name (default: REPO, plus the file's stem)")
    pull.add_argument(
        "--url", default=DEFAULT_URL, help="the running tandem (default env TANDEM_URL or :8000)"
    )
    pull.set_defaults(handler=cmd_pull)
