"""The OpenAI-compatible backend against a real `mlx_lm.server` on a tiny model, and scripted loopback servers."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Coroutine, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from assistant.compute import Compute
from assistant.config import Config, LlmConfig, to_dict
from assistant.conversation import Conversation
from assistant.engines import Engines
from assistant.errors import ConfigError, InputError, ModelError
from assistant.llm import Message
from assistant.llm_remote import RemoteChat, read_api_key
from assistant.reply import next_delta
from assistant.tools.calls import ToolCall, ToolChoice
from tests.llm.servers import MlxLmServer, Script, ScriptedServer, free_port, sse, text_chunk
from tests.pipeline.doubles import FakeSink, RuleVad, WordTranscriber, WordTts

SYSTEM = "You are terse."
BOUND_S = 10.0  # safety net for a stalled read: without the fix it ends only at llm.timeout_s (600 s here)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.llm.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("llm") / "gemma3", "gemma3", seed=7, window=16)


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlxLmServer]:
    srv = MlxLmServer(tiny_model, free_port(), tmp_path_factory.mktemp("srv") / "server.log").start()
    try:
        yield srv
    finally:
        srv.stop()


def cfg_for(base_url: str, **changes: Any) -> LlmConfig:
    base = {
        "llm.backend": "openai",
        "llm.base_url": base_url,
        "llm.model": "default_model",
        "llm.temperature": 0.0,
        "llm.max_tokens": 12,
        "llm.system_prompt": SYSTEM,
        "llm.timeout_s": 20.0,
    }
    base.update({f"llm.{k}": v for k, v in changes.items()})
    return Config().replace(base).llm


def test_streams_several_turns_like_the_in_process_chat(server: MlxLmServer, tiny_model: Path) -> None:
    """Three turns stream text deltas that add up to the recorded answers, and greedy text equals in-process mlx-lm."""
    from assistant.llm import Chat

    chat = RemoteChat(cfg_for(server.base_url))
    local = Chat.load(
        Config()
        .replace(
            {"llm.model": str(tiny_model), "llm.temperature": 0.0, "llm.max_tokens": 12, "llm.system_prompt": SYSTEM}
        )
        .llm
    )
    prompt_tokens = []
    for text in ("Hello, how are you today?", "Tell me a short story.", "What is the capital of France?"):
        deltas = list(chat.respond(text))
        chat.finish_turn(None)
        assert len(deltas) >= 2 and all(deltas)
        assert chat.history[-1] == Message("assistant", "".join(deltas).strip())
        assert chat.stats.first_token_s is not None and chat.stats.first_token_s > 0
        prompt_tokens.append(chat.stats.server_prompt_tokens)
        local_answer = "".join(local.respond(text))
        local.finish_turn(None)
        assert "".join(deltas) == local_answer
    assert [m.role for m in chat.history] == ["user", "assistant"] * 3
    assert prompt_tokens[0] < prompt_tokens[1] < prompt_tokens[2]  # each turn sends the whole history


def test_closing_mid_reply_disconnects_and_next_turn_works(server: MlxLmServer) -> None:
    """Closing the answer's generator closes the HTTP stream: the server logs the broken pipe, the next turn works."""
    chat = RemoteChat(cfg_for(server.base_url, max_tokens=4000))
    before = server.log().count("Exception occurred during processing")
    gen = chat.respond("Tell me a short story about a cat who learns to fly.")
    heard = next(gen) + next(gen)
    gen.close()
    chat.finish_turn(heard)
    assert chat.history[-1].interrupted and chat.history[-1].content == heard.strip()
    deadline = time.monotonic() + 60
    while server.log().count("Exception occurred during processing") == before and time.monotonic() < deadline:
        time.sleep(0.1)  # the server notices when its next write fails
    tail = server.log()
    assert tail.count("Exception occurred during processing") > before
    assert "BrokenPipeError" in tail or "ConnectionResetError" in tail
    chat.cfg = cfg_for(server.base_url)
    assert "".join(chat.respond("Hello again."))


