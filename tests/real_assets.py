"""Real tokenizer vocabularies and chat templates, from the llama-cpp-python sdist in tandem's cache.

The sdist (the same one `make install` builds llama.cpp from) vendors llama.cpp's test assets: vocab-only
GGUFs of real tokenizers with the token ids their original tokenizers produce, and real chat templates.
They are fetched once with pip and extracted under ~/.cache/tandem/sdist; none of them is committed.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

VERSION = "0.3.36"
SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
CACHE = Path.home() / ".cache" / "tandem" / "sdist"
ARCHIVE = CACHE / f"llama_cpp_python-{VERSION}.tar.gz"
ROOT = CACHE / f"llama_cpp_python-{VERSION}"
# llama.cpp's test-tokenizer-0 separates the cases of a .inp/.out pair with this line.
CASE_SEPARATOR = "\n__ggml_vocab_test__\n"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _download() -> None:
    """pip fetches into a fresh directory first, so a concurrent reader never sees a partial archive."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE, prefix=".download-") as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"llama-cpp-python=={VERSION}",
                "-d",
                tmp,
            ],
            check=True,
        )
        fetched = Path(tmp) / ARCHIVE.name
        if _sha256(fetched) != SHA256:
            raise RuntimeError(f"{fetched.name} from the registry does not match its pinned sha256 {SHA256}")
        fetched.replace(ARCHIVE)


def sdist_dir() -> Path:
    """The extracted sdist, downloading and extracting it on first use."""
    if ROOT.is_dir():
        return ROOT
    if not ARCHIVE.exists():
        _download()
    elif _sha256(ARCHIVE) != SHA256:
        raise RuntimeError(f"{ARCHIVE} does not match its pinned sha256 {SHA256}: delete it to fetch again")
    tmp = Path(tempfile.mkdtemp(dir=CACHE, prefix=".extract-"))
    try:
        with tarfile.open(ARCHIVE) as tar:
            tar.extractall(tmp, filter="data")
        try:
            (tmp / ROOT.name).rename(ROOT)
        except OSError:  # another process extracted it first
            if not ROOT.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ROOT


def vocab_dir() -> Path:
    """Vocab-only GGUFs `ggml-vocab-<name>.gguf`, most with `.gguf.inp`/`.gguf.out` test cases."""
    return sdist_dir() / "vendor" / "llama.cpp" / "models"


def templates_dir() -> Path:
    """Real models' chat templates, one `.jinja` file each."""
    return vocab_dir() / "templates"


def vocab_path(name: str) -> Path:
    return vocab_dir() / f"ggml-vocab-{name}.gguf"


def vocab_only_llama(path: Path):
    """The file's vocabulary in llama.cpp (no weights), built as tandem builds every Llama: verbose, with
    llama.cpp's logs routed to logging (verbose=False swaps fds 1 and 2 under other threads)."""
    import llama_cpp

    from backends.llamacpp.native_log import route_native_logs

    route_native_logs()
    # a named chat format skips llama-cpp-python's guess, which prints the whole template when verbose
    return llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=True, chat_format="chatml")


@dataclass(frozen=True, slots=True)
class TokenizerCase:
    text: str
    ids: tuple[int, ...]


def tokenizer_cases(name: str) -> list[TokenizerCase]:
    """The vocabulary's texts and the ids its original tokenizer gave them, read as test-tokenizer-0 does.

    The .inp holds the texts, each followed by a separator line (the last one may lack it); the .out holds
    one line of space-separated ids per text.
    """
    gguf = vocab_path(name)
    raw = Path(f"{gguf}.inp").read_text(encoding="utf-8")
    texts = raw.removesuffix(CASE_SEPARATOR).split(CASE_SEPARATOR)
    outs = Path(f"{gguf}.out").read_text(encoding="utf-8").splitlines()
    if len(texts) != len(outs):
        raise ValueError(f"{gguf.name}: {len(texts)} texts but {len(outs)} id lists")
    return [
        TokenizerCase(text, tuple(int(t) for t in out.split())) for text, out in zip(texts, outs, strict=True)
    ]
