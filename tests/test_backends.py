"""Remote backends against recorded answers of vLLM, TGI, llama.cpp and OpenAI-compatible servers.

Each server is played by ``http_stub.StubServer`` on 127.0.0.1. The bodies below follow
the servers' documented shapes (OpenAI completions, TGI's GenerateResponse and
StreamResponse, llama.cpp's /infill), with field values recorded from real answers.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from codellama_lsp import settings as settings_module
from codellama_lsp.backends import BACKENDS, BackendError, open_backend
from codellama_lsp.backends.remote import RemoteBackend
from codellama_lsp.backends.text_prompt import as_text, split_infilling
from codellama_lsp.backends.wire import PROTOCOLS
from codellama_lsp.generation import GenerationRequest
from codellama_lsp.engine.tokenizer import Tokenizer
from codellama_lsp.completion.templates import infilling_tokens
from http_stub import Reply, StubServer

PREFIX = "def add(a, b):\n    "
SUFFIX = "\n\nprint(add(1, 2))  # naïve ✓\n"


@pytest.fixture(scope="module")
def tok(tokenizer_path: Path) -> Tokenizer:
    return Tokenizer(tokenizer_path)


def backend(tok: Tokenizer, name: str, url: str, **kw) -> RemoteBackend:
    return RemoteBackend(PROTOCOLS[name](tok), url, tok, **kw)


def request(tok: Tokenizer, fmt: str = "psm", **kw) -> GenerationRequest:
    return GenerationRequest(prompt=infilling_tokens(tok, PREFIX, SUFFIX, fmt), max_new_tokens=16, **kw)  # type: ignore[arg-type]


def llamacpp_tokenize(tok: Tokenizer, text: str) -> list[int]:
    """How llama.cpp tokenizes with special pieces parsed and add_space_prefix off (as export-gguf writes)."""
    specials = {tok.sp.IdToPiece(i): i for i in (tok.prefix_id, tok.suffix_id, tok.middle_id, tok.eot_id)}
    ids, rest = [tok.bos_id], text
    while rest:
        at = min(((rest.find(p), p) for p in specials if p in rest), default=(len(rest), ""))
        if at[0]:
            ids += tok.encode_infilling(rest[: at[0]])
        if at[1]:
            ids.append(specials[at[1]])
        rest = rest[at[0] + len(at[1]):]
    return ids


# -- the prompt in each server's form ----------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["psm", "spm"])
def test_prompt_text_tokenizes_back_to_the_same_ids(tok: Tokenizer, fmt: str) -> None:
    ids = infilling_tokens(tok, PREFIX, SUFFIX, fmt)  # type: ignore[arg-type]
    text = as_text(tok, ids)
    assert "▁<PRE>" in text and "▁<MID>" in text and not text.startswith(" ")
    assert llamacpp_tokenize(tok, text) == ids


@pytest.mark.parametrize("fmt", ["psm", "spm"])
def test_split_infilling_finds_prefix_and_suffix_ids(tok: Tokenizer, fmt: str) -> None:
    prefix, suffix = split_infilling(tok, infilling_tokens(tok, PREFIX, SUFFIX, fmt))  # type: ignore[arg-type]
    assert prefix == tok.encode(PREFIX) and suffix == tok.encode_infilling(SUFFIX)
    assert split_infilling(tok, infilling_tokens(tok, "", SUFFIX, fmt)) == ([], tok.encode_infilling(SUFFIX))  # type: ignore[arg-type]


# -- OpenAI-compatible /v1/completions (vLLM, llama.cpp, Ollama) ---------------------------------------------

def openai_chunk(text: str, finish: str | None = None) -> dict:
    return {"id": "cmpl-3c4a", "object": "text_completion", "created": 1732300000, "model": "codellama/CodeLlama-34b-hf",
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish, "stop_reason": None}]}


async def test_openai_single_line_is_one_json_answer_with_server_side_stop(tok: Tokenizer) -> None:
    answer = openai_chunk("return a + b", "stop") | {
        "usage": {"prompt_tokens": 41, "completion_tokens": 5, "total_tokens": 46, "prompt_tokens_details": {"cached_tokens": 30}}}
    async with StubServer(Reply(body=answer)) as server:
        b = backend(tok, "openai", server.url + "/v1", served_model="codellama/CodeLlama-34b-hf")
        req = request(tok, stop_strings=("\n",))
        result = await b.agenerate(req)
    seen = server.seen[0]
    assert (seen.method, seen.path) == ("POST", "/v1/completions")
    body = seen.json()
    assert body == {"prompt": as_text(tok, req.prompt), "max_tokens": 16, "temperature": 0.0, "top_p": 1.0, "seed": 0,
                    "stream": False, "repeat_penalty": 1.0, "model": "codellama/CodeLlama-34b-hf", "stop": ["\n"]}
    assert (result.text, result.stop_reason) == ("return a + b", "eot")
    assert (result.prompt_tokens, result.computed_tokens) == (len(req.prompt), 11)


async def test_openai_stream_stops_at_the_end_of_the_block_and_closes_the_request(tok: Tokenizer) -> None:
    events = [openai_chunk(t) for t in ["if a:", "\n        return b", "\n    return a", "\nfoo", "bar", "baz"]]
    async with StubServer(Reply(events=events + ["data: [DONE]"], event_delay_s=0.05)) as server:
        b = backend(tok, "openai", server.url)
        req = request(tok, on_text=lambda text: text.count("\n") >= 3)
        result = await b.agenerate(req)
        assert server.seen[0].path == "/v1/completions" and server.seen[0].json()["stream"] is True
        await asyncio.wait_for(server.seen[0].client_closed.wait(), 2)  # left early: the server sees the close
    assert (result.text, result.stop_reason) == ("if a:\n        return b\n    return a\nfoo", "callback")


async def test_openai_stream_to_the_end(tok: Tokenizer) -> None:
    events = [openai_chunk("return"), openai_chunk(" a"), openai_chunk("", "length"), "data: [DONE]"]
    async with StubServer(Reply(events=events)) as server:
        result = await backend(tok, "openai", server.url).agenerate(request(tok, on_text=lambda _: False))
    assert (result.text, result.stop_reason) == ("return a", "length")


async def test_eot_as_text_ends_the_suggestion(tok: Tokenizer) -> None:
    """A server that does not treat <EOT> as the end still never shows it, nor anything after it."""
    events = [openai_chunk("return a"), openai_chunk(" <EOT>"), openai_chunk("junk"), "data: [DONE]"]
    async with StubServer(Reply(events=events)) as server:
        result = await backend(tok, "openai", server.url).agenerate(request(tok, on_text=lambda _: False))
    assert (result.text, result.stop_reason) == ("return a ", "eot")


async def test_vllm_sends_token_ids_and_eot_as_a_stop_token(tok: Tokenizer) -> None:
    async with StubServer(Reply(body=openai_chunk(" a + b", "stop"))) as server:
        req = request(tok, "spm")
        result = await backend(tok, "vllm", server.url, served_model="cl").agenerate(req)
    body = server.seen[0].json()
    assert body["prompt"] == list(req.prompt) and body["stop_token_ids"] == [tok.eot_id] and body["model"] == "cl"
    assert "repeat_penalty" not in body
    assert result.text == " a + b"


# -- TGI /generate and /generate_stream -------------------------------------------------------------------------

async def test_tgi_generate(tok: Tokenizer) -> None:
    answer = {"generated_text": "return a + b", "details": {"finish_reason": "stop_sequence", "generated_tokens": 6,
                                                             "seed": None, "prefill": [], "tokens": []}}
    async with StubServer(Reply(body=answer)) as server:
        req = request(tok, stop_strings=("\n",))
        result = await backend(tok, "tgi", server.url).agenerate(req)
    seen = server.seen[0]
    assert seen.path == "/generate"
    assert seen.json() == {"inputs": as_text(tok, req.prompt), "parameters": {
        "max_new_tokens": 16, "do_sample": False, "seed": 0, "details": True, "return_full_text": False, "stop": ["\n"]}}
    assert (result.text, result.stop_reason) == ("return a + b", "stop_string")


async def test_tgi_generate_sampling_parameters(tok: Tokenizer) -> None:
    async with StubServer(Reply(body=[{"generated_text": "x"}])) as server:
        result = await backend(tok, "tgi", server.url).agenerate(request(tok, temperature=0.6, top_p=0.9, seed=7))
    params = server.seen[0].json()["parameters"]
    assert (params["do_sample"], params["temperature"], params["top_p"], params["seed"]) == (True, 0.6, 0.9, 7)
    assert result.text == "x"


def tgi_event(i: int, token_id: int, text: str, special: bool = False, finish: str | None = None) -> dict:
    return {"index": i, "token": {"id": token_id, "text": text, "logprob": -0.25, "special": special},
            "generated_text": None if finish is None else "…", "top_tokens": None,
            "details": None if finish is None else {"finish_reason": finish, "generated_tokens": i, "input_length": 40, "seed": None}}


async def test_tgi_generate_stream_ends_at_the_eot_token(tok: Tokenizer) -> None:
    events = [tgi_event(1, 300, "return"), tgi_event(2, 301, " a"), tgi_event(3, tok.eot_id, " <EOT>", special=True),
              tgi_event(4, 302, " more"), tgi_event(5, 2, "</s>", special=True, finish="eos_token")]
    async with StubServer(Reply(events=events, event_delay_s=0.02)) as server:
        result = await backend(tok, "tgi", server.url).agenerate(request(tok, on_text=lambda _: False))
        assert server.seen[0].path == "/generate_stream"
        await asyncio.wait_for(server.seen[0].client_closed.wait(), 2)
    assert (result.text, result.stop_reason) == ("return a", "eot")


async def test_tgi_error_event_mid_stream(tok: Tokenizer) -> None:
    events = [tgi_event(1, 300, "return"), {"error": "Request failed during generation: Server error: CUDA out of memory",
                                            "error_type": "generation"}]
    async with StubServer(Reply(events=events)) as server:
        with pytest.raises(BackendError, match="CUDA out of memory"):
            await backend(tok, "tgi", server.url).agenerate(request(tok, on_text=lambda _: False))


# -- llama.cpp /infill ----------------------------------------------------------------------------------------

def infill_event(content: str, stop: bool = False) -> dict:
    event = {"index": 0, "content": content, "tokens": [], "stop": stop, "id_slot": -1, "tokens_predicted": 2,
             "tokens_evaluated": 40}
    if stop:
        event |= {"stop_type": "eos", "stopping_word": "", "tokens_cached": 42, "truncated": False,
                  "timings": {"prompt_n": 3, "prompt_ms": 4.1, "predicted_n": 2, "predicted_ms": 9.0}}
    return event


async def test_llamacpp_infill_sends_prefix_and_suffix_ids_with_cache_prompt(tok: Tokenizer) -> None:
    async with StubServer(Reply(events=[infill_event("return"), infill_event(" a"), infill_event("", stop=True)])) as server:
        req = request(tok, on_text=lambda _: False)
        result = await backend(tok, "llamacpp", server.url).agenerate(req)
    seen = server.seen[0]
    assert seen.path == "/infill"
    assert seen.json() == {"input_prefix": tok.encode(PREFIX), "input_suffix": tok.encode_infilling(SUFFIX),
                           "n_predict": 16, "temperature": 0.0, "top_p": 1.0, "seed": 0, "stream": True,
                           "cache_prompt": True, "repeat_penalty": 1.0}
    assert (result.text, result.stop_reason) == ("return a", "eot")
    assert (result.computed_tokens, result.reused_tokens) == (3, len(req.prompt) - 3)


# -- failures: each a BackendError that says what happened -------------------------------------------------

async def test_connection_refused(tok: Tokenizer) -> None:
    async with StubServer(Reply()) as server:
        url = server.url
    with pytest.raises(BackendError, match=f"cannot connect to {url}"):
        await backend(tok, "openai", url).agenerate(request(tok))


@pytest.mark.parametrize("status, body, match", [
    (404, {"detail": "Not Found"}, "HTTP 404 Not Found: {\"detail\": \"Not Found\"}"),
    (422, {"error": "Input validation error: `inputs` must not be empty", "error_type": "validation"}, "HTTP 422.*validation"),
    (503, b"", r"HTTP 503 Service Unavailable: \(no body\)"),
])
async def test_http_errors(tok: Tokenizer, status: int, body, match: str) -> None:
    async with StubServer(Reply(status=status, body=body)) as server:
        with pytest.raises(BackendError, match=match):
            await backend(tok, "tgi", server.url).agenerate(request(tok))


@pytest.mark.parametrize("reply, match", [
    (Reply(body=b"<html>bad gateway</html>"), "not JSON"),
    (Reply(body={"choices": []}), "malformed answer.*IndexError"),
    (Reply(body={"choices": [{"text": 42, "finish_reason": "stop"}]}), "malformed answer.*expected text"),
    (Reply(events=["data: {not json"]), "malformed event"),
    (Reply(events=[openai_chunk("a")]), "ended the stream before the end"),
])
async def test_malformed_answers(tok: Tokenizer, reply: Reply, match: str) -> None:
    async with StubServer(reply) as server:
        with pytest.raises(BackendError, match=match):
            await backend(tok, "openai", server.url).agenerate(request(tok, on_text=(lambda _: False) if reply.events else None))


async def test_server_going_away_mid_stream(tok: Tokenizer) -> None:
    async with StubServer(Reply(events=[openai_chunk("a")] * 5, cut_after=2)) as server:
        with pytest.raises(BackendError, match="broke off the answer"):
            await backend(tok, "openai", server.url).agenerate(request(tok, on_text=lambda _: False))


# -- time budget, supersede, cancellation ----------------------------------------------------------------------

async def test_time_budget_ends_a_silent_server(tok: Tokenizer) -> None:
    async with StubServer(Reply(hang=True)) as server:
        # Ignoring the budget would hang on the silent server: the wait is a no-hang bound, not a speed check.
        result = await asyncio.wait_for(backend(tok, "openai", server.url).agenerate(request(tok, time_budget_ms=200)), 30)
        await asyncio.wait_for(server.seen[0].client_closed.wait(), 2)
    assert (result.text, result.stop_reason) == ("", "time")


async def test_time_budget_keeps_the_text_so_far(tok: Tokenizer) -> None:
    events = [openai_chunk("return"), openai_chunk(" a"), openai_chunk(" + b", "stop")]
    # Chunks at 0, 1 and 2 s against a 1.5 s budget: half a second of slack either way on a loaded machine.
    async with StubServer(Reply(events=events, event_delay_s=1.0)) as server:
        result = await backend(tok, "openai", server.url).agenerate(request(tok, time_budget_ms=1500, on_text=lambda _: False))
    assert (result.text, result.stop_reason) == ("return a", "time")


async def test_superseded_request_stops_at_once_and_closes(tok: Tokenizer) -> None:
    cancel = threading.Event()
    async with StubServer(Reply(hang=True)) as server:
        b = backend(tok, "llamacpp", server.url)
        task = asyncio.ensure_future(b.agenerate(request(tok, cancel=cancel)))
        await asyncio.sleep(0.2)
        cancel.set()  # what the lifecycle does when a newer keystroke arrives
        result = await asyncio.wait_for(task, 1)
        await asyncio.wait_for(server.seen[0].client_closed.wait(), 2)
    assert result.stop_reason == "cancelled"
    assert (await b.agenerate(request(tok, cancel=cancel))).stop_reason == "cancelled"  # never sent
    assert len(server.seen) == 1


async def test_cancelled_task_closes_the_request(tok: Tokenizer) -> None:
    async with StubServer(Reply(hang=True)) as server:
        req = request(tok)
        task = asyncio.ensure_future(backend(tok, "tgi", server.url).agenerate(req))
        await asyncio.sleep(0.2)
        task.cancel()  # $/cancelRequest
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(server.seen[0].client_closed.wait(), 2)
    assert req.cancel.is_set()


# -- API key, https -------------------------------------------------------------------------------------------

async def test_api_key_from_the_environment_is_sent_and_never_logged(tok: Tokenizer, monkeypatch, caplog) -> None:
    secret = "sk-test-9f8e7d6c5b4a"
    monkeypatch.setenv("CODELLAMA_TEST_KEY", secret)
    caplog.set_level(logging.DEBUG)
    async with StubServer(lambda seen: Reply(status=401, body={"error": "bad key"}) if seen.path.startswith("/2/")
                          else Reply(body={"generated_text": "ok"})) as server:
        b = backend(tok, "tgi", server.url, api_key_env="CODELLAMA_TEST_KEY")
        assert (await b.agenerate(request(tok))).text == "ok"
        b.url += "/2"
        with pytest.raises(BackendError) as failure:
            await b.agenerate(request(tok))
    assert server.seen[0].headers["authorization"] == f"Bearer {secret}"
    assert secret not in str(failure.value) and secret not in caplog.text
    monkeypatch.delenv("CODELLAMA_TEST_KEY")
    with pytest.raises(BackendError, match="CODELLAMA_TEST_KEY .* is not set"):
        backend(tok, "tgi", "http://127.0.0.1:1", api_key_env="CODELLAMA_TEST_KEY")


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


async def test_https_with_the_system_trust_store(tok: Tokenizer, tmp_path: Path, monkeypatch) -> None:
    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    async with StubServer(Reply(body=openai_chunk("secure", "stop")), ssl_context=context) as server:
        assert server.url.startswith("https://")
        with pytest.raises(BackendError, match="CERTIFICATE_VERIFY_FAILED"):
            await backend(tok, "openai", server.url).agenerate(request(tok))
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # how a private CA is trusted in production too
        assert (await backend(tok, "openai", server.url).agenerate(request(tok))).text == "secure"


# -- choosing a backend ---------------------------------------------------------------------------------------

def test_settings_accept_exactly_the_backends(tmp_path: Path) -> None:
    new, errors = settings_module.apply(settings_module.Settings(), {
        "backend": "vllm", "url": "https://gpu-box:8000/v1", "apiKeyEnv": "VLLM_KEY", "tokenizer": "~/cl/tokenizer.model"})
    assert not errors and (new.backend, new.url, new.api_key_env) == ("vllm", "https://gpu-box:8000/v1", "VLLM_KEY")
    assert new.load_key != settings_module.Settings().load_key
    _, errors = settings_module.apply(new, {"backend": "triton", "url": "gpu-box:8000", "apiKeyEnv": "sk-123 abc"})
    assert len(errors) == 3 and "expected one of local, openai, vllm, tgi, llamacpp" in errors[0]
    assert "never goes in settings" in errors[2]
    assert BACKENDS == ("local", "openai", "vllm", "tgi", "llamacpp") == ("local", *PROTOCOLS)


def test_open_backend(tiny_model_dir: Path, tokenizer_path: Path, tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="needs the codellama.url setting"):
        open_backend("openai", tiny_model_dir)
    with pytest.raises(BackendError, match="unknown backend 'triton'"):
        open_backend("triton", tiny_model_dir, url="http://127.0.0.1:1")
    with pytest.raises(BackendError, match="must start with http"):
        open_backend("tgi", tiny_model_dir, url="ftp://127.0.0.1:1")
    remote = open_backend("llamacpp", tiny_model_dir, url="http://127.0.0.1:1/")
    assert remote.tokenizer.path == tiny_model_dir / "tokenizer.model" and remote.device == "llamacpp server at http://127.0.0.1:1"
    named = open_backend("vllm", Path("codellama/CodeLlama-34b-hf"), url="http://127.0.0.1:1", tokenizer=tokenizer_path)
    assert named.tokenizer.path == tokenizer_path and named.context_length is None  # contextLength auto: unknown
    # contextLength is the server's window: the budgets are cut and scaled to fit it (settings.for_device).
    assert open_backend("vllm", tiny_model_dir, url="http://127.0.0.1:1", context_length=16384).context_length == 16384
    local = open_backend("local", tiny_model_dir, device="cpu")
    assert local.tokenizer.supports_fim and str(local.device) == "cpu"
    local.close()


# Each server's answer where it says its window, in its documented shape (fields trimmed).
WINDOW_ANSWERS = {
    "/props": {"default_generation_settings": {"n_ctx": 8192, "n_predict": -1}, "total_slots": 1},  # llama.cpp
    "/v1/models": {"object": "list", "data": [{"id": "codellama/CodeLlama-7b-hf", "object": "model",
                                               "max_model_len": 16384}]},  # vLLM
    "/info": {"model_id": "codellama/CodeLlama-7b-hf", "max_input_tokens": 4095, "max_total_tokens": 4096},  # TGI
}


@pytest.mark.parametrize("name, url_tail, says, window", [
    ("llamacpp", "", ("/props",), 8192),
    ("openai", "/v1", ("/props",), 8192),  # llama.cpp's server behind the OpenAI API; the /v1 base is stripped
    ("openai", "", ("/v1/models",), 16384),  # vLLM behind the OpenAI API: /props is not found, /v1/models says
    ("vllm", "", ("/v1/models",), 16384),
    ("tgi", "", ("/info",), 4096),
    ("openai", "", (), None),  # llama-cpp-python, Ollama: no window said; nothing is cut
])
async def test_a_remote_window_is_asked_of_the_server_when_not_set(tokenizer_path: Path, name: str, url_tail: str,
                                                                    says: tuple[str, ...], window: int | None) -> None:
    def reply(seen) -> Reply:
        return Reply(body=WINDOW_ANSWERS[seen.path]) if seen.path in says else Reply(status=404, body={"error": "no"})

    async with StubServer(reply) as server:
        remote = await asyncio.to_thread(open_backend, name, tokenizer_path.parent, url=server.url + url_tail,
                                         tokenizer=tokenizer_path)
        assert remote.context_length == window
        assert [s.method for s in server.seen] == ["GET"] * len(server.seen) and server.seen
        asked = len(server.seen)
        given = await asyncio.to_thread(open_backend, name, tokenizer_path.parent, url=server.url + url_tail,
                                        tokenizer=tokenizer_path, context_length=2048)
    assert given.context_length == 2048 and len(server.seen) == asked  # a contextLength set: the server is not asked


def test_remote_backend_named_by_a_gguf_file_prompts_with_its_vocabulary(real_gguf: Path) -> None:
    """A served model given as its .gguf file: the prompt uses that file's tokenizer and family.

    Before, only a directory with a tokenizer.model counted, and a .gguf fell back to the demo
    model's Code Llama vocabulary: a Qwen server got Code Llama's infilling markers as text.
    """
    from codellama_lsp.completion.families import QWEN_CODER, detect

    remote = open_backend("openai", real_gguf, url="http://127.0.0.1:1/v1")
    assert detect(remote.tokenizer).family is QWEN_CODER