def test_server_stopped_mid_reply_errors_then_recovers(tiny_model: Path, tmp_path: Path) -> None:
    """Killing the server mid-answer raises a one-line ModelError; once it is back the next turn is answered."""
    port = free_port()
    srv = MlxLmServer(tiny_model, port, tmp_path / "server.log").start()
    try:
        chat = RemoteChat(cfg_for(srv.base_url, max_tokens=4000))
        gen = chat.respond("Tell me a short story about a cat who learns to fly.")
        assert next(gen)
        srv.stop()
        with pytest.raises(ModelError) as err:
            for _ in gen:
                pass
        message = str(err.value)
        assert srv.base_url in message and "\n" not in message
        chat.finish_turn(None)
        with pytest.raises(ModelError, match="not reachable"):
            list(chat.respond("Are you there?"))
        chat.finish_turn(None)
        srv.start()
        chat.cfg = cfg_for(srv.base_url)
        assert "".join(chat.respond("Hello, how are you today?"))
        chat.finish_turn(None)
        assert chat.history[-2] == Message("user", "Hello, how are you today?")
    finally:
        srv.stop()


def test_history_trimmed_by_token_estimate(server: MlxLmServer) -> None:
    """When the estimated prompt exceeds llm.history_tokens, the oldest exchanges go and the prompt fits again."""
    chat = RemoteChat(cfg_for(server.base_url, history_tokens=256, max_tokens=4))
    long = "The weather is sunny with a light breeze; it will rain tomorrow. " * 3
    for i in range(8):
        list(chat.respond(f"{i}: {long}"))
        chat.finish_turn(None)
        assert chat.stats.prompt_tokens_estimate <= 256
        assert isinstance(chat.history[0], Message) and chat.history[0].role == "user"
    assert chat.history[-2] == Message("user", f"7: {long.strip()}")
    assert len(chat.history) < 16


def scripted(respond: Any) -> Script:
    return Script(respond)


def test_tool_calls_surface_as_values_and_round_trip() -> None:
    """Streamed tool-call fragments become ToolCall values; their results go back as tool messages to the model."""
    call_chunks = [
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "call_a",
                                "type": "function",
                                "function": {"name": "get_time", "arguments": ""},
                            }
                        ]
                    },
                }
            ]
        },
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"zone":'}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ' "UTC"}'}}]}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    ]

    def respond(h: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        if body["messages"][-1]["role"] == "tool":
            sse(h, [text_chunk("It is "), text_chunk("noon.")])
        else:
            sse(h, call_chunks)

    tools = [{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]
    script = scripted(respond)
    with ScriptedServer(script) as srv:
        chat = RemoteChat(cfg_for(srv.base_url))
        assert chat.set_tools(tools) and chat.tool_format is None
        assert list(chat.respond("What time is it?")) == []
        assert chat.tool_calls == [ToolCall("get_time", {"zone": "UTC"}, "call_a", raw='{"zone": "UTC"}')]
        answer = chat.continue_with_results("", [(chat.tool_calls[0], "12:00")])
        assert "".join(answer) == "It is noon."
        chat.finish_turn(None)
    assert script.bodies[0]["tools"] == tools
    assert "tool_choice" not in script.bodies[0]  # "auto" is the server's default: not sent
    sent = script.bodies[1]["messages"]
    assert sent[-2]["tool_calls"][0]["function"] == {"name": "get_time", "arguments": '{"zone": "UTC"}'}
    assert sent[-1] == {"role": "tool", "tool_call_id": "call_a", "content": "12:00"}
    assert chat.history[1].tool_calls[0].name == "get_time"
    assert chat.history[2] == Message("tool", "12:00", tool_call_id="call_a", name="get_time")
    assert chat.history[3] == Message("assistant", "It is noon.")
    assert [m.role for m in chat.last_turn()] == ["user", "assistant", "tool", "assistant"]


def test_bad_tool_arguments_and_rounds_are_refused() -> None:
    """Arguments that are not a JSON object give a call with `error`; a tool round without an answer is refused."""
    chunks = [
        {
            "choices": [
                {"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": "[1"}}]}}
            ]
        }
    ]
    with ScriptedServer(scripted(lambda h, b: sse(h, chunks))) as srv:
        chat = RemoteChat(cfg_for(srv.base_url))
        list(chat.respond("go"))
    (call,) = chat.tool_calls
    assert call.name == "f" and call.error.startswith("arguments are not JSON") and call.raw == "[1"
    with pytest.raises(InputError, match="at least one call"):
        chat.continue_with_results("", [])
    chat.finish_turn(None)
    with pytest.raises(InputError, match="no answer is open"):
        chat.continue_with_results("", [(call, "x")])


def test_restore_trims_a_stored_history() -> None:
    """A stored history beyond llm.history_tokens is trimmed from the oldest turn, keeping whole turns."""
    chat = RemoteChat(cfg_for("http://127.0.0.1:9/v1", history_tokens=256))
    long = "The weather is sunny with a light breeze. " * 6
    stored = [Message(r, f"{i} {long}") for i in range(6) for r in ("user", "assistant")]
    dropped = chat.restore(stored)
    assert dropped > 0 and chat.history == stored[dropped:] and chat.history[0].role == "user"


