"""A stand-in for mod_python3's ``freeswitch`` module, backed by the switch simulator.

Construction: the module is built around a loaded simulator, because events live on
the simulator side (so ``switch_channel_event_set_data`` can fill them through ctypes)::

    from audio_stream.testing.sim import SimSwitch
    from audio_stream.testing import fake_freeswitch

    sw = SimSwitch()
    freeswitch = fake_freeswitch.bind(sw)      # a fresh module object named "freeswitch"
    # or: freeswitch = fake_freeswitch.install(sw)   # also sys.modules["freeswitch"]

What mod_python3 provides and this module imitates (switch_cpp.cpp in v1.10.12):

- ``Event(type, subclass_name=None)``: an unknown type name becomes MESSAGE; a subclass
  with a non-CUSTOM type becomes CUSTOM; ``Event-Subclass`` is a header from creation.
  ``addHeader(k, v)`` (appends, duplicates allowed), ``delHeader(k)``, ``addBody(s)``
  (replaces the body), ``getHeader(k)`` (first match, case-insensitive), ``getBody()``,
  ``getType()``, ``serialize(fmt)``, ``fire()`` (fires a copy: the Event stays usable).
  ``ev.event`` behaves like the SWIG ``switch_event_t *``: ``int(ev.event)`` is the
  address of the simulator-side event, so the code under test can call
  ``switch_channel_event_set_data(channel, int(ev.event))`` through ctypes.
- ``EventConsumer(event_name=None, subclass_name="", len=5000)``: ``bind(event_name, subclass_name="")``,
  ``pop(block=0, timeout=0)`` (an event with ``getHeader``/``getBody``/``getType``/``serialize``, or
  None), ``cleanup()`` (also on deletion). As in mod_python3, it binds through the core's
  ``switch_event_bind_removable`` (here the simulator's) and its handler only copies each event
  into a bounded queue; events are whatever the simulated core fires (e.g. DTMF when a call's
  application takes a digit from its queue) on the simulator's dispatch thread.
- ``consoleLog(level, msg)``, ``consoleCleanLog(msg)``.
- ``Stream`` (``write``, ``raw_write``, ``get_data``), ``Session(uuid)`` (``get_uuid``,
  ``uuid``, ``getVariable``, ``setVariable``, ``ready``), ``API`` (``execute``,
  ``executeString``; commands come from ``register_api``).

Test helpers on the module: ``fired(subclass=None)`` (list of dicts, oldest first),
``wait_for(subclass, timeout=5.0, predicate=None)`` (returns the first matching fired
event, waiting if needed; raises TimeoutError), ``clear()`` (events and logs),
``logs()`` (list of (level, msg)), ``register_api(name, fn)``.
A fired event is recorded as a plain dict: ``{"Event-Name": ..., "Event-Subclass": ...,
<every header, later duplicates overwrite earlier ones>, "_body": body or None}``.
Set ``AUDIO_STREAM_SIM_LOG=1`` to also print consoleLog lines.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import threading
import time
import types
from ctypes import c_char_p, c_int, c_void_p
from typing import Any, Callable

from audio_stream.testing.sim import SimSwitch

# switch_event.c EVENT_NAMES
EVENT_NAMES = (
    "CUSTOM CLONE CHANNEL_CREATE CHANNEL_DESTROY CHANNEL_STATE CHANNEL_CALLSTATE CHANNEL_ANSWER "
    "CHANNEL_HANGUP CHANNEL_HANGUP_COMPLETE CHANNEL_EXECUTE CHANNEL_EXECUTE_COMPLETE CHANNEL_HOLD "
    "CHANNEL_UNHOLD CHANNEL_BRIDGE CHANNEL_UNBRIDGE CHANNEL_PROGRESS CHANNEL_PROGRESS_MEDIA "
    "CHANNEL_OUTGOING CHANNEL_PARK CHANNEL_UNPARK CHANNEL_APPLICATION CHANNEL_ORIGINATE CHANNEL_UUID "
    "API LOG INBOUND_CHAN OUTBOUND_CHAN STARTUP SHUTDOWN PUBLISH UNPUBLISH TALK NOTALK SESSION_CRASH "
    "MODULE_LOAD MODULE_UNLOAD DTMF MESSAGE PRESENCE_IN NOTIFY_IN PRESENCE_OUT PRESENCE_PROBE "
    "MESSAGE_WAITING MESSAGE_QUERY ROSTER CODEC BACKGROUND_JOB DETECTED_SPEECH DETECTED_TONE "
    "PRIVATE_COMMAND HEARTBEAT TRAP ADD_SCHEDULE DEL_SCHEDULE EXE_SCHEDULE RE_SCHEDULE RELOADXML "
    "NOTIFY PHONE_FEATURE PHONE_FEATURE_SUBSCRIBE SEND_MESSAGE RECV_MESSAGE REQUEST_PARAMS "
    "CHANNEL_DATA GENERAL COMMAND SESSION_HEARTBEAT CLIENT_DISCONNECTED SERVER_DISCONNECTED "
    "SEND_INFO RECV_INFO RECV_RTCP_MESSAGE SEND_RTCP_MESSAGE CALL_SECURE NAT RECORD_START "
    "RECORD_STOP PLAYBACK_START PLAYBACK_STOP CALL_UPDATE FAILURE SOCKET_DATA MEDIA_BUG_START "
    "MEDIA_BUG_STOP CONFERENCE_DATA_QUERY CONFERENCE_DATA CALL_SETUP_REQ CALL_SETUP_RESULT "
    "CALL_DETAIL DEVICE_STATE TEXT SHUTDOWN_REQUESTED ALL"
).split()


def _s(b: bytes | None) -> str | None:
    return None if b is None else b.decode("utf-8", "replace")


def _b(s: Any) -> bytes | None:
    return None if s is None else str(s).encode()


class SwigPointer:
    """Looks like a SWIG ``switch_event_t *``: int() gives the address."""

    __slots__ = ("_addr",)

    def __init__(self, addr: int):
        self._addr = addr or 0

    def __int__(self) -> int:
        return self._addr

    __index__ = __int__

    def __bool__(self) -> bool:
        return bool(self._addr)

    def __repr__(self) -> str:
        return f"<Swig Object of type 'switch_event_t *' at {self._addr:#x}>"


class _Recorder:
    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.events: list[dict[str, Any]] = []
        self.logs: list[tuple[str, str]] = []
        self.apis: dict[str, Callable[[str], str]] = {}


def bind(sim: SimSwitch | ctypes.CDLL) -> types.ModuleType:
    """Return a new ``freeswitch`` module object bound to this simulator."""
    lib = sim.lib if isinstance(sim, SimSwitch) else sim
    # a private CDLL instance: our switch_* prototypes must not clash with the project's
    core = ctypes.CDLL(lib._name)
    core.switch_core_session_perform_locate.restype = c_void_p
    core.switch_core_session_perform_locate.argtypes = [c_char_p, c_char_p, c_char_p, c_int]
    core.switch_core_session_rwunlock.restype = None
    core.switch_core_session_rwunlock.argtypes = [c_void_p]
    core.switch_core_session_get_channel.restype = c_void_p
    core.switch_core_session_get_channel.argtypes = [c_void_p]
    core.switch_channel_get_variable_dup.restype = c_char_p
    core.switch_channel_get_variable_dup.argtypes = [c_void_p, c_char_p, c_int, c_int]

    EVENT_CB = ctypes.CFUNCTYPE(None, c_void_p)
    core.switch_event_bind_removable.restype = c_int
    core.switch_event_bind_removable.argtypes = [c_char_p, c_int, c_char_p, EVENT_CB, c_void_p,
                                                 ctypes.POINTER(c_void_p)]
    core.switch_event_unbind.restype = c_int
    core.switch_event_unbind.argtypes = [ctypes.POINTER(c_void_p)]

    rec = _Recorder()
    mod = types.ModuleType("freeswitch", __doc__)
    mod.__file__ = __file__

    class Event:
        def __init__(self, type: str, subclass_name: str | None = None):  # noqa: A002 (mod_python's name)
            name = str(type).upper()
            if name not in EVENT_NAMES:
                name = "MESSAGE"
            if subclass_name and name != "CUSTOM":
                name = "CUSTOM"
            self._name = name
            self._ptr: int | None = lib.fssim_event_new(name.encode(), _b(subclass_name or None))
            self.event = SwigPointer(self._ptr or 0)

        def _live(self) -> int:
            if not self._ptr:
                raise RuntimeError("event already destroyed")
            return self._ptr

        def addHeader(self, header_name: str, value: Any) -> bool:
            lib.fssim_event_add_header(self._live(), _b(header_name), _b(value))
            return True

        def delHeader(self, header_name: str) -> bool:
            lib.fssim_event_del_header(self._live(), _b(header_name))
            return True

        def addBody(self, value: Any) -> bool:
            lib.fssim_event_set_body(self._live(), _b(value))
            return True

        def getHeader(self, header_name: str) -> str | None:
            if not header_name:
                return None
            return _s(lib.fssim_event_get_header(self._live(), _b(header_name)))

        def getBody(self) -> str | None:
            return _s(lib.fssim_event_get_body(self._live()))

        def getType(self) -> str:
            return self._name

        def headers(self) -> list[tuple[str, str]]:
            """All headers in order (not in mod_python; handy in tests)."""
            p = self._live()
            n = lib.fssim_event_header_count(p)
            return [
                (_s(lib.fssim_event_header_name(p, i)) or "", _s(lib.fssim_event_header_value(p, i)) or "")
                for i in range(n)
            ]

        def _snapshot(self) -> dict[str, Any]:
            d: dict[str, Any] = {"Event-Name": self._name}
            for k, v in self.headers():
                d[k] = v
            d["_body"] = self.getBody()
            return d

        def serialize(self, format: str = "") -> str:  # noqa: A002
            d = self._snapshot()
            if format == "json":
                return json.dumps({k: v for k, v in d.items() if v is not None})
            lines = [f"{k}: {v}" for k, v in d.items() if k != "_body"]
            body = d["_body"]
            if body:
                lines.append(f"Content-Length: {len(body.encode())}")
                return "\n".join(lines) + "\n\n" + body
            return "\n".join(lines) + "\n"

        def fire(self) -> bool:
            d = self._snapshot()
            with rec.cond:
                rec.events.append(d)
                rec.cond.notify_all()
            return True

        def __del__(self) -> None:
            ptr, self._ptr = getattr(self, "_ptr", None), None
            if ptr:
                try:
                    lib.fssim_event_free(ptr)
                except Exception:  # interpreter shutdown
                    pass

    class _PoppedEvent:
        """An event taken from an EventConsumer (mod_python3 hands out a duplicate it owns)."""

        def __init__(self, name: str, headers: list[tuple[str, str]], body: str | None):
            self._name = name
            self._headers = headers
            self._body = body

        def getHeader(self, header_name: str) -> str | None:
            for k, v in self._headers:
                if k.lower() == str(header_name).lower():
                    return v
            return None

        def getBody(self) -> str | None:
            return self._body

        def getType(self) -> str:
            return self._name

        def serialize(self, format: str = "") -> str:  # noqa: A002
            d = {"Event-Name": self._name, **dict(self._headers)}
            if format == "json":
                if self._body is not None:
                    d["_body"] = self._body
                return json.dumps(d)
            return "\n".join(f"{k}: {v}" for k, v in d.items()) + "\n"

    class EventConsumer:
        def __init__(self, event_name: str | None = None, subclass_name: str = "", len: int = 5000):  # noqa: A002
            self._cond = threading.Condition()
            self._queue: list[_PoppedEvent] = []
            self._len = len
            self._nodes: list[c_void_p] = []
            self._cbs: list[Any] = []
            self._ready = True
            if event_name:
                self.bind(event_name, subclass_name)

        def _handler(self, ptr: int) -> None:
            # on the simulator's dispatch thread, like mod_python3's C event_handler: copy and queue
            n = lib.fssim_event_header_count(ptr)
            headers = [(_s(lib.fssim_event_header_name(ptr, i)) or "", _s(lib.fssim_event_header_value(ptr, i)) or "")
                       for i in range(n)]
            ev = _PoppedEvent(_s(lib.fssim_event_name(ptr)) or "", headers, _s(lib.fssim_event_get_body(ptr)))
            with self._cond:
                if len(self._queue) >= self._len:
                    return          # "Cannot queue any more events....."
                self._queue.append(ev)
                self._cond.notify_all()

        def bind(self, event_name: str, subclass_name: str = "") -> int:
            if not self._ready:
                return 0
            name = str(event_name).upper()
            if name not in EVENT_NAMES:
                return 0
            cb = EVENT_CB(lambda p: self._handler(p))
            node = c_void_p()
            if core.switch_event_bind_removable(b"fake_freeswitch.py", EVENT_NAMES.index(name), _b(subclass_name or None),
                                                cb, None, ctypes.byref(node)) != 0:
                return 0
            self._cbs.append(cb)
            self._nodes.append(node)
            return 1

        def pop(self, block: int = 0, timeout: int = 0) -> _PoppedEvent | None:
            if not self._ready:
                return None
            with self._cond:
                if block and not self._queue:
                    self._cond.wait_for(lambda: bool(self._queue) or not self._ready,
                                        timeout / 1000.0 if timeout > 0 else None)
                return self._queue.pop(0) if self._queue else None

        def cleanup(self) -> None:
            if not self._ready:
                return
            self._ready = False
            for node in self._nodes:
                core.switch_event_unbind(ctypes.byref(node))
            self._nodes.clear()
            self._cbs.clear()      # unbound: the core no longer calls them
            with self._cond:
                self._queue.clear()
                self._cond.notify_all()

        def __del__(self) -> None:
            try:
                self.cleanup()
            except Exception:
                pass

    class Stream:
        def __init__(self) -> None:
            self._parts: list[str] = []

        def write(self, data: Any) -> None:
            self._parts.append(str(data))

        def raw_write(self, data: Any) -> None:
            self._parts.append(data.decode() if isinstance(data, (bytes, bytearray)) else str(data))

        def get_data(self) -> str:
            return "".join(self._parts)

    class Session:
        def __init__(self, uuid: str | None = None):
            self.uuid = uuid

        def get_uuid(self) -> str | None:
            return self.uuid

        def ready(self) -> bool:
            p = core.switch_core_session_perform_locate(_b(self.uuid), b"fake_freeswitch.py", b"ready", 0)
            if p:
                core.switch_core_session_rwunlock(p)
            return bool(p)

        def getVariable(self, name: str) -> str | None:
            p = core.switch_core_session_perform_locate(_b(self.uuid), b"fake_freeswitch.py", b"getVariable", 0)
            if not p:
                return None
            try:
                ch = core.switch_core_session_get_channel(p)
                return _s(core.switch_channel_get_variable_dup(ch, _b(name), 1, -1))
            finally:
                core.switch_core_session_rwunlock(p)

        def setVariable(self, name: str, value: Any) -> None:
            cid = lib.fssim_channel_find(_b(self.uuid))
            if cid > 0:
                lib.fssim_channel_set_var(cid, _b(name), _b(value))

    class API:
        def execute(self, command: str, args: str = "") -> str:
            fn = rec.apis.get(command)
            if fn is None:
                return f"-ERR {command} Command not found!\n"
            return fn(args or "")

        def executeString(self, command: str) -> str:
            cmd, _, args = command.strip().partition(" ")
            return self.execute(cmd, args)

    globals_: dict[str, str] = {}

    def getGlobalVariable(name: str) -> str | None:
        return globals_.get(name)

    def setGlobalVariable(name: str, value: str | None) -> None:
        """Test helper (mod_python3 has no setter: `global_setvar` through the API)."""
        if value is None:
            globals_.pop(name, None)
        else:
            globals_[name] = str(value)

    def consoleLog(level: str, msg: str) -> None:
        with rec.cond:
            rec.logs.append((str(level), str(msg)))
        if os.environ.get("AUDIO_STREAM_SIM_LOG") == "1":
            sys.stderr.write(f"[freeswitch {level}] {msg}" + ("" if str(msg).endswith("\n") else "\n"))

    def consoleCleanLog(msg: str) -> None:
        consoleLog("CONSOLE", msg)

    # -- test helpers -----------------------------------------------------
    def fired(subclass: str | None = None) -> list[dict[str, Any]]:
        with rec.cond:
            return [dict(e) for e in rec.events if subclass is None or e.get("Event-Subclass") == subclass]

    def wait_for(
        subclass: str | None, timeout: float = 5.0, predicate: Callable[[dict[str, Any]], bool] | None = None
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with rec.cond:
            while True:
                for e in rec.events:
                    if (subclass is None or e.get("Event-Subclass") == subclass) and (
                        predicate is None or predicate(e)
                    ):
                        return dict(e)
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [e.get("Event-Subclass") or e.get("Event-Name") for e in rec.events]
                    raise TimeoutError(f"no event {subclass!r} within {timeout}s; fired: {seen}")
                rec.cond.wait(left)

    def clear() -> None:
        with rec.cond:
            rec.events.clear()
            rec.logs.clear()

    def logs() -> list[tuple[str, str]]:
        with rec.cond:
            return list(rec.logs)

    def register_api(name: str, fn: Callable[[str], str]) -> None:
        rec.apis[name] = fn

    for name, obj in {
        "Event": Event,
        "Stream": Stream,
        "Session": Session,
        "CoreSession": Session,
        "API": API,
        "EventConsumer": EventConsumer,
        "consoleLog": consoleLog,
        "getGlobalVariable": getGlobalVariable,
        "setGlobalVariable": setGlobalVariable,
        "consoleCleanLog": consoleCleanLog,
        "fired": fired,
        "wait_for": wait_for,
        "clear": clear,
        "logs": logs,
        "register_api": register_api,
        "SwigPointer": SwigPointer,
        "sim": sim,
    }.items():
        setattr(mod, name, obj)
    return mod


def install(sim: SimSwitch | ctypes.CDLL) -> types.ModuleType:
    """bind() and register the result as sys.modules['freeswitch']."""
    mod = bind(sim)
    sys.modules["freeswitch"] = mod
    return mod
