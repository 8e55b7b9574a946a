"""llama.cpp's own log lines go to Python logging (tandem.llamacpp.native), never near file descriptors.

With verbose=False, llama-cpp-python wraps model loading in suppress_stdout_stderr, which dup2()s
/dev/null over fds 1 and 2 and back again. That is not thread-safe (llama-cpp-python issue #1874): two
loads on two threads interleave the swaps and leave the process's stdout and stderr on /dev/null for good,
tracebacks included. So every Llama in tandem is built with verbose=True (the fds are left alone) right
after route_native_logs(), which replaces llama.cpp's log callback with one that forwards to logging, at
debug level except errors.

llama-cpp-python itself still prints a few lines per load (system info, the GGUF's metadata) with
print(file=sys.stderr) when verbose: plain writes through sys.stderr, harmless to other threads.
"""

from __future__ import annotations

import ctypes
import logging

import llama_cpp

logger = logging.getLogger("tandem.llamacpp.native")

_GGML_LOG_LEVEL_ERROR = 4  # ggml.h: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5 (continues a line)


def _forward(level: int, text: bytes | None, _user_data: ctypes.c_void_p) -> None:
    # Called by llama.cpp on whichever thread logs; an exception must not cross back into C.
    try:
        if level != _GGML_LOG_LEVEL_ERROR and not logger.isEnabledFor(logging.DEBUG):
            return  # most of a load's ~3,000 lines: not even decoded
        line = (text or b"").decode("utf-8", errors="replace").rstrip()
        if line:
            logger.log(logging.ERROR if level == _GGML_LOG_LEVEL_ERROR else logging.DEBUG, "%s", line)
    except Exception:
        pass


# A module-level constant, not state: llama.cpp keeps this function pointer in a process-wide global and
# may call it from any thread at any time, so the ctypes object behind it must live as long as the process
# (a callback that is garbage-collected while registered crashes the process on the next log line).
_CALLBACK = llama_cpp.llama_log_callback(_forward)


def route_native_logs() -> None:
    """Install the callback; idempotent, and called before every Llama is built so that nothing else
    (llama-cpp-python installs its own, printing to stderr, at import) stays in its place."""
    llama_cpp.llama_log_set(_CALLBACK, ctypes.c_void_p(0))
