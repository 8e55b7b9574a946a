"""A fast read-only view of a GGUF file: the key/value metadata and the tensor table, tensors memory-mapped.

gguf.GGUFReader builds a numpy view per array element, which takes seconds on a 49k-token vocabulary
(SmolLM2: ~5 s of a 6 s load). Here numeric arrays are one np.frombuffer each and string arrays one
Python loop, so reading the header costs milliseconds; tensor bytes are touched only when dequantized.
Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md (version 2 and 3, little-endian).
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

_MAGIC = b"GGUF"
_DEFAULT_ALIGNMENT = 32
# GGUF value type -> struct format (scalars) / numpy dtype (arrays); 8 = string, 9 = array.
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}  # fmt: skip
_STRING, _ARRAY = 8, 9


class GGUFFormatError(ValueError):
    """Not a GGUF file this reader understands (wrong magic, version, byte order, truncated)."""


@dataclass(frozen=True, slots=True)
class GGUFTensor:
    name: str
    shape: tuple[int, ...]  # GGUF order: the fastest-varying dimension (a row's length) first
    type: GGMLQuantizationType
    data: np.ndarray  # uint8 bytes, [rows, bytes per row], a view of the memory map

    @property
    def rows_shape(self) -> tuple[int, ...]:
        """Hugging Face / PyTorch order: [..., rows, columns]."""
        return tuple(reversed(self.shape))


class GGUFFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        with path.open("rb") as file:
            self._map = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        self._pos = 0
        try:
            self.fields, self.tensors = self._parse()
        except (struct.error, IndexError, KeyError, ValueError) as exc:  # ValueError: UnicodeDecodeError,
            # an unknown tensor type, or tensor data past the end of the file
            raise GGUFFormatError(f"{path}: truncated or malformed GGUF file ({exc})") from None

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)

    # --- parsing ---------------------------------------------------------------------------------------
    def _read(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(fmt, self._map, self._pos)
        self._pos += struct.calcsize(fmt)
        return value

    def _string(self) -> str:
        length = self._read("<Q")
        start = self._pos
        self._pos += length
        return self._map[start : self._pos].decode("utf-8")

    def _value(self, kind: int) -> Any:
        if kind == _STRING:
            return self._string()
        if kind == _ARRAY:
            item, count = self._read("<I"), self._read("<Q")
            if item == _STRING:
                return [self._string() for _ in range(count)]
            if item == _ARRAY:
                return [self._value(_ARRAY) for _ in range(count)]
            dtype = np.dtype(_SCALARS[item])
            values = np.frombuffer(self._map, dtype=dtype, count=count, offset=self._pos)
            self._pos += count * dtype.itemsize
            return values.tolist()
        return self._read(_SCALARS[kind])

    def _parse(self) -> tuple[dict[str, Any], list[GGUFTensor]]:
        if self._map[:4] != _MAGIC:
            raise GGUFFormatError(f"{self.path} is not a GGUF file")
        self._pos = 4
        version = self._read("<I")
        if version not in (2, 3):
            raise GGUFFormatError(f"{self.path}: GGUF version {version} (big-endian?) is not supported")
        n_tensors, n_fields = self._read("<Q"), self._read("<Q")
        fields: dict[str, Any] = {}
        for _ in range(n_fields):
            key = self._string()
            fields[key] = self._value(self._read("<I"))
        infos = []
        for _ in range(n_tensors):
            name = self._string()
            dims = tuple(self._read("<Q") for _ in range(self._read("<I")))
            infos.append((name, dims, GGMLQuantizationType(self._read("<I")), self._read("<Q")))
        alignment = int(fields.get("general.alignment", _DEFAULT_ALIGNMENT))
        base = -(-self._pos // alignment) * alignment
        tensors = []
        for name, dims, kind, offset in infos:
            block, block_bytes = GGML_QUANT_SIZES[kind]
            row_bytes = dims[0] // block * block_bytes
            rows = int(np.prod(dims[1:], dtype=np.int64)) if len(dims) > 1 else 1
            data = np.frombuffer(self._map, dtype=np.uint8, count=rows * row_bytes, offset=base + offset)
            tensors.append(GGUFTensor(name, dims, kind, data.reshape(rows, row_bytes)))
        return fields, tensors
