"""The direct GGUF reader against the gguf package's GGUFReader (many times slower on a vocabulary)."""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest

from backends.paged.gguf_file import GGUFFile, GGUFFormatError, read_gguf_metadata
from tests import real_assets


def _reader_metadata(reader: gguf.GGUFReader) -> dict:
    return {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}


@pytest.mark.parametrize("source", ["tiny", "llama-spm"])
def test_the_header_is_what_gguf_reader_reads(source: str, tiny_llama):
    path = tiny_llama.gguf_path if source == "tiny" else real_assets.vocab_path(source)
    reader = gguf.GGUFReader(path)
    file = GGUFFile(path)
    expected = _reader_metadata(reader)
    assert file.fields.keys() == expected.keys()
    for key, value in expected.items():
        got = file.fields[key]
        assert got == pytest.approx(value) if isinstance(value, float) else got == value, key
    directory = [
        (t.name, tuple(int(d) for d in t.shape), int(t.tensor_type), int(t.data_offset))
        for t in reader.tensors
    ]
    assert [(t.name, t.shape, int(t.type), t.offset) for t in file.tensors] == directory
    for ours, theirs in zip(file.tensors, reader.tensors, strict=True):
        assert ours.data.tobytes() == theirs.data.tobytes(), ours.name


def test_prefixes_keep_only_those_keys(tiny_llama):
    metadata = read_gguf_metadata(tiny_llama.gguf_path, prefixes=("tokenizer.ggml.",))
    assert metadata and all(key.startswith("tokenizer.ggml.") for key in metadata)
    assert metadata["tokenizer.ggml.model"] == "gpt2"


def test_a_truncated_file_is_refused(tiny_llama, tmp_path: Path):
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(tiny_llama.gguf_path.read_bytes()[:2000])
    with pytest.raises(
        GGUFFormatError, match=r"cut\.gguf: truncated or malformed GGUF file \(its header ends early\)"
    ):
        read_gguf_metadata(truncated)


def test_tensor_data_past_the_end_is_refused(tiny_llama, tmp_path: Path):
    data = tiny_llama.gguf_path.read_bytes()
    cut = tmp_path / "short.gguf"
    cut.write_bytes(data[: len(data) - 4096])  # the header is whole, the last tensor is not
    assert read_gguf_metadata(cut)["general.architecture"] == "llama"
    with pytest.raises(
        GGUFFormatError, match=r"short\.gguf: truncated or malformed GGUF file \(buffer is smaller"
    ):
        GGUFFile(cut)
