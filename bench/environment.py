"""Where a benchmark ran, recorded beside its figures: machine, versions, and the command."""

from __future__ import annotations

import os
import platform
import shlex
import sys
from datetime import UTC, datetime


def describe_environment(
    argv: list[str] | None = None, command: str = "tandem bench throughput", *, with_torch: bool = True
) -> dict[str, str]:
    """`command` is the benchmark's own command line before its arguments; `with_torch=False` for
    benchmarks that never import torch (no torch, Triton or GPU fields, and cores as the OS counts them)."""
    environment = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command + " " + shlex.join(sys.argv[1:] if argv is None else argv),
        "python": platform.python_version(),
    }
    if not with_torch:
        environment |= {"cpu": _cpu_model(), "cores": str(os.cpu_count())}
        return environment
    import torch

    environment |= {"torch": torch.__version__, "cpu": _cpu_model(), "cores": str(torch.get_num_threads())}
    try:
        import triton

        environment["triton"] = triton.__version__
    except ImportError:
        environment["triton"] = "not installed"
    if torch.cuda.is_available():
        environment["gpu"] = torch.cuda.get_device_name()
        environment["cuda"] = str(torch.version.cuda)
        environment["driver"] = _nvidia_driver()
    return environment


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _nvidia_driver() -> str:
    try:
        with open("/proc/driver/nvidia/version") as file:
            return file.readline().strip()
    except OSError:
        return "unknown"
