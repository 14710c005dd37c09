"""Tool execution and the built-in tools: error results instead of crashes, timeouts, cancellation (barge-in),
the filler decision, the clock in the user's zone, reminders set/listed/cancelled by tool call and fired by the
scheduler while idle and after a restart, and the tools declared in config.toml (command and HTTP)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
import threading
from collections.abc import Mapping
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from assistant import config
from assistant.errors import ConfigError
from assistant.memory import Memory, Reminder
from assistant.tools import timers
from assistant.tools.builtin import date_line, zone
from assistant.tools.calls import ToolCall
from assistant.tools.registry import Tool, Toolbox, check_arguments, pick_filler
from assistant.tools.setup import build_toolbox
from assistant.tools.timers import ReminderScheduler, reminder_speech, speak_reminders

PARIS = ZoneInfo("Europe/Paris")
# Monday 7 December 2026, 14:05:00 in Paris (UTC+1).
NOW = datetime(2026, 12, 7, 14, 5, tzinfo=PARIS).timestamp()


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def toolbox(tmp_path: Path, clock: Clock, **tools_cfg: Any) -> tuple[Toolbox, Any, Memory]:
    cfg = config.Config().replace({"tools.timezone": "Europe/Paris", **{f"tools.{k}": v for k, v in tools_cfg.items()}})
    memory = Memory(tmp_path / "m.sqlite3")
    box, scheduler = build_toolbox(cfg, memory, clock)
    return box, scheduler, memory


async def call(box: Toolbox, name: str, **arguments: Any) -> dict[str, Any]:
    (result,) = await box.start([ToolCall(name, arguments)]).results()
    return json.loads(result.content)


def test_unknown_malformed_and_bad_arguments_give_error_results(tmp_path: Path) -> None:
    """An unknown tool, a call the parser rejected, missing or mistyped arguments and a raising tool each give
    an error result naming the fix; the other calls of the round still run."""

    async def boom(_: Mapping[str, Any]) -> Any:
        raise RuntimeError("disk on fire")

    async def body() -> None:
        box, _, _ = toolbox(tmp_path, Clock(NOW))
        box = Toolbox([*box.tools, Tool("boom", "fails", {"type": "object", "properties": {}}, boom)])
        round_ = box.start(
            [
                ToolCall("nope"),
                ToolCall("", raw="<|tool_call>x", error="the tool call could not be parsed (x)"),
                ToolCall("cancel_reminder", {"id": "three"}),
                ToolCall("boom"),
                ToolCall("get_time"),
            ]
        )
        results = await round_.results()
        errors = [json.loads(r.content).get("error", "") for r in results]
        assert errors[0].startswith("there is no tool `nope`; the tools are: get_time, set_reminder")
        assert errors[1] == "the tool call could not be parsed (x)"
        assert errors[2] == 'cancel_reminder: argument `id` must be integer, got "three"'
        assert errors[3] == "boom failed: RuntimeError: disk on fire"
        assert [r.ok for r in results] == [False, False, False, False, True]

    asyncio.run(body())


def test_check_arguments() -> None:
    """The schema check: required keys, types (a bool is not an integer), enums, closed objects."""
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer"}, "mode": {"type": "string", "enum": ["a", "b"]}},
        "required": ["n"],
        "additionalProperties": False,
    }
    assert check_arguments(schema, {"n": 1, "mode": "a"}) == ""
    assert check_arguments(schema, {}) == "missing required argument(s): n"
    assert check_arguments(schema, {"n": True}) == "argument `n` must be integer, got true"
    assert check_arguments(schema, {"n": 1, "mode": "c"}) == 'argument `mode` must be one of ["a", "b"], got "c"'
    assert check_arguments(schema, {"n": 1, "x": 0}) == "unknown argument `x`; the arguments are: n, mode"


def test_slow_tool_wants_a_filler_times_out_and_can_be_cancelled() -> None:
    """A slow tool is not done within the filler delay (so a filler is due); past its timeout it gives an error
    result; a round cancelled by barge-in stops the tool at once."""
    started = []

    async def slow(_: Mapping[str, Any]) -> str:
        started.append(True)
        await asyncio.sleep(30)
        return "never"

    async def body() -> None:
        box = Toolbox([Tool("slow", "slow", {}, slow, timeout_s=0.2)])
        round_ = box.start([ToolCall("slow")])
        assert not await round_.done_within(0.05)  # the filler decision
        assert pick_filler(["One moment."]) == "One moment." and pick_filler([]) == ""
        (result,) = await round_.results()
        assert json.loads(result.content) == {"error": "slow took longer than 0.2 s and was stopped"}
        box = Toolbox([Tool("slow", "slow", {}, slow, timeout_s=30)])
        round_ = box.start([ToolCall("slow")])
        await round_.done_within(0.05)
        round_.cancel()
        with pytest.raises(asyncio.CancelledError):
            await round_.results()
        assert round_.cancelled and len(started) == 2

    asyncio.run(body())


def test_time_tool_and_date_line(tmp_path: Path) -> None:
    """get_time answers in the configured zone; the system-prompt line gives the date and zone only."""

    async def body() -> None:
        box, _, _ = toolbox(tmp_path, Clock(NOW))
        assert await call(box, "get_time") == {
            "time": "14:05",
            "weekday": "Monday",
            "date": "2026-12-07",
            "timezone": "Europe/Paris",
            "utc_offset": "+01:00",
        }

    asyncio.run(body())
    assert date_line(NOW, PARIS) == "Today is Monday, 7 December 2026; the user's time zone is Europe/Paris."
    with pytest.raises(ConfigError, match=r"tools\.timezone"):
        zone("Mars/Olympus")


def test_the_system_time_zone_follows_daylight_saving_in_a_long_running_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With tools.timezone = "" the toolbox built at start answers in the system's zone with its DST rules: a
    daemon started in winter still tells the right time after the spring change (a fixed offset was an hour off)."""
    monkeypatch.setenv("TZ", "Europe/Paris")
    clock = Clock(NOW)  # December: UTC+1
    cfg = config.Config().replace({"tools.timezone": ""})
    box, _ = build_toolbox(cfg, Memory(tmp_path / "m.sqlite3"), clock)

    async def body() -> list[dict[str, Any]]:
        winter = await call(box, "get_time")
        clock.t = datetime(2027, 7, 1, 12, 0, tzinfo=PARIS).timestamp()  # weeks later, summer time: UTC+2
        return [winter, await call(box, "get_time")]

    winter, summer = asyncio.run(body())
    assert (winter["time"], winter["utc_offset"]) == ("14:05", "+01:00")
    assert (summer["time"], summer["utc_offset"], summer["timezone"]) == ("12:00", "+02:00", "Europe/Paris")
    monkeypatch.setenv("TZ", "/usr/share/zoneinfo/America/New_York")  # a zone file, as launchd or systemd may set
    assert date_line(NOW, zone("")) == "Today is Monday, 7 December 2026; the user's time zone is America/New_York."


