"""A GGUF file read directly: its key/value metadata and its tensor table, the tensors memory-mapped.

gguf.GGUFReader builds a numpy view per array element, which takes seconds on SmolLM2's 49k-token vocabulary
and tens of seconds on a 128k one with 280k merges. Here numeric arrays are one np.frombuffer each and string
arrays one tight loop, so a header costs milliseconds; tensor bytes are touched only when dequantized.
Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md (little-endian, versions 2 and 3).
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

GGUFValues = Mapping[str, Any]

_MAGIC = b"GGUF"
_DEFAULT_ALIGNMENT = 32
# GGUF value type -> struct format (scalars) / numpy dtype (arrays); 8 = string, 9 = array.
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}  # fmt: skip
_STRING, _ARRAY = 8, 9
_LENGTH = struct.Struct("<Q")


class GGUFFormatError(ValueError):
    """Not a GGUF file this reader understands (wrong magic, version, byte order, truncated)."""


class _Cursor:
    def __init__(self, buf: mmap.mmap, path: Path) -> None:
        self._buf, self._path, self.pos = buf, path, 0

    def truncated(self) -> GGUFFormatError:
        return GGUFFormatError(f"{self._path.name}: truncated or malformed GGUF file (its header ends early)")

    def unpack(self, fmt: str) -> Any:
        try:
            (value,) = struct.unpack_from(fmt, self._buf, self.pos)
        except struct.error as exc:
            raise self.truncated() from exc
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        size = self.unpack("<Q")
        end = self.pos + size
        if end > len(self._buf):
            raise self.truncated()
        raw, self.pos = self._buf[self.pos : end], end
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise GGUFFormatError(
                f"{self._path.name}: a metadata string is not UTF-8 ({raw[:40]!r})"
            ) from exc

    def value(self, kind: int, keep: bool) -> Any:
        if kind == _STRING:
            if keep:
                return self.string()
            size = self.unpack("<Q")  # moves pos past the length first: not `pos += unpack()`
            self.pos += size
            return None
        if kind == _ARRAY:
            item, count = self.unpack("<I"), self.unpack("<Q")
            if item in _SCALARS:
                dtype = np.dtype(_SCALARS[item])
                if self.pos + dtype.itemsize * count > len(self._buf):
                    raise self.truncated()
                values = np.frombuffer(self._buf, dtype, count, self.pos).tolist() if keep else None
                self.pos += dtype.itemsize * count
                return values
            if item == _STRING:
                return self._strings(count, keep)
            items = [self.value(item, keep) for _ in range(count)]
            return items if keep else None
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])
        raise GGUFFormatError(f"{self._path.name}: unknown GGUF value type {kind}")

    def _strings(self, count: int, keep: bool) -> list[str] | None:
        """A vocabulary's hundreds of thousands of strings: the one loop that needs to be quick."""
        buf, pos, length = self._buf, self.pos, _LENGTH.unpack_from
        out: list[str] = []
        try:
            for _ in range(count):
                (size,) = length(buf, pos)
                pos += 8
                if keep:
                    out.append(buf[pos : pos + size].decode("utf-8"))
                pos += size
        except struct.error as exc:
            raise self.truncated() from exc
        except UnicodeDecodeError as exc:
            raise GGUFFormatError(f"{self._path.name}: a metadata string is not UTF-8") from exc
        if pos > len(buf):
            raise self.truncated()
        self.pos = pos
        return out if keep else None


@dataclass(frozen=True, slots=True)
class _TensorEntry:
    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int  # of its data, from the start of the file


def _read_header(
    buf: mmap.mmap, path: Path, prefixes: tuple[str, ...], with_tensors: bool
) -> tuple[dict[str, Any], list[_TensorEntry]]:
    if buf[:4] != _MAGIC:
        raise GGUFFormatError(f"{path.name} is not a GGUF file")
    cursor = _Cursor(buf, path)
    cursor.pos = 4
    version = cursor.unpack("<I")
    if version not in (2, 3):
        raise GGUFFormatError(f"{path.name}: GGUF version {version} (big-endian?) is not supported (2, 3)")
    n_tensors, count = cursor.unpack("<Q"), cursor.unpack("<Q")
    values: dict[str, Any] = {}
    alignment = _DEFAULT_ALIGNMENT
    for _ in range(count):
        key = cursor.string()
        wanted = key.startswith(prefixes)
        value = cursor.value(cursor.unpack("<I"), keep=wanted or key == "general.alignment")
        if key == "general.alignment":
            alignment = int(value)
        if wanted:
            values[key] = value
    if not with_tensors:
        return values, []
    directory = []
    for _ in range(n_tensors):
        name = cursor.string()
        shape = tuple(cursor.unpack("<Q") for _ in range(cursor.unpack("<I")))
        directory.append((name, shape, cursor.unpack("<I"), cursor.unpack("<Q")))
    start = -(-cursor.pos // alignment) * alignment  # the data section starts aligned
    return values, [_TensorEntry(n, shape, kind, start + offset) for n, shape, kind, offset in directory]


def read_gguf_metadata(path: Path, prefixes: tuple[str, ...] = ("",)) -> dict[str, Any]:
    """The metadata whose keys start with one of `prefixes` (the others are skipped, not decoded)."""
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        return _read_header(buf, path, prefixes, with_tensors=False)[0]


@dataclass(frozen=True, slots=True)
class GGUFTensor:
    name: str
    shape: tuple[int, ...]  # GGUF order: the fastest-varying dimension (a row's length) first
    type: GGMLQuantizationType
    offset: int  # of its data, from the start of the file
    data: np.ndarray  # uint8 bytes, [rows, bytes per row], a view of the memory map

    @property
    def rows_shape(self) -> tuple[int, ...]:
        """Hugging Face / PyTorch order: [..., rows, columns]."""
        return tuple(reversed(self.shape))


class GGUFFile:
    """The whole header (`fields`) and every tensor as a view of the file's memory map (kept open)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with path.open("rb") as file:
            self._map = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        self.fields, entries = _read_header(self._map, path, ("",), with_tensors=True)
        try:
            self.tensors = [self._tensor(entry) for entry in entries]
        except (KeyError, ValueError) as exc:  # an unknown tensor type, or data past the end of the file
            raise GGUFFormatError(f"{path.name}: truncated or malformed GGUF file ({exc})") from None

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)

    def _tensor(self, entry: _TensorEntry) -> GGUFTensor:
        kind = GGMLQuantizationType(entry.ggml_type)
        block, block_bytes = GGML_QUANT_SIZES[kind]
        row_bytes = entry.shape[0] // block * block_bytes
        rows = int(np.prod(entry.shape[1:], dtype=np.int64)) if len(entry.shape) > 1 else 1
        data = np.frombuffer(self._map, dtype=np.uint8, count=rows * row_bytes, offset=entry.offset)
        return GGUFTensor(entry.name, entry.shape, kind, entry.offset, data.reshape(rows, row_bytes))
