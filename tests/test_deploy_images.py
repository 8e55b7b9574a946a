"""Static checks of the Dockerfiles (Dockerfile, Dockerfile.cuda) and .dockerignore. Fast and offline."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.deploy_support import ROOT

_INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER", "WORKDIR",
    "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}  # fmt: skip


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    instructions, current = [], ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        if current.strip():
            keyword, _, arguments = current.strip().partition(" ")
            instructions.append((keyword.upper(), " ".join(arguments.split())))
        current = ""
    return instructions


def _makefile_var(name: str) -> str:
    match = re.search(rf"^{name}\s*\??:?=\s*(\S+)", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert match, name
    return match.group(1)


def _final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(i for i, (k, _) in enumerate(instructions) if k == "FROM")
    return instructions[last_from:]


def _check_common(instructions: list[tuple[str, str]]) -> None:
    assert {k for k, _ in instructions} <= _INSTRUCTIONS
    final = _final_stage(instructions)
    final_keys = [k for k, _ in final]
    assert ("EXPOSE", "8000") in final
    healthcheck = next(a for k, a in final if k == "HEALTHCHECK")
    command = json.loads(healthcheck[healthcheck.index("CMD") + 3 :])
    assert "/health" in command[-1]
    compile(command[-1], "HEALTHCHECK", "exec")
    cmd = json.loads(next(a for k, a in final if k == "CMD"))
    assert cmd[:2] == ["tandem", "serve"] and cmd[cmd.index("--host") + 1] == "0.0.0.0"
    assert "USER" in final_keys, "runs as root"
    llama = _makefile_var("LLAMA_CPP_VERSION")
    assert ("ARG", f"LLAMA_CPP_VERSION={llama}") in instructions
    assert f'"llama-cpp-python=={llama}"' in (ROOT / "pyproject.toml").read_text()
    assert any(k == "ENV" and a == 'CMAKE_ARGS="-DGGML_NATIVE=OFF"' for k, a in instructions)
    runs = [a for k, a in final if k == "RUN"]
    assert any(re.search(r"\bpip install\b.* \.(\s|$)", run) for run in runs), "no `pip install .`"


def test_dev_dockerfile():
    instructions = dockerfile_instructions(ROOT / "Dockerfile")
    _check_common(instructions)
    assert ("ARG", "PYTHON_IMAGE=python:3.11-slim") in instructions
    assert [a for k, a in instructions if k == "FROM"] == [
        "${PYTHON_IMAGE} AS llama-wheel",
        "${PYTHON_IMAGE}",
    ]
    torch = _makefile_var("TORCH_SPEC")
    assert ("RUN", f"pip install {torch} --index-url https://download.pytorch.org/whl/cpu") in instructions
    build_deps = next(a for k, a in instructions if k == "RUN" and "apt-get install" in a)
    assert "build-essential" in build_deps and "cmake" in build_deps
    assert ("ENV", "TANDEM_PROFILE=dev") in instructions


def test_cuda_dockerfile():
    instructions = dockerfile_instructions(ROOT / "Dockerfile.cuda")
    _check_common(instructions)
    base = next(a for k, a in instructions if k == "ARG" and a.startswith("CUDA_IMAGE="))
    assert re.fullmatch(
        r"CUDA_IMAGE=(nvidia/cuda:[\w.-]*runtime[\w.-]*|pytorch/pytorch:[\w.-]*cuda[\w.-]*)", base
    )
    assert [a for k, a in instructions if k == "FROM"] == ["${CUDA_IMAGE}"]
    assert ("RUN", f"pip install {_makefile_var('TORCH_SPEC')}") in instructions
    assert any(k == "ENV" and a.startswith("TANDEM_PROFILE=prod") for k, a in instructions)


def _dockerignore_patterns() -> list[re.Pattern]:
    patterns = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        assert not line.startswith("!"), "exceptions are not modelled by this test"
        regex = re.escape(line.strip("/")).replace(r"\*\*/", "(?:.*/)?").replace(r"\*", "[^/]*")
        patterns.append(re.compile(regex.replace(r"\?", "[^/]")))
    return patterns


def dockerignored(relative: str) -> bool:
    """Whether Docker leaves `relative` (or a folder above it) out of the build context."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(p.fullmatch(prefix) for p in _dockerignore_patterns() for prefix in prefixes)


def test_dockerignore_keeps_local_state_out_and_what_the_images_copy_in():
    for path in (".venv/bin/python", ".git/HEAD", "x.gguf", "models/tiny/model.gguf", "a/model.safetensors",
                 "gateway/__pycache__/app.cpython-311.pyc", ".pytest_cache/v", ".ruff_cache/x"):  # fmt: skip
        assert dockerignored(path), path
    for dockerfile in ("Dockerfile", "Dockerfile.cuda"):
        for keyword, arguments in dockerfile_instructions(ROOT / dockerfile):
            if keyword != "COPY" or arguments.startswith("--from"):
                continue
            for source in arguments.split()[:-1]:
                path = ROOT / source
                assert path.exists(), f"{dockerfile}: COPY {source}: no such file"
                # the code an image needs must get in; local state under a copied folder may stay out
                files = [path] if path.is_file() else [f for f in path.rglob("*.py") if f.is_file()]
                for file in files:
                    relative = file.relative_to(ROOT).as_posix()
                    if "__pycache__" not in relative:
                        assert not dockerignored(relative), (
                            f"{dockerfile} copies {relative}, .dockerignore drops it"
                        )
