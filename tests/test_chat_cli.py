"""`tandem chat` driven through a real pseudo-terminal, as a person would, against a real server.

A small stdlib stand-in for pexpect: the child gets the pty as its controlling terminal, so a Ctrl-C typed
into it is a real SIGINT from the terminal, and readline sees a terminal.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import subprocess
import sys
import termios
import time

import ollama
import pytest

from tests.conftest import free_port

ABORTED = r"aborted after \d+ tokens"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>]|\r")


def _take_terminal() -> None:  # in the child, after setsid: the pty on stdin becomes its terminal
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    def __init__(self, *args: str) -> None:
        master, slave = pty.openpty()
        env = {**os.environ, "TERM": "dumb"}  # readline without colours or bracketed paste
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "chat", *args],
            stdin=slave, stdout=slave, stderr=slave, env=env,
            start_new_session=True, preexec_fn=_take_terminal,
        )  # fmt: skip
        os.close(slave)
        self.master = master
        self.output = ""  # everything shown so far, escape sequences and carriage returns removed
        self.seen = 0  # expect() looks after this point

    def _read(self, timeout: float) -> bool:
        if not select.select([self.master], [], [], timeout)[0]:
            return True
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: the child closed the terminal
            return False
        self.output += ANSI.sub("", data.decode(errors="replace"))
        return bool(data)

    def expect(self, pattern: str, timeout: float = 30) -> re.Match:
        deadline = time.monotonic() + timeout
        while True:
            match = re.compile(pattern).search(self.output, self.seen)
            if match:
                self.seen = match.end()
                return match
            if time.monotonic() > deadline or not self._read(0.1):
                raise AssertionError(f"{pattern!r} not shown; the terminal shows:\n{self.output[-3000:]}")

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def line(self, text: str) -> None:
        self.type(text + "\r")  # Enter sends a carriage return; the terminal makes it a newline

    def exit_status(self, timeout: float = 15) -> int:
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            self._read(0.1)
        return self.process.wait(timeout=1)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        os.close(self.master)


@pytest.fixture
def terminal(server):
    opened: list[Terminal] = []

    def open_chat(*args: str) -> Terminal:
        opened.append(Terminal(*args, "--url", server.base_url))
        return opened[-1]

    yield open_chat
    for term in opened:
        term.close()


def _prompt_tokens(term: Terminal) -> int:
    """The prompt's token count from the --verbose timings of the answer being shown."""
    count = int(term.expect(r"prompt eval count:\s+(\d+) token")[1])
    term.expect(r"\n>>> ")
    return count


def _answer(term: Terminal, text: str) -> int:
    term.line(text)
    return _prompt_tokens(term)


def test_a_conversation(terminal):
    term = terminal("tiny", "--verbose")
    term.expect(r"Send a message \(/\? for help\)\n>>> ")
    term.line("/set parameter num_predict 8")
    term.expect(r"Set parameter 'num_predict' to '8'\n>>> ")
    term.line("hello")
    answer = term.expect(r"(?s)hello\n(.+?)\ntotal duration:", timeout=60)[1]
    assert answer.strip()  # the streamed answer, before the timings
    assert term.expect(r"\neval count:\s+(\d+) token")[1] == "8"
    term.expect(r"\n>>> ")
    first = int(re.findall(r"prompt eval count:\s+(\d+)", term.output)[-1])
    assert _answer(term, "hello") > first + 8  # the history goes with the question

    term.line("/clear")
    term.expect("Cleared session context")
    assert _answer(term, "hello") == first

    term.line("/set system You are a pirate who sails the seven seas and answers in riddles.")
    term.expect("Set system message.")
    term.line("/clear")
    assert _answer(term, "hello") > first + 10  # the system message now precedes the question

    term.line('"""first line')
    term.expect(r"\n\.\.\. ")  # the continuation prompt: the message is not sent yet
    term.line('second line"""')
    assert _prompt_tokens(term) > first
    assert term.output.count("total duration:") == 5  # the two lines made one message

    term.line("/help")
    term.expect(r"(?s)/set system <text>.*\n>>> ")
    term.line("/bye")
    assert term.exit_status() == 0


def test_ctrl_c_stops_the_answer_not_the_chat(terminal, server):
    term = terminal("tiny")
    term.expect(">>> ")
    term.line("/set parameter num_predict 4000")  # about two seconds of text on the tiny model
    term.expect(r"\n>>> ")
    aborts = len(re.findall(ABORTED, server.log()))  # the server may be shared: count, do not just search
    term.line("tell me a long story")
    term.expect(r"(?s)story\n.{20}")  # streaming has begun
    term.type("\x03")  # Ctrl-C, from the terminal
    term.expect(r"\n>>> ", timeout=10)
    deadline = time.monotonic() + 10
    while len(re.findall(ABORTED, server.log())) == aborts:  # the server stopped generating
        assert time.monotonic() < deadline, server.log()[-2000:]
        time.sleep(0.1)
    term.line("/bye")
    assert term.exit_status() == 0


def test_ctrl_d_exits(terminal):
    term = terminal("tiny")
    term.expect(">>> ")
    term.type("\x04")
    assert term.exit_status() == 0


def test_piped_input_gets_plain_output(server):
    client = ollama.Client(host=server.base_url)
    client.create(model="chat-brief", from_="tiny", parameters={"num_predict": 6})
    try:
        result = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "chat", "chat-brief", "--url", server.base_url],
            input="hello", capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        client.delete("chat-brief")  # the server is shared with other modules
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() and ">>>" not in result.stdout and "\x1b" not in result.stdout


@pytest.mark.parametrize("reachable", [False, True])
def test_no_server_or_no_model_is_said_plainly(server, reachable):
    url = server.base_url if reachable else f"http://127.0.0.1:{free_port()}"
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "chat", "no-such-model", "--url", url],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    if reachable:
        assert "no-such-model" in result.stderr and "tandem pull hf://" in result.stderr
    else:
        assert f"no tandem server answers at {url}" in result.stderr and "tandem serve" in result.stderr
