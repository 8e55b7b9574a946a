"""Ollama's Modelfile: FROM, PARAMETER, SYSTEM, TEMPLATE, MESSAGE, ADAPTER, LICENSE."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from backends.base import ChatMessage

# Ollama PARAMETER names tandem honours, and the ModelParameters field each one sets
PARAMETERS = {
    "temperature": ("temperature", float),
    "top_p": ("top_p", float),
    "top_k": ("top_k", int),
    "min_p": ("min_p", float),
    "num_predict": ("max_tokens", int),
    "repeat_penalty": ("repetition_penalty", float),
    "presence_penalty": ("presence_penalty", float),
    "frequency_penalty": ("frequency_penalty", float),
    "seed": ("seed", int),
    "stop": ("stop", str),
    "num_ctx": ("context_length", int),
}
# Names Ollama accepts that tune only its own runtime: accepted, reported as ignored.
RUNTIME_ONLY = frozenset(
    {"num_keep", "repeat_last_n", "typical_p", "tfs_z", "mirostat", "mirostat_tau", "mirostat_eta",
     "penalize_newline", "numa", "num_batch", "num_gpu", "main_gpu", "low_vram", "use_mmap", "use_mlock",
     "num_thread"}
)  # fmt: skip
ROLES = ("system", "user", "assistant")
_INSTRUCTION = re.compile(r"^\s*([A-Za-z]+)\s+(.*)$", re.DOTALL)


class ModelfileError(ValueError):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"Modelfile line {line}: {message}")
        self.line = line


@dataclass
class Modelfile:
    base: str  # FROM: a GGUF file, a Hugging Face checkpoint directory, or another model's name
    system: str | None = None
    template: str | None = None
    parameters: dict[str, int | float | str | list[str]] = field(
        default_factory=dict
    )  # ModelParameters names
    context_length: int | None = None
    messages: list[ChatMessage] = field(default_factory=list)
    adapters: list[str] = field(default_factory=list)
    license: list[str] = field(default_factory=list)
    ignored_parameters: list[str] = field(default_factory=list)


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Joins triple-quoted values that span lines; drops comments and blank lines."""
    lines, pending, start = [], None, 0
    for number, line in enumerate(text.splitlines(), start=1):
        if pending is not None:
            pending += "\n" + line
            if pending.count('"""') % 2 == 0:
                lines.append((start, pending))
                pending = None
            continue
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line.count('"""') % 2 == 1:
            pending, start = line, number
            continue
        lines.append((number, line))
    if pending is not None:
        raise ModelfileError(start, 'unterminated """ block')
    return lines


def _unquote(value: str) -> str:
    value = value.strip()
    if value.startswith('"""') and value.endswith('"""') and len(value) >= 6:
        return value[3:-3].strip("\n")
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def set_parameter(modelfile: Modelfile, name: str, raw: str, line: int = 0) -> None:
    name = name.lower()
    if name in RUNTIME_ONLY:
        modelfile.ignored_parameters.append(name)
        return
    if name not in PARAMETERS:
        raise ModelfileError(line, f"unknown parameter {name!r}")
    target, kind = PARAMETERS[name]
    try:
        value = kind(_unquote(raw))
    except ValueError:
        raise ModelfileError(line, f"parameter {name} needs a {kind.__name__}, not {raw!r}") from None
    if target == "context_length":
        modelfile.context_length = int(value)
    elif target == "stop":
        modelfile.parameters.setdefault("stop", []).append(str(value))  # type: ignore[union-attr]
    else:
        modelfile.parameters[target] = value


def parse_modelfile(text: str) -> Modelfile:
    base: str | None = None
    result = Modelfile(base="")
    for number, line in _logical_lines(text):
        match = _INSTRUCTION.match(line)
        if match is None:
            raise ModelfileError(number, f"expected INSTRUCTION value, got {line.strip()!r}")
        instruction, value = match.group(1).upper(), match.group(2).strip()
        if instruction == "FROM":
            base = _unquote(value)
        elif instruction == "SYSTEM":
            result.system = _unquote(value)
        elif instruction == "TEMPLATE":
            result.template = _unquote(value)
        elif instruction == "PARAMETER":
            name, _, raw = value.partition(" ")
            if not raw.strip():
                raise ModelfileError(number, "PARAMETER needs a name and a value")
            set_parameter(result, name, raw.strip(), number)
        elif instruction == "MESSAGE":
            role, _, content = value.partition(" ")
            if role.lower() not in ROLES:
                raise ModelfileError(number, f"MESSAGE role must be one of {', '.join(ROLES)}, not {role!r}")
            result.messages.append(ChatMessage(role=role.lower(), content=_unquote(content)))
        elif instruction == "ADAPTER":
            result.adapters.append(_unquote(value))
        elif instruction == "LICENSE":
            result.license.append(_unquote(value))
        else:
            raise ModelfileError(number, f"unknown instruction {instruction}")
    if not base:
        raise ModelfileError(
            1, "a Modelfile needs FROM (a GGUF file, a checkpoint directory or a model name)"
        )
    result.base = base
    return result


def render_modelfile(
    base: str,
    system: str | None,
    parameters: dict,
    messages: list[ChatMessage],
    adapters: list[tuple[str, float]] | None = None,
) -> str:
    """The Modelfile text that would recreate a model (for /api/show); `adapters`: (path, scale) of its
    LoRA adapter (a scale other than 1 has no Modelfile syntax: it is noted in a comment)."""
    names = {target: name for name, (target, _) in PARAMETERS.items()}
    lines = [f"FROM {base}"]
    for path, scale in adapters or []:
        if scale != 1.0:
            lines.append(f"# the adapter below runs at scale {scale:g} (set in tandem's config)")
        lines.append(f"ADAPTER {path}")
    if system is not None:
        lines.append(f'SYSTEM """{system}"""')
    for key, value in parameters.items():
        for item in value if isinstance(value, list) else [value]:
            lines.append(f"PARAMETER {names.get(key, key)} {json.dumps(item) if key == 'stop' else item}")
    lines += [f'MESSAGE {m.role} """{m.content}"""' for m in messages]
    return "\n".join(lines) + "\n"
