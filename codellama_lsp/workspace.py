"""The repository around the current file: where snippets from other files come from.

Three sources, as the peers use (Tabby: declarations and recent files; llama.vim: chunks
of the files visited; Continue: several snippet sources):

* the other open documents of the same language, cut into chunks;
* the ranges the user edited recently (in any open document, the current one included);
* the workspace files the current document imports (``completion.imports``).

Work per request is bounded by what changed: a document's chunks are cut again only when
its version changed since they were cut, its imports are resolved again only when its
import lines changed, and an imported file is read again only when it was saved in the
editor or its size or modification time changed. Nothing walks the workspace. Files too
big, binary or unreadable are skipped, and the reason is logged once per file.

An imported file is checked when it is read, not when it was found: it may have been
replaced since by a FIFO (reading it would wait for a writer), a link to ``/dev/zero``
(endless) or a huge file. Each read opens it without waiting, and reads it only if the
opened file is a regular one within ``MAX_FILE_BYTES`` (``files.read_regular``). The
reads run on a worker thread, not the event loop: a request waits at most
``READ_WAIT_S`` for them, then goes on with what was read before, so a slow disk or
network file system delays one suggestion's context, never the server.
"""

from __future__ import annotations

import logging
from collections import deque
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Mapping
from urllib.parse import unquote, urlparse

from codellama_lsp import files
from codellama_lsp.completion import imports
from codellama_lsp.completion.snippets import EDIT_RADIUS, Snippet, around, chunks, outline
from codellama_lsp.completion.syntax import language_of
from codellama_lsp.documents import Document, split_lines

log = logging.getLogger("codellama_lsp")

MAX_FILE_BYTES = 1_000_000  # bigger files are generated or data: not worth their tokens, slow to chunk
MAX_EDITS = 16  # recent edit locations remembered, newest last
BINARY_PROBE = 8192  # bytes checked for a NUL, as git does to call a file binary
READ_WAIT_S = 0.25  # the longest a request waits for imported files being read

# One thread reads imported files for every workspace: reads wait on each other, never on the event loop.
_reader = futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="codellama-workspace-read")


def uri_path(uri: str) -> Path | None:
    """The local path of a file: URI, else None."""
    parsed = urlparse(uri)
    return Path(unquote(parsed.path)) if parsed.scheme == "file" else None


@dataclass
class _Imports:
    key: tuple[str, ...]
    files: list[Path]


@dataclass(frozen=True)
class _ImportLines:
    version: int | None
    spans: tuple[tuple[int, int], ...]  # each import statement's first and last line
    lines: tuple[str, ...]  # the ones that may name a workspace file, each joined into one line


@dataclass
class _File:
    stamp: tuple[int, int] | None  # (size, mtime_ns) of what was read (None: the file could not be looked at)
    snippets: list[Snippet]