def test_reminders_by_tool_call_fire_while_idle_and_after_restart(tmp_path: Path) -> None:
    """Reminders set by tool calls are listed and cancelled by tool calls; the scheduler yields one as it falls
    due with nothing else happening; after a restart, one that fell due while down fires at once."""
    clock = Clock(NOW)

    async def body() -> None:
        box, scheduler, memory = toolbox(tmp_path, clock)
        got = await call(box, "set_reminder", text="call Anna", in_minutes=10)
        assert got == {"set": {"id": 1, "text": "call Anna", "due": "14:15", "in": "10 minutes"}}
        await call(box, "set_reminder", at="09:30")  # tomorrow morning: a plain timer
        await call(box, "set_reminder", in_seconds=90, text="tea")
        listed = await call(box, "list_reminders")
        assert [(r["id"], r["in"]) for r in listed["reminders"]] == [(3, "1 minute 30 seconds"), (1, "10 minutes"),
                                                                      (2, "19 hours 25 minutes")]  # fmt: skip
        assert listed["reminders"][2]["due"] == "Tuesday 8 December 09:30"
        assert await call(box, "cancel_reminder", id=3) == {"cancelled": [3]}
        assert "no pending reminder has id 3" in (await call(box, "cancel_reminder", id=3))["error"]
        assert "between 1 second and a year" in (await call(box, "set_reminder", in_minutes=-5))["error"]

        due = scheduler.due()
        waiting = asyncio.ensure_future(anext(due))
        await asyncio.sleep(0.05)
        assert not waiting.done()  # nothing due yet: the scheduler sleeps
        clock.t = NOW + 600
        scheduler.changed()  # (the real clock would wake it at the due time; this one is moved by hand)
        fired = await asyncio.wait_for(waiting, 5)
        assert (fired.id, reminder_speech(fired)) == (1, "Reminder: call Anna")
        scheduler.done(fired)
        await due.aclose()
        memory.close()

        clock.t = NOW + 24 * 3600  # the daemon was down when the 09:30 timer fell due
        box, scheduler, memory = toolbox(tmp_path, clock)
        fired = await asyncio.wait_for(anext(scheduler.due()), 5)
        assert (fired.id, reminder_speech(fired)) == (2, "Your timer is done.")
        assert [r.id for r in memory.pending_reminders()] == [2]  # fires again if not marked done
        scheduler.done(fired)
        assert memory.pending_reminders() == []

    asyncio.run(body())


