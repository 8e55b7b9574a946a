"""`tandem chat MODEL`: an interactive terminal chat with a running tandem, like `ollama run`.

It speaks Ollama's /api/chat (streaming) and keeps the conversation for the session. Ctrl-C during an
answer closes that stream -- the server sees the disconnect and stops generating -- and the exchange is
dropped from the history. Nothing but the answer's text goes to stdout, so a pipe gets plain text.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # httpx is imported when `tandem chat` runs, not by every `tandem` command
    import httpx

DEFAULT_URL = os.environ.get("TANDEM_URL", "http://127.0.0.1:8000")
QUOTES = '"""'
HELP = f"""Available commands:
  /set system <text>             set the system message ({QUOTES} … {QUOTES} for several lines)
  /set parameter <name> <value>  set an option for the next answers (num_predict, temperature, seed, stop …)
  /set verbose | /set quiet      show or hide the timings after each answer
  /clear                         forget the conversation so far
  /bye                           exit (Ctrl-D too)
  /?, /help                      this help

Begin and end a message of several lines with {QUOTES}. Ctrl-C stops an answer."""


class ServerError(Exception):
    """The server refused a request: its message, for the user."""


def _api_headers() -> dict[str, str]:
    key = os.environ.get("TANDEM_API_KEY")  # when the server asks for an API key
    return {"Authorization": f"Bearer {key}"} if key else {}


def _error_of(response: httpx.Response) -> str:
    response.read()
    try:
        return str(response.json().get("error", response.text))
    except ValueError:
        return response.text or f"HTTP {response.status_code}"


def _parse_value(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


@dataclass
class ChatSession:
    client: httpx.Client
    model: str
    system: str | None = None
    verbose: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, str]] = field(default_factory=list)

    def load(self) -> None:
        """Ollama's load request (no messages): says at once whether the model exists and can serve."""
        response = self.client.post("/api/chat", json={"model": self.model, "messages": []})
        if response.status_code == 404:
            listing = self.client.base_url.join("/api/tags")
            hint = f"The models it serves are listed at {listing}; add one with `tandem pull hf://ORG/REPO`."
            raise ServerError(f"{_error_of(response)}\n{hint}")
        if response.status_code != 200:
            raise ServerError(_error_of(response))

    def ask(self, text: str) -> None:
        question = {"role": "user", "content": text}
        system = [{"role": "system", "content": self.system}] if self.system else []
        body = {"model": self.model, "messages": [*system, *self.history, question], "stream": True,
                **({"options": self.options} if self.options else {})}  # fmt: skip
        answer: list[str] = []
        final: dict[str, Any] = {}
        try:
            with self.client.stream("POST", "/api/chat", json=body) as response:
                if response.status_code != 200:
                    raise ServerError(_error_of(response))
                for line in response.iter_lines():
                    event = json.loads(line) if line.strip() else {}
                    if "error" in event:
                        raise ServerError(str(event["error"]))
                    piece = event.get("message", {}).get("content", "")
                    sys.stdout.write(piece)
                    sys.stdout.flush()
                    answer.append(piece)
                    final = event if event.get("done") else final
        except KeyboardInterrupt:
            print()  # leaving `with` closed the stream: the server aborts; the exchange is forgotten
            return
        except ServerError:
            if answer:
                print()
            raise
        print()
        self.history += [question, {"role": "assistant", "content": "".join(answer)}]
        if self.verbose:
            _print_timings(final)

    def command(self, line: str) -> bool:
        """A /command; False when the session should end."""
        words = line.split(maxsplit=2)
        name, rest = words[0].lower(), words[1:]
        if name in ("/bye", "/exit"):
            return False
        if name in ("/?", "/help"):
            print(HELP)
        elif name == "/clear":
            self.history.clear()
            print("Cleared session context")
        elif name == "/set" and rest:
            self._set(rest[0].lower(), rest[1] if len(rest) > 1 else "")
        else:
            print(f"Unknown command '{words[0]}'. Type /? for help")
        return True

    def _set(self, what: str, value: str) -> None:
        if what == "system" and value.strip():
            self.system = value.strip()
            print("Set system message.")
        elif what == "parameter" and len(value.split()) >= 2:
            key, *values = value.split()
            self.options[key] = values if key == "stop" else _parse_value(" ".join(values))
            print(f"Set parameter '{key}' to '{' '.join(values)}'")
        elif what in ("verbose", "quiet"):
            self.verbose = what == "verbose"
            print(f"Set '{what}' mode.")
        else:
            print("Usage: /set system <text> | /set parameter <name> <value> | /set verbose | /set quiet")


