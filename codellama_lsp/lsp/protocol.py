"""pygls' LanguageServerProtocol, hardened: every message a client can send gets a JSON-RPC 2.0 answer.

Kept apart from ``server.py`` so the JSON-RPC layer (what a client may send and what it
gets back) can be hardened without touching the handlers. What it adds to pygls:

* Only the top-level object of a frame is a message. pygls structures every nested
  object that has a ``"jsonrpc"`` key (its JSON object hook), so an argument that looks
  like a message was taken for one and the real request went unanswered.
* The envelope is checked before dispatch (JSON-RPC 2.0 section 5.1): a batch, a
  non-object, a wrong ``jsonrpc``, a non-string method or an id that is not an integer
  or a string get -32600 (Invalid Request), with ``"id": null`` when the id is unusable;
  an unparseable body gets -32700. A notification method sent with an id is answered
  -32600 and not applied; a request sent after ``shutdown`` gets -32600 too (pygls
  dropped both in silence). An unknown method gets -32601 without echoing more than
  ``MAX_ECHO`` characters of it.
* Params are checked against lsprotocol's types at the JSON level before cattrs sees
  them: lsprotocol's converter turns ``5`` into ``"5"`` or passes ``null`` through a
  ``Union`` unchecked, and the handlers then failed with a TypeError. A mismatch is
  -32602 naming the field (``params.textDocument.languageId``); for a notification,
  which has no answer, it is logged and reported with ``window/logMessage``.
* Output is strict JSON: a result with NaN or Infinity is replaced by an error. An
  internal error (-32603) carries a one-line message; its traceback stays in the log.
* Output that cannot be written (the client closed its end: a broken pipe) ends the
  session as the end of input does (``stop_serving``): nobody would read what the server
  goes on computing.
"""

from __future__ import annotations

import contextvars

import collections.abc
import enum
import logging
import typing
from typing import Any, Callable, Literal, Union

import attrs
import cattrs
from lsprotocol import types, validators
from pygls.exceptions import JsonRpcException
from pygls.protocol import JsonRPCRequestMessage, LanguageServerProtocol
from pygls.protocol.language_server import lsp_method

from codellama_lsp.lsp import framing
from codellama_lsp.lsp.framing import BrokenFrame, echo

log = logging.getLogger("codellama_lsp")

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
MAX_ERROR_MESSAGE = 500  # characters of an error message sent to the client

_NONE = type(None)
_INT32 = (-(2**31), 2**31 - 1)
_UINT32 = (0, 2**31 - 1)  # lsprotocol's uinteger validator: LSP's uinteger is 0..2^31-1


class InvalidParams(Exception):
    """Params that do not fit their method's type; the message names the field."""


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object" if isinstance(value, dict) else type(value).__name__


def _camel(name: str) -> str:
    """lsprotocol's JSON name for an attrs field (``text_document`` -> ``textDocument``, ``from_`` -> ``from``)."""
    parts = name.removesuffix("_").split("_")
    return parts[0] + "".join(p.title() for p in parts[1:])


def _describe(tp: Any) -> str:
    """What a type accepts, in JSON words."""
    origin = typing.get_origin(tp)
    if origin is Union:
        return " or ".join(dict.fromkeys(_describe(a) for a in typing.get_args(tp)))
    if origin is Literal:
        return " or ".join(echo(a, 40) for a in typing.get_args(tp))
    if tp is _NONE:
        return "null"
    if tp is bool:
        return "a boolean"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "a string" if issubclass(tp, str) else "an integer"
    if origin in (list, tuple, collections.abc.Sequence):
        return "an array"
    return "an object"