def test_scheduler_wakes_at_the_due_time_on_its_own(tmp_path: Path) -> None:
    """With the real clock, a reminder due in 0.3 s is yielded without any other event."""
    import time

    async def body() -> None:
        box, scheduler, _ = toolbox(tmp_path, time.time)  # type: ignore[arg-type]
        await call(box, "set_reminder", in_seconds=0.3, text="now")
        fired = await asyncio.wait_for(anext(scheduler.due()), 10)
        assert fired.text == "now"

    asyncio.run(body())


def custom(tmp_path: Path, name: str, table: str) -> config.Config:
    path = tmp_path / "c.toml"
    path.write_text(f'[tools]\nenabled = ["{name}"]\n[tools.custom.{name}]\n{table}')
    return config.load(str(path))


def test_command_tool_runs_argv_without_a_shell_with_limits(tmp_path: Path) -> None:
    """A declared command gets its arguments as whole argv items (no shell expands them), its output is cut at
    max_output_bytes, and a command past its timeout is killed with an error result."""
    echo = custom(
        tmp_path,
        "echo",
        f'description = "echo"\nargv = ["{sys.executable}", "-c", "import sys; print(sys.argv[1:])", "{{what}}"]\n'
        'parameters = { type = "object", properties = { what = { type = "string" } }, required = ["what"] }\n',
    )
    chatty = custom(
        tmp_path,
        "chatty",
        f'description = "loud"\nargv = ["{sys.executable}", "-c", "print(\'x\' * 100000)"]\nmax_output_bytes = 100\n',
    )
    sleepy = custom(
        tmp_path,
        "sleepy",
        f'description = "slow"\nargv = ["{sys.executable}", "-c", "import time; time.sleep(30)"]\ntimeout_s = 0.5\n',
    )

    async def body() -> None:
        box, _ = build_toolbox(echo, Memory(tmp_path / "m.sqlite3"))
        assert box.tools[0].reach == "command"
        out = await call(box, "echo", what="$(rm -rf ~); `x` * ;")
        assert out == {"exit_code": 0, "output": "['$(rm -rf ~); `x` * ;']\n"}
        box, _ = build_toolbox(chatty, Memory(tmp_path / "m.sqlite3"))
        out = await call(box, "chatty")
        assert out["output"] == "x" * 100 + "\n[output cut at 100 bytes]"
        box, _ = build_toolbox(sleepy, Memory(tmp_path / "m.sqlite3"))
        assert await call(box, "sleepy") == {"error": "sleepy took longer than 0.5 s and was stopped"}

    asyncio.run(body())


