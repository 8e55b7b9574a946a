"""A GGUF file's header, read directly: its key/value metadata and its tensors' directory.

gguf.GGUFReader builds a numpy view per array element, which takes tens of seconds on a 128k-token
vocabulary with 280k merges; this reads the same section in about a second.
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

GGUFValues = Mapping[str, Any]

_STRING, _ARRAY = 8, 9
_LENGTH = struct.Struct("<Q")
_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}


class GGUFFormatError(ValueError):
    """The file is not a GGUF file this reader understands."""


class _Cursor:
    def __init__(self, buf: mmap.mmap, path: Path) -> None:
        self._buf, self._path, self.pos = buf, path, 0

    def unpack(self, fmt: str) -> Any:
        try:
            (value,) = struct.unpack_from(fmt, self._buf, self.pos)
        except struct.error as exc:
            raise GGUFFormatError(f"{self._path.name}: truncated GGUF metadata") from exc
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        size = self.unpack("<Q")
        end = self.pos + size
        if end > len(self._buf):
            raise GGUFFormatError(f"{self._path.name}: truncated GGUF metadata")
        raw, self.pos = self._buf[self.pos : end], end
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise GGUFFormatError(
                f"{self._path.name}: a metadata string is not UTF-8 ({raw[:40]!r})"
            ) from exc

    def skip_string(self) -> None:
        size = self.unpack("<Q")  # moves pos past the length first
        self.pos += size

    def value(self, kind: int, keep: bool) -> Any:
        if kind == _STRING:
            if keep:
                return self.string()
            self.skip_string()
            return None
        if kind == _ARRAY:
            item, count = self.unpack("<I"), self.unpack("<Q")
            if item in _SCALARS:
                dtype = np.dtype(_SCALARS[item])
                size = dtype.itemsize * count
                values = np.frombuffer(self._buf, dtype, count, self.pos).tolist() if keep else None
                self.pos += size
                return values
            if item == _STRING:
                return self._strings(count, keep)
            return [self.value(item, keep) for _ in range(count)] if keep else self._skip_items(item, count)
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
            raise GGUFFormatError(f"{self._path.name}: truncated GGUF metadata") from exc
        except UnicodeDecodeError as exc:
            raise GGUFFormatError(f"{self._path.name}: a metadata string is not UTF-8") from exc
        if pos > len(buf):
            raise GGUFFormatError(f"{self._path.name}: truncated GGUF metadata")
        self.pos = pos
        return out if keep else None

    def _skip_items(self, item: int, count: int) -> None:
        for _ in range(count):
            self.value(item, keep=False)


@dataclass(frozen=True, slots=True)
class GGUFTensorInfo:
    name: str
    shape: tuple[int, ...]  # as GGUF lists it: the fastest-varying dimension (ne0) first
    ggml_type: int  # gguf.GGMLQuantizationType
    offset: int  # of its data, from the start of the file


@dataclass(frozen=True, slots=True)
class GGUFHeader:
    metadata: dict[str, Any]
    tensors: tuple[GGUFTensorInfo, ...]


def read_gguf_metadata(path: Path, prefixes: tuple[str, ...] = ("",)) -> dict[str, Any]:
    """The metadata whose keys start with one of `prefixes` (the others are skipped, not decoded)."""
    return _read(path, prefixes, with_tensors=False).metadata


def read_gguf_header(path: Path, prefixes: tuple[str, ...] = ("",)) -> GGUFHeader:
    """The metadata (as read_gguf_metadata) and where each tensor's data lies in the file."""
    return _read(path, prefixes, with_tensors=True)


def _read(path: Path, prefixes: tuple[str, ...], with_tensors: bool) -> GGUFHeader:
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != b"GGUF":
            raise GGUFFormatError(f"{path.name} is not a GGUF file")
        cursor = _Cursor(buf, path)
        cursor.pos = 4
        version = cursor.unpack("<I")
        if version not in (2, 3):
            raise GGUFFormatError(f"{path.name}: GGUF version {version} is not supported (2, 3)")
        n_tensors, count = cursor.unpack("<Q"), cursor.unpack("<Q")
        values: dict[str, Any] = {}
        alignment = 32
        for _ in range(count):
            key = cursor.string()
            value = cursor.value(
                cursor.unpack("<I"), keep=key.startswith(prefixes) or key == "general.alignment"
            )
            if key == "general.alignment":
                alignment = int(value)
            if key.startswith(prefixes):
                values[key] = value
        if not with_tensors:
            return GGUFHeader(values, ())
        directory = []
        for _ in range(n_tensors):
            name = cursor.string()
            shape = tuple(cursor.unpack("<Q") for _ in range(cursor.unpack("<I")))
            directory.append((name, shape, cursor.unpack("<I"), cursor.unpack("<Q")))
        start = -(-cursor.pos // alignment) * alignment  # the data section starts aligned
        tensors = tuple(
            GGUFTensorInfo(n, shape, kind, start + offset) for n, shape, kind, offset in directory
        )
        return GGUFHeader(values, tensors)