def check(value: Any, tp: Any, path: str) -> tuple[str, str] | None:
    """Whether parsed JSON ``value`` fits lsprotocol type ``tp``: None, or (the field's path, what is wrong).

    Only what the handlers rely on is checked: JSON types, required fields, enum value
    types and lsprotocol's integer ranges. Values typed ``LSPAny`` are any JSON.
    """
    if tp is Any or tp is object or tp is types.LSPObject:
        return None if tp is not types.LSPObject or isinstance(value, dict) else (path, "must be an object")
    origin = typing.get_origin(tp)
    if origin is Union:
        args = typing.get_args(tp)
        if any(a is Any for a in args):
            return None
        errors = []
        for a in args:
            error = check(value, a, path)
            if error is None:
                return None
            errors.append(error)
        # The member that fitted furthest, preferring a wrong field to a missing one: its error is the useful one.
        deepest = max(errors, key=lambda e: (e[0].count(".") + e[0].count("["), e[1] != "is missing"))
        if deepest[0] != path:  # a member that fitted up to one of its fields: that field is what is wrong
            return deepest
        return path, f"must be {_describe(tp)}, not {json_type(value)}"
    if origin is Literal:
        return None if value in typing.get_args(tp) else (path, f"must be {_describe(tp)}")
    if tp is _NONE:
        return None if value is None else (path, f"must be null, not {json_type(value)}")
    if tp is bool:
        return None if isinstance(value, bool) else (path, f"must be a boolean, not {json_type(value)}")
    if tp is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else \
            (path, f"must be an integer, not {json_type(value)}")
    if tp is float:
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else \
            (path, f"must be a number, not {json_type(value)}")
    if tp is str:
        return None if isinstance(value, str) else (path, f"must be a string, not {json_type(value)}")
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        want = str if issubclass(tp, str) else int
        if not isinstance(value, want) or isinstance(value, bool):
            return path, f"must be {_describe(tp)}, not {json_type(value)}"
        return None
    if origin in (list, tuple, collections.abc.Sequence):
        if not isinstance(value, list):
            return path, f"must be an array, not {json_type(value)}"
        args = typing.get_args(tp)
        if not args:
            return None
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                return path, f"must be an array of {len(args)}"
            pairs = zip(value, args)
        else:
            pairs = ((v, args[0]) for v in value)
        for i, (v, a) in enumerate(pairs):
            error = check(v, a, f"{path}[{i}]")
            if error is not None:
                return error
        return None
    if origin in (dict, collections.abc.Mapping):
        if not isinstance(value, dict):
            return path, f"must be an object, not {json_type(value)}"
        args = typing.get_args(tp)
        for k, v in value.items() if len(args) == 2 else ():
            error = check(v, args[1], f"{path}.{k}")
            if error is not None:
                return error
        return None
    if isinstance(tp, type) and attrs.has(tp):
        if not isinstance(value, dict):
            return path, f"must be an object, not {json_type(value)}"
        for f in attrs.fields(tp):
            name = _camel(f.name)
            if name not in value:
                if f.default is attrs.NOTHING:
                    return f"{path}.{name}", "is missing"
                continue
            error = check(value[name], f.type, f"{path}.{name}")
            if error is None and isinstance(value[name], int) and not isinstance(value[name], bool):
                bounds = {validators.uinteger_validator: _UINT32, validators.integer_validator: _INT32}.get(f.validator)
                if bounds is not None and not bounds[0] <= value[name] <= bounds[1]:
                    error = f"{path}.{name}", f"must be an integer in {bounds[0]}..{bounds[1]}"
            if error is not None:
                return error
        return None
    return None  # a type this check does not know: cattrs decides


def _is_request(message_type: Any) -> bool:
    return isinstance(message_type, type) and attrs.has(message_type) and "id" in attrs.fields_dict(message_type)