@pytest.mark.parametrize(
    ("respond", "match"),
    [
        (lambda h, b: (h.send_response(500), h.end_headers(), h.wfile.write(b"model exploded")), "HTTP 500: model"),
        (lambda h, b: sse(h, ["{not json"]), "not JSON"),
        (lambda h, b: sse(h, ['{"object": "x"}']), "without `choices`"),
        (lambda h, b: sse(h, [text_chunk("half")], done=False), "without \\[DONE\\]"),
        (lambda h, b: sse(h, ['{"error": {"message": "out of memory"}}']), "out of memory"),
    ],
    ids=["http-500", "not-json", "no-choices", "no-done", "error-chunk"],
)
def test_garbage_from_the_server_is_a_one_line_error(respond: Any, match: str) -> None:
    """A server answering garbage gives a one-line ModelError naming the server, and the next turn is tried again."""
    calls = []

    def once_bad(h: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        calls.append(1)
        if len(calls) == 1:
            respond(h, body)
        else:
            sse(h, [text_chunk("fine")])

    with ScriptedServer(scripted(once_bad)) as srv:
        chat = RemoteChat(cfg_for(srv.base_url))
        with pytest.raises(ModelError, match=match) as err:
            list(chat.respond("hi"))
        assert srv.base_url in str(err.value) and "\n" not in str(err.value)
        chat.finish_turn(None)
        assert list(chat.respond("hi again")) == ["fine"]


def test_slow_server_times_out() -> None:
    """A server silent past llm.timeout_s gives a one-line timeout error, and the next turn tries again."""
    release = threading.Event()

    def stall(h: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        sse(h, [text_chunk("one")], done=False)
        release.wait(30)

    with ScriptedServer(scripted(stall)) as srv:
        chat = RemoteChat(cfg_for(srv.base_url, timeout_s=0.5))
        with pytest.raises(ModelError, match=r"did not answer within 0\.5 s"):
            list(chat.respond("hi"))
        chat.finish_turn(None)
        release.set()


class Stall:
    """A scripted answer that stalls (before its headers, or after one delta) until the client hangs up; it
    records what its socket read then (b"" = the client closed the connection)."""

    def __init__(self, headers: bool) -> None:
        self.headers = headers
        self.stalling = threading.Event()
        self.hung_up = threading.Event()
        self.read: list[bytes | str] = []

    def __call__(self, h: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        if self.headers:
            sse(h, [text_chunk("one")], done=False)
        h.connection.settimeout(BOUND_S)
        self.stalling.set()
        try:
            self.read.append(h.connection.recv(1))
        except OSError as e:
            self.read.append(type(e).__name__)
        self.hung_up.set()


def run_catching(main: Coroutine[Any, Any, None], failed: list[BaseException]) -> None:
    """asyncio.run(main) on a thread of the test's (its join bounds the wait), keeping what it raised."""
    try:
        asyncio.run(main)
    except BaseException as e:
        failed.append(e)


@pytest.mark.parametrize("how", ["cancel", "close"])
@pytest.mark.parametrize("headers", [False, True], ids=["before-headers", "mid-answer"])
def test_cancel_ends_a_read_blocked_on_a_stalled_server(headers: bool, how: str) -> None:
    """cancel() or close() from another thread ends a read blocked on a server that stalls (before its headers or
    mid-answer) while the server still holds the connection, without an error, and the server sees the
    disconnect."""
    stall = Stall(headers)
    with ScriptedServer(scripted(stall)) as srv:
        chat = RemoteChat(cfg_for(srv.base_url, timeout_s=600.0))  # only the cancel can end the read
        gen = chat.respond("hi")
        first = [next(gen)] if headers else []
        rest: list[str] = []
        reader = threading.Thread(target=lambda: rest.extend(gen), daemon=True)
        reader.start()
        assert stall.stalling.wait(BOUND_S)
        chat.cancel() if how == "cancel" else chat.close()
        reader.join(BOUND_S)
        assert not reader.is_alive(), "the read blocked on the stalled server outlived cancel()"
        assert first + rest == (["one"] if headers else [])
        assert stall.hung_up.wait(BOUND_S) and stall.read == [b""]  # the server saw the client close
        chat.finish_turn(None)
        assert chat.history[-1] == Message("assistant", "".join(first), interrupted=True)


def test_asyncio_run_returns_when_a_reply_on_a_stalled_server_is_cancelled() -> None:
    """A daemon stopping mid-request (its step in a thread, as the reply pump runs it): cancelling the task and the
    chat lets asyncio.run return, although the executor's thread was blocked on a server that never answers."""
    stall = Stall(headers=False)

    async def main(chat: RemoteChat) -> None:
        step = asyncio.create_task(asyncio.to_thread(next_delta, chat.respond("hi")))
        await asyncio.to_thread(stall.stalling.wait, BOUND_S)
        step.cancel()  # what the conversation does on barge-in or shutdown: the task, then the HTTP request
        chat.cancel()

    with ScriptedServer(scripted(stall)) as srv:
        chat = RemoteChat(cfg_for(srv.base_url, timeout_s=600.0))
        failed: list[BaseException] = []
        runner = threading.Thread(target=run_catching, args=(main(chat), failed), daemon=True)
        runner.start()
        runner.join(BOUND_S)  # asyncio.run waits for the executor's threads to end
        assert not runner.is_alive(), "asyncio.run waited on a thread blocked on the stalled server"
        assert not failed, failed
        assert stall.hung_up.wait(BOUND_S) and stall.read == [b""]
        chat.close()


def test_a_conversation_closed_mid_request_on_a_stalled_server_ends() -> None:
    """The daemon stopping while a text turn waits on a server that never answers: cancelling the turn and closing
    the conversation ends the request (the server sees the hang-up) and lets asyncio.run return."""
    stall = Stall(headers=False)

    async def main(chat: RemoteChat) -> None:
        compute = Compute()
        engines = Engines(WordTranscriber(), chat, WordTts(), None, lambda c: RuleVad(c))
        conversation = Conversation(dataclasses.replace(Config(), llm=chat.cfg), engines, None, FakeSink(), compute)
        turn = asyncio.create_task(conversation.ask("hi"))
        await asyncio.to_thread(stall.stalling.wait, BOUND_S)
        turn.cancel()  # what the daemon's shutdown does: its tasks, then the conversation
        await conversation.aclose()
        compute.close(1.0)

    with ScriptedServer(scripted(stall)) as srv:
        chat = RemoteChat(cfg_for(srv.base_url, timeout_s=600.0))
        failed: list[BaseException] = []
        runner = threading.Thread(target=run_catching, args=(main(chat), failed), daemon=True)
        runner.start()
        runner.join(BOUND_S)
        assert not runner.is_alive(), "asyncio.run waited on a request to a stalled server after the daemon stopped"
        assert not failed, failed
        assert stall.hung_up.wait(BOUND_S) and stall.read == [b""]


def test_api_key_from_env_or_file_is_sent_and_never_shown(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The key comes from the named env var or file, goes in the Authorization header, and is in no log or config."""
    key = "sk-test-7f3a9"
    script = scripted(lambda h, b: sse(h, [text_chunk("ok")]))
    with ScriptedServer(script) as srv, caplog.at_level(logging.DEBUG):
        cfg = Config().replace({"llm.backend": "openai", "llm.base_url": srv.base_url, "llm.api_key_env": "MY_KEY"})
        chat = RemoteChat.load(cfg.llm, env={"MY_KEY": key})
        assert list(chat.respond("hi")) == ["ok"]
        chat.finish_turn(None)
        (tmp_path / "key").write_text(key + "\n")
        from_file = cfg.replace({"llm.api_key_env": "", "llm.api_key_file": str(tmp_path / "key")})
        assert read_api_key(from_file.llm, env={}) == key
    assert script.headers[0]["Authorization"] == f"Bearer {key}"
    assert key not in caplog.text and key not in json.dumps(to_dict(cfg))
    with pytest.raises(ConfigError, match=r"\$MY_KEY, which is not set"):
        read_api_key(cfg.llm, env={})


def test_bad_base_url_is_a_config_error() -> None:
    """A base_url that is not http(s) is refused at construction with an example."""
    with pytest.raises(ConfigError, match="not an http"):
        RemoteChat(cfg_for("localhost:8080"))


def test_chat_command_uses_the_openai_backend(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`assistant chat` with llm.backend=openai talks to the server; a failed turn is reported and the next works."""
    import io

    from assistant import cli

    answers = iter([lambda h: h.send_response(503) or h.end_headers(), lambda h: sse(h, [text_chunk("back")])])
    with ScriptedServer(scripted(lambda h, b: next(answers)(h))) as srv:
        monkeypatch.setattr("sys.stdin", io.StringIO("hello\nhello again\n/exit\n"))
        args = ["chat", "--set", "llm.backend=openai", "--set", f"llm.base_url={srv.base_url}"]
        assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert f"[error: LLM server {srv.base_url} answered HTTP 503" in out and "> back\n" in out


def test_doctor_checks_the_llm_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """doctor's LLM check passes against a live server, and names the fix when it is down, refuses the key, or
    answers 404 or 500 at /models (a base_url without /v1 passed, and every turn then failed)."""
    from http.server import HTTPServer

    from assistant import cli
    from assistant.errors import AssistantError

    class Models(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ok = self.headers.get("Authorization") == "Bearer k"
            status = 401 if not ok else 200 if self.path == "/v1/models" else 404 if self.path == "/models" else 500
            self.send_response(status)
            self.end_headers()
            self.wfile.write(b'{"data": []}')

        def log_message(self, *args: Any) -> None:
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Models)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
        cfg = Config().replace({"llm.backend": "openai", "llm.base_url": base, "llm.api_key_file": ""})
        with pytest.raises(AssistantError, match="refused the API key"):
            cli._check_llm_server(cfg.llm)
        monkeypatch.setenv("INTEG_TEST_KEY", "k")
        cli._check_llm_server(cfg.replace({"llm.api_key_env": "INTEG_TEST_KEY"}).llm)
        # a base_url without /v1 (the server is up, the path is not its API): it passed, and every turn failed
        root = cfg.replace({"llm.api_key_env": "INTEG_TEST_KEY", "llm.base_url": base.removesuffix("/v1")})
        with pytest.raises(AssistantError, match=r"answered HTTP 404 for .*/models: llm.base_url is not its OpenAI"):
            cli._check_llm_server(root.llm)
        broken = cfg.replace({"llm.api_key_env": "INTEG_TEST_KEY", "llm.base_url": base + "/x"})
        with pytest.raises(AssistantError, match=r"answered HTTP 500 for .*/v1/x/models; see the server's log"):
            cli._check_llm_server(broken.llm)
    finally:
        httpd.shutdown()
        httpd.server_close()
    with pytest.raises(AssistantError, match="not reachable"):
        cli._check_llm_server(cfg.replace({"llm.base_url": f"http://127.0.0.1:{free_port()}/v1"}).llm)


def test_tool_choice_is_sent_in_the_openai_format() -> None:
    """A required or named tool choice goes to the server as the request's tool_choice; "none" as "none"."""
    tools = [{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]
    script = scripted(lambda h, body: sse(h, [text_chunk("Noon.")]))
    choices = [ToolChoice("function", "get_time"), ToolChoice("required"), ToolChoice("none")]
    with ScriptedServer(script) as srv:
        chat = RemoteChat(cfg_for(srv.base_url))
        for choice in choices:
            assert chat.set_tools(tools, choice)
            assert "".join(chat.respond("What time is it?")) == "Noon."
            chat.finish_turn(None)
    sent = [b["tool_choice"] for b in script.bodies]
    assert sent == [{"type": "function", "function": {"name": "get_time"}}, "required", "none"]


def test_a_base_url_naming_the_endpoint_is_refused_with_the_root() -> None:
    """llm.base_url given as the full endpoint (`.../v1/chat/completions`, as server docs print it) is a ConfigError
    naming the API root to use (every turn failed, posting to `.../chat/completions/chat/completions`)."""
    for given in ("http://127.0.0.1:8080/v1/chat/completions", "http://127.0.0.1:8080/v1/chat/completions/"):
        with pytest.raises(ConfigError) as e:
            RemoteChat(cfg_for(given))
        assert str(e.value) == (
            f"llm.base_url = {given!r} names the endpoint; give the API root the endpoints hang from, e.g. "
            "http://127.0.0.1:8080/v1"
        )
    RemoteChat(cfg_for("http://127.0.0.1:8080/v1/"))


@pytest.mark.parametrize(
    "url", ["http://", "https:///v1", "http://127.0.0.1:80a/v1", "http://[::1/v1", "http://h:0/v1"]
)
def test_a_base_url_without_a_usable_host_is_refused_at_start(url: str) -> None:
    """An llm.base_url with no host or a bad port is refused naming the form; "http://" was accepted and every turn
    then failed "dropped the connection mid-answer (UnsupportedProtocol ...)"."""
    with pytest.raises(ConfigError, match=r"is not an http\(s\) URL with a host .*e\.g\. http://127\.0\.0\.1:8080/v1"):
        RemoteChat(LlmConfig(backend="openai", base_url=url, model="x"))
    RemoteChat(LlmConfig(backend="openai", base_url="http://[::1]:8080/v1", model="x")).close()
