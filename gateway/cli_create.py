"""`tandem create NAME -f Modelfile`: checked here (line-numbered errors), created by the running server."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

DEFAULT_URL = os.environ.get("TANDEM_URL", "http://127.0.0.1:8000")
_FROM = re.compile(r"^(\s*FROM\s+)(.+?)\s*$", re.IGNORECASE | re.MULTILINE)


def _absolute_from(text: str, directory: Path) -> str:
    """FROM paths are relative to the Modelfile, as in Ollama; the server needs them absolute."""

    def rewrite(match: re.Match) -> str:
        value = match.group(2).strip().strip('"')
        candidate = (directory / Path(value).expanduser()).resolve()
        return match.group(1) + (str(candidate) if candidate.exists() else value)

    return _FROM.sub(rewrite, text)


def cmd_create(args: argparse.Namespace) -> int:
    import httpx  # neither is imported by every `tandem` command

    from gateway.modelfile import ModelfileError, parse_modelfile

    path = Path(args.file)
    try:
        text = path.read_text()
        parse_modelfile(text)
    except OSError as exc:
        print(f"tandem: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except ModelfileError as exc:
        print(f"tandem: {path}: {exc}", file=sys.stderr)
        return 1
    body = {"model": args.name, "modelfile": _absolute_from(text, path.parent.resolve()), "stream": True}
    try:
        with httpx.stream("POST", f"{args.url}/api/create", json=body, timeout=None) as response:
            if response.status_code != 200:
                response.read()
                print(f"tandem: {response.json().get('error', response.text)}", file=sys.stderr)
                return 1
            for line in response.iter_lines():
                if line.strip():
                    print(json.loads(line).get("status", line))
    except httpx.ConnectError:
        print(f"tandem: cannot reach tandem at {args.url}: is `tandem serve` running?", file=sys.stderr)
        return 1
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    create = commands.add_parser("create", help="create a model from a Modelfile (on a running tandem)")
    create.add_argument("name")
    create.add_argument("-f", "--file", default="Modelfile", help="the Modelfile (default ./Modelfile)")
    create.add_argument(
        "--url", default=DEFAULT_URL, help="the running tandem (default env TANDEM_URL or :8000)"
    )
    create.set_defaults(handler=cmd_create)