def _valid_id(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


# Our own notification: the client's cursor has rested at a place (a moment without a keystroke
# or a move; docs/server.md, "Warm-up"), so the server computes the suggestion there before it is
# asked for (CompletionService.warm).
CURSOR_REST = "codellama/cursorRest"


@attrs.define
class CursorRestNotification:
    """``codellama/cursorRest``: the params of a position request (a document and a position), no answer."""

    params: types.TextDocumentPositionParams
    method: str = CURSOR_REST
    jsonrpc: str = "2.0"


# The id of the request whose handler is running: what a command's task is cancelled by.
REQUEST_ID: contextvars.ContextVar[Any] = contextvars.ContextVar("codellama_request_id", default=None)


class DocumentsAndCancels(typing.Protocol):
    """What the protocol hands its server: the document notifications, and a request's cancellation."""

    def open_document(self, item: types.TextDocumentItem) -> None: ...
    def change_document(self, params: types.DidChangeTextDocumentParams) -> None: ...
    def close_document(self, uri: str) -> None: ...
    def cancel_request(self, msg_id: Any) -> None: ...


class CodeLlamaProtocol(LanguageServerProtocol):
    """pygls' protocol with our own document store and a JSON-RPC 2.0 answer to everything."""

    _server: DocumentsAndCancels  # type: ignore[assignment]
    # Set by the transport (``framing.serve``) while it serves: ends its read loop, from any thread.
    on_stop: Callable[[str], None] | None = None

    def stop_serving(self, reason: str) -> None:
        """End the session as if the client's input had ended: the process exits as it does then."""
        if self.on_stop is not None:
            self.on_stop(reason)

    def get_message_type(self, method: str) -> Any:
        return CursorRestNotification if method == CURSOR_REST else super().get_message_type(method)

    @lsp_method(types.TEXT_DOCUMENT_DID_OPEN)
    def lsp_text_document__did_open(self, params: types.DidOpenTextDocumentParams):
        self._server.open_document(params.text_document)
        yield from ()

    @lsp_method(types.TEXT_DOCUMENT_DID_CHANGE)
    def lsp_text_document__did_change(self, params: types.DidChangeTextDocumentParams):
        self._server.change_document(params)
        yield from ()

    @lsp_method(types.TEXT_DOCUMENT_DID_CLOSE)
    def lsp_text_document__did_close(self, params: types.DidCloseTextDocumentParams):
        self._server.close_document(params.text_document.uri)
        yield from ()

    # -- input --------------------------------------------------------------------------------------------
    def structure_message(self, data: dict[str, Any]) -> dict[str, Any]:
        """The identity: messages are structured in ``handle_json``, from the top-level object only.

        pygls passes this as ``json.loads``' object hook, which would structure every nested
        object with a ``"jsonrpc"`` key as a message of its own.
        """
        return data

    def handle_message(self, message: Any) -> None:
        """A plain parsed object (from pygls' own read loop, if it is ever used) goes the checked way."""
        if isinstance(message, (dict, list)) or not hasattr(message, "jsonrpc"):
            self.handle_json(message)
        else:
            super().handle_message(message)

    def handle_broken_frame(self, frame: BrokenFrame) -> None:
        """A frame the reader could not delimit (already logged): answer what can be answered."""
        if frame.body is None:
            return
        if frame.parse_error:
            self._reply_error(None, PARSE_ERROR, f"Parse error: {frame.error.removeprefix('parse error: ')}")
            return
        try:
            value = framing.loads(frame.body)
        except framing.ParseError as exc:
            self._reply_error(None, PARSE_ERROR, f"Parse error: {exc}")
            return
        if isinstance(value, dict) and "method" in value and _valid_id(value.get("id")):
            self._reply_error(value["id"], INVALID_REQUEST, f"Invalid frame: {frame.error}")

    def handle_json(self, value: Any) -> None:
        """One parsed frame: check the envelope, structure the message, dispatch. Never raises."""
        try:
            self._handle_json(value)
        except Exception:  # noqa: BLE001 - a bug here must not end the read loop
            log.exception("cannot handle a message")
            if isinstance(value, dict) and "method" in value and _valid_id(value.get("id")):
                self._reply_error(value["id"], INTERNAL_ERROR, "Internal error; details are in the server log")

    def _handle_json(self, value: Any) -> None:
        if isinstance(value, list):
            self._batch(value)
            return
        if not isinstance(value, dict):
            log.warning("invalid message: a %s, not an object", json_type(value))
            self._reply_error(None, INVALID_REQUEST, f"Invalid Request: a message is an object, not {json_type(value)}")
            return
        has_id, msg_id = "id" in value, value.get("id")
        if "method" not in value:
            self._response(value)
            return
        reply_to = msg_id if _valid_id(msg_id) else None
        if value.get("jsonrpc") != "2.0":
            self._invalid(reply_to, f"\"jsonrpc\" must be \"2.0\", not {echo(value.get('jsonrpc'), 20)}")
            return
        method = value["method"]
        if not isinstance(method, str):
            self._invalid(reply_to, f"\"method\" must be a string, not {json_type(method)}")
            return
        if has_id and reply_to is None:
            self._invalid(None, f"\"id\" must be an integer or a string, not {json_type(msg_id)}")
            return
        params = value.get("params")
        if params is not None and not isinstance(params, (dict, list)):
            if has_id:
                self._reply_error(msg_id, INVALID_PARAMS, f"Invalid params: params must be an object or an array, "
                                                          f"not {json_type(params)}")
            else:
                self._reject_notification(method, f"params must be an object or an array, not {json_type(params)}")
            return
        if has_id:
            self._request(value, msg_id, method)
        else:
            self._notification(value, method)

    def _batch(self, items: list[Any]) -> None:
        """LSP sends one message per frame: each request in a batch is refused by its id, so none waits forever."""
        log.warning("a batch of %d messages refused: LSP has no batches", len(items))
        ids = [i["id"] for i in items if isinstance(i, dict) and "method" in i and _valid_id(i.get("id"))]
        for msg_id in ids:
            self._reply_error(msg_id, INVALID_REQUEST, "Invalid Request: batches are not supported; send each message "
                                                       "in a frame of its own")
        if not ids:
            self._reply_error(None, INVALID_REQUEST, "Invalid Request: batches are not supported")

    def _known(self, method: str) -> bool:
        return method in self.fm.builtin_features or method in self.fm.features or method == types.CANCEL_REQUEST

    def _request(self, value: dict[str, Any], msg_id: Any, method: str) -> None:
        if self._shutdown:
            self._invalid(msg_id, "the server is shutting down (shutdown was received); only exit is accepted")
            return
        message_type = self.get_message_type(method)
        if message_type is not None and not _is_request(message_type):
            self._invalid(msg_id, f"{method} is a notification: it must not have an id")
            return
        if not self._known(method):
            log.warning("request %s: method not found: %s", echo(msg_id), echo(method))
            self._reply_error(msg_id, METHOD_NOT_FOUND, f"Method not found: {echo(method)}")
            return
        try:
            message = self._structure(value, message_type or JsonRPCRequestMessage)
            if method == types.WORKSPACE_EXECUTE_COMMAND and message.params.command not in self.fm.commands:
                # pygls would raise, and log a traceback for the client's typo.
                raise InvalidParams(f"params.command: no command {echo(message.params.command)}")
        except InvalidParams as exc:
            log.warning("request %s: invalid params for %s: %s", echo(msg_id), method, exc)
            self._reply_error(msg_id, INVALID_PARAMS, f"Invalid params for {method}: {exc}")
            return
        token = REQUEST_ID.set(msg_id)  # tasks the handler starts now inherit it (contextvars are copied)
        try:
            super().handle_message(message)
        finally:
            REQUEST_ID.reset(token)

    def _handle_cancel_notification(self, msg_id: Any) -> None:
        """pygls cancels a request's future, but a command's coroutine runs as a task of its own (under an id
        pygls makes up): the server cancels that one by the request's id."""
        super()._handle_cancel_notification(msg_id)
        self._server.cancel_request(msg_id)

    def _notification(self, value: dict[str, Any], method: str) -> None:
        if self._shutdown and method != types.EXIT:
            log.warning("notification %s after shutdown ignored", echo(method))
            return
        message_type = self.get_message_type(method)
        if _is_request(message_type):
            log.warning("%s sent without an id, as a notification: ignored (a request needs an id)", method)
            return
        if not self._known(method):
            if not method.startswith("$/"):  # $/ notifications may be ignored (LSP "$ Notifications")
                log.warning("notification for an unknown method ignored: %s", echo(method))
            return
        try:
            message = self._structure(value, message_type)
        except InvalidParams as exc:
            self._reject_notification(method, str(exc))
            return
        super().handle_message(message)

    def _reject_notification(self, method: str, why: str) -> None:
        """A notification has no answer: log it, and tell the client's log (``window/logMessage``)."""
        message = f"codellama-lsp: ignored {echo(method, 80)}: {why}"
        log.warning(message)
        self.notify(types.WINDOW_LOG_MESSAGE, types.LogMessageParams(type=types.MessageType.Error, message=message))

    def _response(self, value: dict[str, Any]) -> None:
        """A response to one of our requests (workspace/configuration, progress): never answered."""
        msg_id = value.get("id")
        if not _valid_id(msg_id) or msg_id not in self._result_types or msg_id not in self._request_futures:
            log.warning("ignored a message without a method that answers no request of ours (id %s)", echo(msg_id))
            return
        error = None
        if value.get("jsonrpc") != "2.0" or ("result" in value) == ("error" in value):
            error = "a response has \"jsonrpc\": \"2.0\" and exactly one of result and error"
        elif "error" in value:
            problem = check(value["error"], types.ResponseError, "error")
            error = None if problem is None else " ".join(problem)
        if error is None:
            try:
                message = self._structure_response(value)
            except Exception as exc:  # noqa: BLE001 - a malformed answer fails the request that waits for it
                error = f"{type(exc).__name__}: {echo(str(exc))}"
            else:
                super().handle_message(message)
                return
        log.warning("malformed response to our request %s: %s", echo(msg_id), error)
        self._result_types.pop(msg_id, None)
        future = self._request_futures.pop(msg_id)
        if not future.done():
            future.set_exception(JsonRpcException(message=f"malformed response: {error}"))

    def _structure_response(self, value: dict[str, Any]) -> Any:
        if "error" in value:
            return self._converter.structure(value, types.ResponseErrorMessage)
        return LanguageServerProtocol.structure_message(self, value)  # pygls' typed result, top level only

    def _structure(self, value: dict[str, Any], message_type: Any) -> Any:
        """The typed message, or InvalidParams naming the field that does not fit."""
        if isinstance(message_type, type) and attrs.has(message_type) and "params" in attrs.fields_dict(message_type):
            field = attrs.fields_dict(message_type)["params"]
            if "params" in value:
                try:
                    problem = check(value["params"], field.type, "params")
                except RecursionError:
                    problem = ("params", "is nested too deeply")
                if problem is not None:
                    raise InvalidParams(f"{problem[0]} {problem[1]}")
            elif field.default is attrs.NOTHING:
                raise InvalidParams("params is missing")
        try:
            return self._converter.structure(value, message_type)
        except cattrs.BaseValidationError as exc:
            lines = cattrs.transform_error(exc, path="")
            described = []
            for line in lines[:3]:
                what, _, where = line.rpartition(" @ ")
                described.append(f"{'.'.join(_camel(p) for p in where.lstrip('$.').split('.'))}: {what}")
            raise InvalidParams("; ".join(described) or "do not fit") from None
        except Exception as exc:  # noqa: BLE001 - a validator or hook's own error: still the client's params
            raise InvalidParams(f"do not fit ({type(exc).__name__}: {echo(str(exc))})") from None

    # -- output -------------------------------------------------------------------------------------------
    def _invalid(self, msg_id: Any, why: str) -> None:
        log.warning("invalid request (id %s): %s", echo(msg_id), why)
        self._reply_error(msg_id, INVALID_REQUEST, f"Invalid Request: {why}")

    def _reply_error(self, msg_id: Any, code: int, message: str) -> None:
        """An error response as a plain object, so that ``"id": null`` is written, not left out."""
        self._send_data({"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": message[:MAX_ERROR_MESSAGE]}})

    def _send_response(self, msg_id: Any, result: Any = None, error: types.ResponseError | None = None) -> None:
        """pygls' response, with errors cut short: no traceback or server path goes to the client."""
        if error is not None:
            if error.code == INTERNAL_ERROR:
                kind = error.message.split(":", 1)[0].strip() if error.message else ""
                message = f"Internal error{f' ({kind})' if kind.isidentifier() else ''}; details are in the server log"
                error = types.ResponseError(code=INTERNAL_ERROR, message=message)
            elif len(error.message) > MAX_ERROR_MESSAGE or error.data is not None:
                error = types.ResponseError(code=error.code, message=error.message[:MAX_ERROR_MESSAGE])
        super()._send_response(msg_id, result, error)

    def _send_data(self, data: Any) -> None:
        """Write one message as a frame of strict JSON; a result that is not JSON becomes an error."""
        if not data:
            return
        if self.writer is None:
            log.error("cannot send a message: no transport")
            return
        try:
            frame = framing.dumps(data, default=self._serialize_message)
        except ValueError as exc:  # NaN or Infinity somewhere in it
            msg_id = data.get("id") if isinstance(data, dict) else getattr(data, "id", None)
            log.error("a message with a non-finite number was not sent (id %s): %s", echo(msg_id), exc)
            if _valid_id(msg_id) and (hasattr(data, "result") or hasattr(data, "error")):
                self._reply_error(msg_id, INTERNAL_ERROR, "Internal error: the result is not representable in JSON")
            return
        except Exception:  # noqa: BLE001 - never let one bad message end the server
            log.exception("cannot serialize a message")
            return
        try:
            self.writer.write(frame)
        except (BrokenPipeError, ConnectionError, ValueError) as exc:  # ValueError: the stream is closed
            log.error("cannot write to the client: %s", exc)
            self.stop_serving(f"the client closed its end of the output ({exc})")