def _print_timings(final: dict[str, Any]) -> None:
    """As `ollama run --verbose` prints them, on stderr so that stdout stays the conversation."""

    def seconds(key: str) -> float:
        return final.get(key, 0) / 1e9

    rows = [("total duration", seconds("total_duration")), ("load duration", seconds("load_duration"))]
    lines = [(label, f"{value:.3f}s") for label, value in rows]
    for label, count, duration in (
        ("prompt eval", "prompt_eval_count", "prompt_eval_duration"),
        ("eval", "eval_count", "eval_duration"),
    ):
        took = seconds(duration)
        rate = final.get(count, 0) / took if took else 0.0
        lines += [
            (f"{label} count", f"{final.get(count, 0)} token(s)"),
            (f"{label} duration", f"{took:.3f}s"),
            (f"{label} rate", f"{rate:.2f} tokens/s"),
        ]
    for label, value in lines:
        print(f"{label + ':':<22}{value}", file=sys.stderr)


def read_message() -> str | None:
    """One message or command; a \"\"\" block may span lines. None at end of input (Ctrl-D)."""
    try:
        line = input(">>> ")
        if line.count(QUOTES) != 1:
            return line.replace(QUOTES, "") if line.count(QUOTES) == 2 else line
        lines = [line]
        while QUOTES not in (line := input("... ")):
            lines.append(line)
        lines.append(line)
    except EOFError:
        return None
    return "\n".join(lines).replace(QUOTES, "", 2)


def _converse(session: ChatSession) -> None:
    import readline  # noqa: F401  -- its import gives input() line editing and in-session history

    print("Send a message (/? for help)")
    while True:
        try:
            text = read_message()
        except KeyboardInterrupt:
            print("\nUse Ctrl + d or /bye to exit.")
            continue
        if text is None:
            print()
            return
        if text.strip().startswith("/"):
            if not session.command(text.strip()):
                return
        elif text.strip():
            try:
                session.ask(text.strip())
            except ServerError as exc:
                print(f"Error: {exc}", file=sys.stderr)
            print()


def cmd_chat(args: argparse.Namespace) -> int:
    import httpx

    url = args.url.rstrip("/")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a log line per request would cut into the chat
    # no read timeout: a large model may take minutes to load or to answer, and Ctrl-C ends a wait
    client = httpx.Client(base_url=url, headers=_api_headers(), timeout=httpx.Timeout(10, read=None))
    session = ChatSession(client, args.model, system=args.system, verbose=args.verbose)
    try:
        if sys.stderr.isatty():  # a model can take a while to load: show that something is happening
            from rich.console import Console

            with Console(stderr=True).status(f"loading {args.model}…"):
                session.load()
        else:
            session.load()
        if sys.stdin.isatty():
            _converse(session)
        elif text := sys.stdin.read().strip():  # piped: all of it is one message, as `echo hi | ollama run M`
            session.ask(text)
    except httpx.ConnectError:
        print(f"tandem: no tandem server answers at {url}.\n"
              "Start one with `tandem serve` (in another terminal), or point --url / TANDEM_URL at one.",
              file=sys.stderr)  # fmt: skip
        return 1
    except ServerError as exc:
        print(f"tandem: {exc}", file=sys.stderr)
        return 1
    except httpx.HTTPError as exc:
        print(f"tandem: the connection to {url} failed: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    chat = commands.add_parser("chat", help="chat with a model in the terminal (on a running tandem)")
    chat.add_argument("model")
    chat.add_argument("--system", help="the system message for the session")
    chat.add_argument("--verbose", action="store_true", help="print timings and token counts after answers")
    chat.add_argument(
        "--url", default=DEFAULT_URL, help="the running tandem (default env TANDEM_URL or :8000)"
    )
    chat.set_defaults(handler=cmd_chat)