@dataclass
class Workspace:
    root: Path | None = None
    _chunks: dict[str, tuple[int | None, list[Snippet]]] = field(default_factory=dict)  # uri -> (version, chunks)
    _edits: deque[tuple[str, int]] = field(default_factory=lambda: deque(maxlen=MAX_EDITS))
    _imports: dict[str, _Imports] = field(default_factory=dict)
    _import_lines: dict[str, _ImportLines] = field(default_factory=dict)
    _files: dict[Path, _File] = field(default_factory=dict)
    _reading: dict[Path, futures.Future[_File]] = field(default_factory=dict)  # reads under way on ``_reader``
    _skipped: set[Path | str] = field(default_factory=set)

    @property
    def name(self) -> str:
        return self.root.name if self.root is not None else ""

    def relative(self, uri: str) -> str:
        """``uri``'s path relative to the workspace root (POSIX), else its file name."""
        path = uri_path(uri)
        if path is None:
            return uri.rsplit("/", 1)[-1]
        return self._relative_path(path)

    def _relative_path(self, path: Path) -> str:
        if self.root is not None:
            try:
                return path.relative_to(self.root).as_posix()
            except ValueError:
                pass
        return path.name

    # -- what the editor tells us -----------------------------------------------------------------------
    def edited(self, uri: str, line: int) -> None:
        """An edit at ``line`` of ``uri``: the newest recent edit, merged with the last one when near it."""
        if self._edits and self._edits[-1][0] == uri and abs(self._edits[-1][1] - line) <= EDIT_RADIUS:
            self._edits.pop()
        self._edits.append((uri, line))

    def saved(self, uri: str) -> None:
        """A file written by the editor: its cached copy as an imported file is stale."""
        path = uri_path(uri)
        if path is not None:
            self._files.pop(path, None)

    def forget(self, uri: str) -> None:
        self._chunks.pop(uri, None)
        self._imports.pop(uri, None)
        self._import_lines.pop(uri, None)
        self._edits = deque((e for e in self._edits if e[0] != uri), maxlen=MAX_EDITS)

    # -- candidates for one request ---------------------------------------------------------------------
    def candidates(self, doc: Document, window: tuple[int, int], documents: Mapping[str, Document]) -> list[Snippet]:
        """Snippets for a completion in ``doc`` whose local window spans lines ``window`` (start, end)."""
        language = language_of(doc.language_id, doc.uri)
        out: list[Snippet] = []
        for uri, other in documents.items():
            if uri != doc.uri and language_of(other.language_id, other.uri) == language:
                out += self._document_chunks(other)
        for uri, line in self._edits:
            other = documents.get(uri)
            if other is None or (uri == doc.uri and window[0] - EDIT_RADIUS <= line <= window[1] + EDIT_RADIUS):
                continue  # closed since, or inside the window the prompt already has
            s = around(self.relative(uri), other.lines, min(line, len(other.lines) - 1))
            if s is not None:
                out.append(s)
        open_paths = {uri_path(u) for u in documents}
        return out + self._imported_chunks([p for p in self._imported(doc, language) if p not in open_paths])

    def _document_chunks(self, doc: Document) -> list[Snippet]:
        cached = self._chunks.get(doc.uri)
        if cached is not None and cached[0] == doc.version:
            return cached[1]
        size = sum(len(x) for x in doc.lines)
        if size > MAX_FILE_BYTES:
            self._skip(doc.uri, f"open document of {size} characters (more than {MAX_FILE_BYTES})")
            found: list[Snippet] = []
        else:
            path = self.relative(doc.uri)
            found = outline(path, doc.lines) + chunks(path, doc.lines)
        self._chunks[doc.uri] = (doc.version, found)
        return found

    def import_lines(self, doc: Document) -> tuple[str, ...]:
        """``doc``'s import lines that may name workspace files: one scan of its lines per document version."""
        return self._scan(doc).lines

    def import_spans(self, doc: Document) -> tuple[tuple[int, int], ...]:
        """Where ``doc``'s import statements are (first and last line each), from the same scan."""
        return self._scan(doc).spans

    def _scan(self, doc: Document) -> _ImportLines:
        cached = self._import_lines.get(doc.uri)
        if cached is None or cached.version != doc.version:
            language = language_of(doc.language_id, doc.uri)
            spans = imports.import_spans(doc.lines, language)
            cached = self._import_lines[doc.uri] = _ImportLines(doc.version, spans,
                                                                imports.import_lines(doc.lines, language, spans))
        return cached

    def _imported(self, doc: Document, language: str) -> list[Path]:
        """The workspace files ``doc`` imports, resolved again only when its import lines changed."""
        if self.root is None:
            return []
        key = self.import_lines(doc)
        cached = self._imports.get(doc.uri)
        if cached is not None and cached.key == key:
            return cached.files
        here = uri_path(doc.uri)
        files: list[Path] = []
        if here is not None and key:
            rel = PurePosixPath(self._relative_path(here))
            for tries in imports.candidates(rel, key, language):
                found = next((self.root / p for p in tries if (self.root / p).is_file()), None)
                if found is not None and found != here and found not in files:
                    files.append(found)
        self._imports[doc.uri] = _Imports(key, files)
        return files

    def _imported_chunks(self, paths: list[Path]) -> list[Snippet]:
        """The chunks of imported files: each checked (and read again if it changed) on the reader thread, waited
        for at most ``READ_WAIT_S`` in all; a file whose read is not done yet gives what it gave before."""
        pending = {path: self._refresh(path) for path in paths}
        futures.wait(pending.values(), timeout=READ_WAIT_S)
        out: list[Snippet] = []
        for path, read in pending.items():
            if read.done():
                self._reading.pop(path, None)
                self._files[path] = read.result()
            cached = self._files.get(path)
            out += cached.snippets if cached is not None else []
        return out

    def _refresh(self, path: Path) -> futures.Future[_File]:
        """The read of ``path`` under way, else a new one."""
        read = self._reading.get(path)
        if read is None:
            read = self._reading[path] = _reader.submit(self._file, path, self._files.get(path))
        return read

    def _file(self, path: Path, cached: _File | None) -> _File:
        """On the reader thread: ``cached`` while the file's size and modification time are unchanged, else a
        fresh read."""
        try:
            st = path.stat()
        except OSError as exc:
            self._skip(path, f"unreadable ({exc.strerror or exc})")
            return _File(None, [])
        if cached is not None and cached.stamp == (st.st_size, st.st_mtime_ns):
            return cached
        try:
            data, st = files.read_regular(path, MAX_FILE_BYTES)
        except files.Refused as exc:
            self._skip(path, str(exc))
            return _File((st.st_size, st.st_mtime_ns), [])
        except OSError as exc:
            self._skip(path, f"unreadable ({exc.strerror or exc})")
            return _File(None, [])
        return _File((st.st_size, st.st_mtime_ns), self._snippets(path, data))

    def _snippets(self, path: Path, data: bytes) -> list[Snippet]:
        if b"\0" in data[:BINARY_PROBE]:
            self._skip(path, "binary (a NUL byte in its first 8 KiB)")
            return []
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            self._skip(path, "binary (not UTF-8)")
            return []
        rel, lines = self._relative_path(path), split_lines(text)
        return outline(rel, lines, "imported") + chunks(rel, lines, "imported")

    def _skip(self, what: Path | str, reason: str) -> None:
        if what not in self._skipped:
            self._skipped.add(what)
            log.info("repository context: skipping %s: %s", what, reason)