def test_http_tool_against_a_loopback_server(tmp_path: Path) -> None:
    """A declared HTTP tool fills the URL (quoted), sends the other arguments as the query (GET) or JSON (POST)
    with its headers, and cuts a long body."""
    seen: list[tuple[str, str, str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, body: bytes) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            seen.append(("GET", self.path, "", self.headers.get("X-Key", "")))
            self._reply(b"sunny" * 100)

        def do_POST(self) -> None:
            data = self.rfile.read(int(self.headers["Content-Length"])).decode()
            seen.append(("POST", self.path, data, self.headers.get("X-Key", "")))
            self._reply(b'{"ok": true}')

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    schema = (
        'parameters = { type = "object", properties = { city = { type = "string" }, days = { type = "integer" } } }\n'
    )
    get = custom(
        tmp_path,
        "weather",
        f'kind = "http"\ndescription = "weather"\nurl = "http://127.0.0.1:{port}/w/{{city}}"\n{schema}'
        'headers = { X-Key = "k1" }\nmax_output_bytes = 64\n',
    )
    post = custom(
        tmp_path, "notes", f'kind = "http"\ndescription = "notes"\nurl = "http://127.0.0.1:{port}/n"\nmethod = "POST"\n'
    )

    async def body() -> None:
        box, _ = build_toolbox(get, Memory(tmp_path / "m.sqlite3"))
        assert box.tools[0].reach == "network"
        out = await call(box, "weather", city="São Paulo/x", days=2)
        assert out == {"status": 200, "body": ("sunny" * 13)[:64] + "\n[output cut at 64 bytes]"}
        box, _ = build_toolbox(post, Memory(tmp_path / "m.sqlite3"))
        assert await call(box, "notes", text="buy milk") == {"status": 200, "body": '{"ok": true}'}

    try:
        asyncio.run(body())
    finally:
        server.shutdown()
    assert seen == [
        ("GET", "/w/S%C3%A3o%20Paulo%2Fx?days=2", "", "k1"),
        ("POST", "/n", '{"text": "buy milk"}', ""),
    ]


@pytest.mark.parametrize(
    "table, message",
    [
        ('description = "x"\n', "`tools.custom.t.argv` is empty"),
        ('kind = "http"\ndescription = "x"\nurl = "ftp://a"\n', "must start with http:// or https://"),
        ('argv = ["/bin/true"]\n', "`tools.custom.t.description` is empty"),
        ('description = "x"\nargv = ["/bin/true"]\nparameters = { type = "string" }\n', 'type = "object"'),
        ('description = "x"\nargv = ["/bin/true"]\ntimeout = 3\n', "unknown key `tools.custom.t.timeout`"),
        ('description = "x"\nargv = ["/bin/true"]\ntimeout_s = 0\n', "out of range"),
        ('description = "x"\nargv = ["no-such-program-here"]\n', "not an executable file"),
        ('description = "x"\nargv = ["/bin/echo", "{city}"]\n', "uses {city}, which `parameters.properties`"),
        ('kind = "http"\ndescription = "x"\nurl = "http://a/{q}"\n', "uses {q}, which"),
        # these crashed with a TypeError traceback (properties not a table) or reached the chat template
        ('description = "x"\nargv = ["/bin/true"]\nparameters = { properties = 3 }\n', "must be a table of schemas"),
        ('description = "x"\nargv = ["/bin/true"]\nparameters = { properties = { a = "string" } }\n', "e.g. { city"),
        (
            'description = "x"\nargv = ["/bin/true"]\nparameters = { properties = { a = {} }, required = ["b"] }\n',
            "`tools.custom.t.parameters.required` must be a list of names from its properties (a), got",
        ),
        # these were accepted, and every call then failed with a traceback in the log
        ('kind = "http"\ndescription = "x"\nurl = "http://"\n', "`tools.custom.t.url` 'http://' is not a URL of a"),
        ('kind = "http"\ndescription = "x"\nurl = "http://a b/"\n', "is not a URL of a host"),
        ('kind = "http"\ndescription = "x"\nurl = "http://[::1/"\n', "is not a URL of a host"),
        (
            'kind = "http"\ndescription = "x"\nurl = "http://a/"\nheaders = { "X Key" = "v" }\n',
            "`tools.custom.t.headers` name 'X Key' is not an HTTP header name",
        ),
        (
            'kind = "http"\ndescription = "x"\nurl = "http://a/"\nheaders = { "X-Key" = "v\\nInjected: 1" }\n',
            "`tools.custom.t.headers.X-Key` has a line break",
        ),
    ],
)
def test_bad_tool_declarations_fail_at_load(tmp_path: Path, table: str, message: str) -> None:
    """A mistake in a [tools.custom] table fails at load with one line naming the key and the fix."""
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        custom(tmp_path, "t", table)


def test_unknown_enabled_name_fails_at_build(tmp_path: Path) -> None:
    """Enabling a tool that is neither built in nor declared names the known ones."""
    cfg = config.Config().replace({"tools.enabled": ["time", "wether"]})
    with pytest.raises(ConfigError, match=r"`wether`.*known: time, reminders"):
        build_toolbox(cfg, Memory(tmp_path / "m.sqlite3"))


def test_barge_in_cancel_kills_a_running_command(tmp_path: Path) -> None:
    """Cancelling the round (barge-in) while a command tool runs kills its process; nothing is left running."""
    import os

    pidfile = tmp_path / "pid"
    code = f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    cfg = custom(
        tmp_path, "wait", f'description = "waits"\nargv = ["{sys.executable}", "-c", "{code}"]\ntimeout_s = 60\n'
    )

    async def body() -> int:
        box, _ = build_toolbox(cfg, Memory(tmp_path / "m.sqlite3"))
        round_ = box.start([ToolCall("wait")])
        while not (pidfile.exists() and pidfile.read_text()):
            assert not await round_.done_within(0.05)
        round_.cancel()
        with pytest.raises(asyncio.CancelledError):
            await round_.results()
        return int(pidfile.read_text())

    pid = asyncio.run(body())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_due_reminders_are_spoken_after_the_reply_in_progress(tmp_path: Path) -> None:
    """speak_reminders waits until no reply is in flight before speaking; a reminder that could not be spoken is
    reported and stays pending (it fires again at the next start)."""

    class Voice:
        def __init__(self) -> None:
            self.idle = asyncio.Event()  # set: the reply in progress has ended
            self.spoke = asyncio.Event()
            self.said: list[str] = []
            self.errors: list[str] = []

        async def quiet(self) -> None:
            await self.idle.wait()

        async def say(self, text: str) -> None:
            if "broken" in text:
                raise RuntimeError("the TTS failed")
            self.said.append(text)
            self.spoke.set()

        def failed(self, exc: BaseException, what: str) -> None:
            self.errors.append(what)

    async def body() -> None:
        memory = Memory(tmp_path / "m.sqlite3")
        memory.add_reminder(NOW - 20, "broken", NOW - 60)
        memory.add_reminder(NOW - 10, "call Anna", NOW - 60)
        voice = Voice()
        speaking = asyncio.create_task(speak_reminders(ReminderScheduler(memory, lambda: NOW), voice))
        await asyncio.sleep(0.05)
        assert voice.said == [] and voice.errors == []  # a reply is still in flight
        voice.idle.set()
        async with asyncio.timeout(5):
            await voice.spoke.wait()
        speaking.cancel()
        assert voice.said == ["Reminder: call Anna"] and voice.errors == ["speaking reminder 1"]
        assert [r.text for r in memory.pending_reminders()] == ["broken"]
        memory.close()

    asyncio.run(body())


def test_a_database_failure_does_not_end_the_reminders_for_good(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The memory database failing to read the reminders or to mark one fired (a full disk) is reported and
    retried: the service used to end on it, and no reminder was spoken again for the life of the daemon."""
    monkeypatch.setattr(timers, "MAX_WAIT_S", 0.01)

    class FullDisk(Memory):
        def __init__(self, path: Path) -> None:
            super().__init__(path)
            self.failures = ["pending_reminders", "mark_fired"]  # each fails once, in this order

        def _maybe_fail(self, what: str) -> None:
            if self.failures and self.failures[0] == what:
                self.failures.pop(0)
                raise sqlite3.OperationalError("database or disk is full")

        def pending_reminders(self) -> list[Reminder]:
            self._maybe_fail("pending_reminders")
            return super().pending_reminders()

        def mark_fired(self, reminder_id: int, at: float) -> None:
            self._maybe_fail("mark_fired")
            super().mark_fired(reminder_id, at)

    class Voice:
        def __init__(self) -> None:
            self.said: list[str] = []
            self.errors: list[str] = []

        async def quiet(self) -> None:
            pass

        async def say(self, text: str) -> None:
            self.said.append(text)

        def failed(self, exc: BaseException, what: str) -> None:
            self.errors.append(f"{what}: {exc}")

    async def body() -> tuple[Voice, list[str]]:
        memory = FullDisk(tmp_path / "m.sqlite3")
        memory.add_reminder(NOW - 20, "first", NOW - 60)
        memory.add_reminder(NOW - 10, "second", NOW - 60)
        voice = Voice()
        speaking = asyncio.create_task(speak_reminders(ReminderScheduler(memory, lambda: NOW), voice))
        for _ in range(500):  # a safety net (5 s), never a timing assertion
            if len(voice.said) == 2 and not memory.failures:
                break
            await asyncio.sleep(0.01)
        speaking.cancel()
        pending = [r.text for r in memory.pending_reminders()]
        memory.close()
        return voice, pending

    voice, pending = asyncio.run(body())
    assert voice.said == ["Reminder: first", "Reminder: second"]  # each once
    assert [e.split(":")[0] for e in voice.errors] == [
        "reading or updating the reminders in the memory database (retrying)"
    ] * 2
    assert pending == ["first"]  # its fired mark was lost: it is spoken again at the next start, as after a crash


@pytest.mark.parametrize(
    ("name", "enabled", "message"),
    [
        ("time", ["time"], "[tools.custom.time] has the name of the built-in `time` tools; rename the table"),
        ("reminders", ["time"], "[tools.custom.reminders] has the name of the built-in `reminders` tools"),
        ("get_time", ["time", "get_time"], "two enabled tools are named `get_time`"),
        ("up", ["up", "up"], "two enabled tools are named `up`"),
    ],
)
def test_a_custom_tool_that_clashes_with_another_fails_at_build(
    tmp_path: Path, name: str, enabled: list[str], message: str
) -> None:
    """A [tools.custom] table named like a built-in tool set or tool, or a name enabled twice, fails at build
    (the custom tool was silently never run, or the model was offered two functions of one name)."""
    path = tmp_path / "c.toml"
    path.write_text(
        f'[tools]\nenabled = {json.dumps(enabled)}\n[tools.custom.{name}]\ndescription = "x"\nargv = ["/bin/true"]\n'
    )
    with pytest.raises(ConfigError) as e:
        build_toolbox(config.load(str(path)), Memory(tmp_path / "m.sqlite3"))
    assert str(e.value).startswith(message), str(e.value)
