"""DTMF on the switch simulator, both ways up: the simulator's own DTMF and event dispatch (through
ctypes with FreeSWITCH's signatures, declared here independently of the project's binding:
switch_types.h, switch_core_event_hook.h, switch_event.h of v1.10.12; docs/internals/core-semantics.md,
"DTMF" and "Event bindings"), then DTMF to the server through the real stack: the receive-DTMF hook
and the DTMF event path (switch/dtmf.py), the loop thread, a real WebSocket server."""

from __future__ import annotations

import ctypes
import json
import random
import threading
import time
from ctypes import CFUNCTYPE, POINTER, Structure, byref, c_char, c_char_p, c_int, c_int32, c_uint32, c_void_p

import pytest

from audio_stream import protocol, service
from audio_stream.switch import dtmf as dtmf_mod
from audio_stream.testing import fake_freeswitch
from audio_stream.testing.sim import (DTMF_APP, DTMF_FLAG_SENSITIVE, DTMF_FLAG_SKIP_PROCESS, DTMF_INBAND_AUDIO,
                                      DTMF_RTP, DTMF_UNKNOWN, declare, wait_until)

from .test_sim import sw  # noqa: F401  (the simulator of the ctypes-level tests)

# ---- the simulator's DTMF and event dispatch ------------------------------------------------------

SUCCESS, FALSE, BREAK = 0, 1, 11
DTMF_RECV = 0
EVENT_DTMF, EVENT_ALL = 36, 92
READ_STREAM, ABC_READ = 1, 1


class switch_dtmf_t(Structure):
    _fields_ = [("digit", c_char), ("duration", c_uint32), ("flags", c_int32), ("source", c_int)]


HOOKCB = CFUNCTYPE(c_int, c_void_p, POINTER(switch_dtmf_t), c_int)
EVENTCB = CFUNCTYPE(None, c_void_p)
BUGCB = CFUNCTYPE(c_int, c_void_p, c_void_p, c_int)


def bind_core(path: str) -> ctypes.CDLL:
    return declare(ctypes.CDLL(path), {  # own instance: prototypes independent of the project's
        "switch_core_session_perform_locate": (c_void_p, [c_char_p, c_char_p, c_char_p, c_int]),
        "switch_core_session_rwunlock": (None, [c_void_p]),
        "switch_core_session_get_channel": (c_void_p, [c_void_p]),
        "switch_core_session_get_uuid": (c_char_p, [c_void_p]),
        "switch_core_event_hook_add_recv_dtmf": (c_int, [c_void_p, HOOKCB]),
        "switch_core_event_hook_remove_recv_dtmf": (c_int, [c_void_p, HOOKCB]),
        "switch_channel_queue_dtmf": (c_int, [c_void_p, POINTER(switch_dtmf_t)]),
        "switch_event_bind_removable": (c_int, [c_char_p, c_int, c_char_p, EVENTCB, c_void_p, POINTER(c_void_p)]),
        "switch_event_unbind": (c_int, [POINTER(c_void_p)]),
        "switch_event_get_header_idx": (c_char_p, [c_void_p, c_char_p, c_int]),
        "switch_core_media_bug_add": (c_int, [c_void_p, c_char_p, c_char_p, BUGCB, c_void_p, ctypes.c_long,
                                              c_uint32, POINTER(c_void_p)]),
    })


@pytest.fixture(scope="module")
def sw_core(sw):  # noqa: F811
    return bind_core(sw.path)


@pytest.fixture
def sw_sim(sw):  # noqa: F811
    sw.allow_violations = 0
    yield sw
    violations, last = sw.violations(), sw.last_violation()
    sw.reset()
    assert sw.sessions_alive() == 0
    assert sw.event_bindings() == 0
    assert violations == sw.allow_violations, last


class Session:
    """A read-locked session for the length of a with block."""

    def __init__(self, sw_core, uuid):
        self.sw_core, self.uuid = sw_core, uuid

    def __enter__(self):
        self.ptr = self.sw_core.switch_core_session_perform_locate(self.uuid.encode(), b"t", b"t", 0)
        assert self.ptr
        return self.ptr

    def __exit__(self, *exc):
        self.sw_core.switch_core_session_rwunlock(self.ptr)


class Hook:
    """A recv_dtmf hook that records (digit, duration, flags, source, direction, native thread)."""

    def __init__(self, sw_sim, sw_core, status=SUCCESS, name="h"):
        self.calls = []
        self.status = status
        self.name = name
        self.sw_core = sw_core
        self.fn = sw_sim.keep(HOOKCB(self._cb))

    def _cb(self, session, dtmf, direction):
        d = dtmf.contents
        uuid = self.sw_core.switch_core_session_get_uuid(session).decode()
        self.calls.append((d.digit.decode(), d.duration, d.flags, d.source, direction, threading.get_native_id(),
                           uuid, self.name))
        return self.status

    @property
    def digits(self):
        return "".join(c[0] for c in self.calls)


def channel_ptr(sw_core, session):
    return sw_core.switch_core_session_get_channel(session)


def queue(sw_core, ch, digit, duration=800, flags=0, source=DTMF_APP):
    with Session(sw_core, ch.uuid) as s:
        d = switch_dtmf_t(digit.encode(), duration, flags, source)
        return sw_core.switch_channel_queue_dtmf(channel_ptr(sw_core, s), byref(d))


# --- layout ---------------------------------------------------------------------------------

def test_dtmf_struct_layout(sw_sim):
    assert sw_sim.lib.fssim_struct_size(b"switch_dtmf_t") == ctypes.sizeof(switch_dtmf_t) == 16
    for field, off in (("digit", 0), ("duration", 4), ("flags", 8), ("source", 12)):
        assert sw_sim.lib.fssim_struct_offset(b"switch_dtmf_t", field.encode()) == getattr(switch_dtmf_t, field).offset == off


# --- the hook list ----------------------------------------------------------------------------

def test_add_remove_semantics(sw_sim, sw_core):
    ch = sw_sim.channel()
    h1, h2 = Hook(sw_sim, sw_core, name="1"), Hook(sw_sim, sw_core, name="2")
    with Session(sw_core, ch.uuid) as s:
        assert sw_core.switch_core_event_hook_add_recv_dtmf(s, h1.fn) == SUCCESS
        assert sw_core.switch_core_event_hook_add_recv_dtmf(s, h1.fn) == FALSE      # already there
        assert sw_core.switch_core_event_hook_add_recv_dtmf(s, h2.fn) == SUCCESS    # appended
        assert ch.dtmf_hooks == 2
    assert queue(sw_core, ch, "4") == SUCCESS
    assert [c[7] for c in h1.calls + h2.calls] == ["1", "2"]
    with Session(sw_core, ch.uuid) as s:
        assert sw_core.switch_core_event_hook_remove_recv_dtmf(s, h1.fn) == SUCCESS
        assert sw_core.switch_core_event_hook_remove_recv_dtmf(s, h1.fn) == FALSE   # not in the list
    assert queue(sw_core, ch, "5") == SUCCESS
    assert h1.digits == "4" and h2.digits == "45"
    assert ch.dtmf_hooks == 1 and ch.dtmf_hook_calls == 3


def test_a_hook_that_fails_stops_the_walk_and_the_digit(sw_sim, sw_core):
    ch = sw_sim.channel()
    h1, h2 = Hook(sw_sim, sw_core, status=BREAK, name="1"), Hook(sw_sim, sw_core, name="2")
    with Session(sw_core, ch.uuid) as s:
        sw_core.switch_core_event_hook_add_recv_dtmf(s, h1.fn)
        sw_core.switch_core_event_hook_add_recv_dtmf(s, h2.fn)
    assert queue(sw_core, ch, "7") == BREAK
    assert h1.digits == "7" and h2.digits == ""
    assert ch.dtmf_queued() == ""            # switch_channel_queue_dtmf gave up before queueing


def test_hook_removed_from_inside_itself(sw_sim, sw_core):
    ch = sw_sim.channel()
    hooks = []

    def cb(session, dtmf, direction):
        hooks.append(dtmf.contents.digit)
        sw_core.switch_core_event_hook_remove_recv_dtmf(session, fn)   # no lock in the sw_core: allowed
        return SUCCESS
    fn = sw_sim.keep(HOOKCB(cb))
    with Session(sw_core, ch.uuid) as s:
        sw_core.switch_core_event_hook_add_recv_dtmf(s, fn)
    queue(sw_core, ch, "1")
    queue(sw_core, ch, "2")
    assert hooks == [b"1"] and ch.dtmf_hooks == 0


# --- switch_channel_queue_dtmf / switch_core_session_recv_dtmf ---------------------------------

def test_flags_durations_and_the_queue(sw_sim, sw_core):
    ch = sw_sim.channel()
    h = Hook(sw_sim, sw_core)
    with Session(sw_core, ch.uuid) as s:
        sw_core.switch_core_event_hook_add_recv_dtmf(s, h.fn)
    queue(sw_core, ch, "1", duration=800)
    queue(sw_core, ch, "2", duration=0)              # 0 counts as short: 400 samples (50 ms)
    queue(sw_core, ch, "3", duration=10 ** 6)         # clamped to 192000 (24 s)
    queue(sw_core, ch, "4", flags=DTMF_FLAG_SKIP_PROCESS)             # queued, no hook
    queue(sw_core, ch, "5", flags=DTMF_FLAG_SENSITIVE)                # queued, no hook
    assert [(c[0], c[1], c[4]) for c in h.calls] == [("1", 800, DTMF_RECV), ("2", 400, DTMF_RECV),
                                                     ("3", 192000, DTMF_RECV)]
    assert ch.dtmf_queued() == "12345"


def test_sensitive_dtmf_variable_still_reaches_the_hooks(sw_sim, sw_core):
    """switch_channel_queue_dtmf flags its own copy and hands the hooks the digit as it came."""
    ch = sw_sim.channel()
    ch.set_var("sensitive_dtmf", "true")
    h = Hook(sw_sim, sw_core)
    with Session(sw_core, ch.uuid) as s:
        sw_core.switch_core_event_hook_add_recv_dtmf(s, h.fn)
    queue(sw_core, ch, "9")
    assert h.digits == "9" and h.calls[0][2] == 0
    assert ch.dtmf_queued() == "9"


def test_rtp_digits_come_on_the_session_thread_before_that_frame_reaches_the_bugs(sw_sim, sw_core):
    ch = sw_sim.channel()
    order = []
    h = Hook(sw_sim, sw_core)
    orig = h._cb

    def hook(session, dtmf, direction):
        order.append(("dtmf", ch.ticks))
        return orig(session, dtmf, direction)
    h.fn = sw_sim.keep(HOOKCB(hook))

    def bug(b, ud, abc):
        if abc == ABC_READ:
            order.append(("read", ch.ticks))
        return 1
    bugfn = sw_sim.keep(BUGCB(bug))
    with Session(sw_core, ch.uuid) as s:
        sw_core.switch_core_event_hook_add_recv_dtmf(s, h.fn)
        assert sw_core.switch_core_media_bug_add(s, b"t", None, bugfn, None, 0, READ_STREAM, byref(c_void_p())) == 0
    ch.start(speed=4.0, ticks=3)
    assert ch.wait_ticks(3)
    ch.send_dtmf("5", duration_ms=120)
    assert ch.dtmf_pending == 1 and h.calls == []        # waits for the next frame
    ch.run_ticks(1)
    assert h.calls[0][:5] == ("5", 960, 0, DTMF_RTP, DTMF_RECV)
    assert h.calls[0][5] == ch.thread_id
    assert order[-2:] == [("dtmf", 3), ("read", 3)]       # frame 4 (tick index 3): the digit first
    assert ch.dtmf_pending == 0


def test_queue_dtmf_runs_the_hooks_on_the_callers_thread(sw_sim, sw_core):
    ch = sw_sim.channel()
    h = Hook(sw_sim, sw_core)
    with Session(sw_core, ch.uuid) as s:
        sw_core.switch_core_event_hook_add_recv_dtmf(s, h.fn)
    t = threading.Thread(target=lambda: ch.send_dtmf("#", via="queue"))
    t.start()
    t.join()
    assert h.digits == "#" and h.calls[0][5] == t.native_id


def test_hangup_stops_the_hooks_and_they_die_with_the_session(sw_sim, sw_core):
    ch = sw_sim.channel()
    ch.start(speed=4.0)
    h = Hook(sw_sim, sw_core)
    with Session(sw_core, ch.uuid) as s:           # held: the session is not destroyed meanwhile
        sw_core.switch_core_event_hook_add_recv_dtmf(s, h.fn)
        ch.hangup()
        assert ch.dtmf_hooks == 1                    # not removed by the hangup
        d = switch_dtmf_t(b"1", 800, 0, DTMF_APP)
        assert sw_core.switch_channel_queue_dtmf(channel_ptr(sw_core, s), byref(d)) == FALSE   # down: no hook
        ch.send_dtmf("2")
    assert ch.wait_destroyed()
    assert h.calls == []


def test_many_digits_keep_their_order(sw_sim, sw_core):
    ch = sw_sim.channel()
    h = Hook(sw_sim, sw_core)
    with Session(sw_core, ch.uuid) as s:
        sw_core.switch_core_event_hook_add_recv_dtmf(s, h.fn)
    ch.start(speed=0)
    digits = "0123456789*#ABCD" * 3
    ch.send_dtmf(digits)
    assert wait_until(lambda: len(h.calls) == len(digits))
    assert h.digits == digits


# --- events ------------------------------------------------------------------------------------

class Binding:
    def __init__(self, sw_sim, sw_core, event=EVENT_DTMF, subclass=None):
        self.sw_core = sw_core
        self.events = []
        self.threads = set()
        self.fn = sw_sim.keep(EVENTCB(self._cb))
        self.node = c_void_p()
        assert sw_core.switch_event_bind_removable(b"test", event, subclass, self.fn, None, byref(self.node)) == SUCCESS

    def _cb(self, ev):
        self.threads.add(threading.get_native_id())
        get = self.sw_core.switch_event_get_header_idx
        self.events.append({k: (get(ev, k.encode(), -1) or b"").decode()
                            for k in ("Event-Name", "Unique-ID", "DTMF-Digit", "DTMF-Duration", "DTMF-Source")})

    def unbind(self):
        return self.sw_core.switch_event_unbind(byref(self.node))


def test_dequeue_fires_dtmf_events_one_digit_per_frame(sw_sim, sw_core):
    ch = sw_sim.channel()
    b = Binding(sw_sim, sw_core)
    ch.start(speed=4.0, ticks=0)
    ch.send_dtmf("159#", via="queue", flags=DTMF_FLAG_SKIP_PROCESS, source=DTMF_UNKNOWN)
    assert ch.dtmf_queued() == "159#"
    ch.run_ticks(2)
    assert sw_sim.event_drain()
    assert [e["DTMF-Digit"] for e in b.events] == ["1", "5"]
    ch.run_ticks(2)
    assert sw_sim.event_drain()
    assert [e["DTMF-Digit"] for e in b.events] == ["1", "5", "9", "#"]
    assert all(e["Unique-ID"] == ch.uuid and e["DTMF-Source"] == "UNKNOWN" and e["DTMF-Duration"] == "800"
               for e in b.events)
    assert ch.thread_id not in b.threads and threading.get_native_id() not in b.threads   # the dispatch thread
    assert ch.dtmf_dequeued == 4
    assert b.unbind() == SUCCESS and b.unbind() == FALSE


def test_no_event_while_nothing_reads_the_digits_nor_for_sensitive_ones(sw_sim, sw_core):
    ch = sw_sim.channel()
    ch.set_dtmf_reading(False)
    b = Binding(sw_sim, sw_core, EVENT_ALL)
    ch.start(speed=4.0, ticks=0)
    ch.send_dtmf("12", via="queue")
    ch.run_ticks(3)
    assert sw_sim.event_drain() and b.events == [] and ch.dtmf_queued() == "12"
    ch.set_dtmf_reading(True)
    ch.send_dtmf("3", via="queue", flags=DTMF_FLAG_SENSITIVE)
    ch.set_var("sensitive_dtmf", "1")
    ch.send_dtmf("4", via="queue")
    ch.run_ticks(5)
    assert sw_sim.event_drain()
    assert [e["DTMF-Digit"] for e in b.events] == ["1", "2"]      # 3 and 4 are sensitive
    assert ch.dtmf_dequeued == 4
    b.unbind()


def test_unbind_from_inside_an_event_callback_is_reported(sw_sim, sw_core):
    ch = sw_sim.channel()
    node = c_void_p()

    def cb(ev):
        sw_core.switch_event_unbind(byref(node))
    fn = sw_sim.keep(EVENTCB(cb))
    sw_core.switch_event_bind_removable(b"t", EVENT_DTMF, None, fn, None, byref(node))
    ch.start(speed=4.0, ticks=0)
    ch.send_dtmf("1", via="queue")
    ch.run_ticks(1)
    assert sw_sim.event_drain()
    assert sw_sim.violations() == 1 and "deadlocks" in sw_sim.last_violation()
    sw_sim.allow_violations = 1
    assert sw_core.switch_event_unbind(byref(node)) == SUCCESS


def test_fake_freeswitch_event_consumer(sw_sim):
    fs = fake_freeswitch.bind(sw_sim)
    ch = sw_sim.channel()
    con = fs.EventConsumer("DTMF")
    assert sw_sim.event_bindings() == 1
    ch.start(speed=4.0, ticks=0)
    ch.send_dtmf("78", via="queue")
    ch.run_ticks(2)
    assert sw_sim.event_drain()
    got = [con.pop(0), con.pop(0), con.pop(0)]
    assert [e.getHeader("DTMF-Digit") for e in got[:2]] == ["7", "8"] and got[2] is None
    assert got[0].getType() == "DTMF" and got[0].getHeader("unique-id") == ch.uuid
    t0 = time.monotonic()
    assert con.pop(1, 50) is None and time.monotonic() - t0 >= 0.04
    con.cleanup()
    assert sw_sim.event_bindings() == 0 and con.pop(0) is None


# ---- DTMF to the server through the real stack -----------------------------------------------------


FRAME = 160 * 2        # bytes of one 20 ms frame at 8 kHz, streamed mono 8k


def digits_of(conn):
    return [json.loads(t)["data"]["digit"] for t in conn.texts if t.startswith('{"type":"dtmf"')]


def audio_before_each_digit(conn):
    """Bytes of audio the server got before each dtmf message."""
    out, n = [], 0
    for kind, m in conn.messages:
        if kind == "binary":
            n += len(m)
        elif m.startswith('{"type":"dtmf"'):
            out.append(n)
    return out




def test_digits_reach_the_server_in_order_after_the_audio_before_them(h):
    server = h.server()
    ch = h.call(rate=8000, start=False)
    ch.start(speed=1.0, ticks=0)
    conn = h.start(ch, server)
    ticks = 0
    for digit, gap in (("1", 10), ("5", 7), ("9", 1), ("#", 12)):
        ch.run_ticks(gap)
        ticks += gap
        ch.send_dtmf(digit, duration_ms=120)   # RTP: on the session thread at the start of the next frame
        ch.run_ticks(1)
        ticks += 1
        assert server.wait_for(lambda: digit in digits_of(conn), 5), conn.texts
    h.api("%s stop" % ch.uuid)
    assert conn.closed.wait(5)
    assert digits_of(conn) == ["1", "5", "9", "#"]
    assert [json.loads(t) for t in conn.texts][0] == {"type": "dtmf", "data": {"digit": "1", "duration": 120}}
    # the digit came before frame k+1 reached the bug: everything up to frame k is ahead of it, and
    # at most frame k+1 (buffered by the time the loop took the digit)
    k = 0
    for (before, gap) in zip(audio_before_each_digit(conn), (10, 7, 1, 12)):
        k += gap
        assert k * FRAME <= before <= (k + 1) * FRAME, (k, before)
        k += 1
    assert len(conn.audio()) * 2 == ticks * FRAME


def test_dtmf_event_with_channel_headers(h):
    server = h.server()
    ch = h.call(rate=16000)
    h.start(ch, server, "stereo", "16k")
    ch.send_dtmf("7", duration_ms=250)
    ev = h.event("dtmf")
    assert json.loads(ev["_body"]) == {"digit": "7", "duration": 250}
    assert ev["Unique-ID"] == ch.uuid and ev.get("Channel-Name") and ev["Event-Subclass"] == "mod_audio_stream::dtmf"


def test_short_and_long_digits_have_the_cores_durations(h):
    server = h.server()
    ch = h.call(rate=8000)
    conn = h.start(ch, server)
    ch.send_dtmf("1", duration_ms=0)          # the core makes it 50 ms
    ch.send_dtmf("2", duration_ms=100000)     # ... and at most 24 s
    assert server.wait_for(lambda: len(digits_of(conn)) == 2)
    assert [json.loads(t)["data"]["duration"] for t in conn.texts] == [50, 24000]


def test_injected_digits_come_through_the_dtmf_event(h):
    """uuid_send_dtmf on a loopback peer queues the digits with DTMF_FLAG_SKIP_PROCESS: no hook sees
    them; the stream takes them from the DTMF event when the call's application reads them."""
    server = h.server()
    ch = h.call(rate=8000)
    conn = h.start(ch, server)
    assert h.sim.event_bindings() == 1
    calls = ch.dtmf_hook_calls
    ch.send_dtmf("159#", via="queue", flags=DTMF_FLAG_SKIP_PROCESS, source=DTMF_UNKNOWN)
    assert server.wait_for(lambda: digits_of(conn) == ["1", "5", "9", "#"], 5), conn.texts
    assert ch.dtmf_hook_calls == calls
    # '~' (flags 0): the hook sees them too, but passes on only what the caller signalled: no doubles
    ch.send_dtmf("23", via="queue", source=DTMF_APP)
    assert server.wait_for(lambda: digits_of(conn)[4:] == ["2", "3"], 5), conn.texts
    assert ch.dtmf_hook_calls == calls + 2
    ch.send_dtmf("4", via="queue", source=DTMF_INBAND_AUDIO)
    assert server.wait_for(lambda: digits_of(conn)[6:] == ["4"], 5)
    time.sleep(0.2)
    assert digits_of(conn) == ["1", "5", "9", "#", "2", "3", "4"]
    assert len(h.events("dtmf")) == 7


def test_stream_dtmf_false(h):
    server = h.server()
    ch = h.call(rate=8000, STREAM_DTMF="false")
    conn = h.start(ch, server)
    assert ch.dtmf_hooks == 0 and h.sim.event_bindings() == 0
    ch.send_dtmf("12")
    ch.send_dtmf("3", via="queue", flags=DTMF_FLAG_SKIP_PROCESS)
    assert wait_until(lambda: ch.dtmf_dequeued == 3)
    time.sleep(0.2)
    h.api("%s stop" % ch.uuid)
    assert conn.closed.wait(5)
    assert digits_of(conn) == [] and h.events("dtmf") == []
    assert ch.dtmf_hook_calls == 0


def test_hook_removed_on_stop_no_callback_after(h):
    server = h.server()
    ch = h.call(rate=8000)
    conn = h.start(ch, server)
    assert ch.dtmf_hooks == 1
    ch.send_dtmf("1")
    assert server.wait_for(lambda: digits_of(conn) == ["1"])
    assert h.api("%s stop" % ch.uuid) == "+OK Success"
    assert conn.closed.wait(5)
    assert ch.dtmf_hooks == 0 and h.sim.event_bindings() == 0
    calls = ch.dtmf_hook_calls
    ch.send_dtmf("2")
    ch.send_dtmf("3", via="queue", flags=DTMF_FLAG_SKIP_PROCESS)
    assert wait_until(lambda: ch.dtmf_dequeued == 3)
    time.sleep(0.1)
    assert ch.dtmf_hook_calls == calls and len(h.events("dtmf")) == 1
    assert dtmf_mod.live_ports() == 0


def test_restart_after_stop_adds_the_hook_again(h):
    server = h.server()
    ch = h.call(rate=8000)
    h.start(ch, server)
    h.api("%s stop" % ch.uuid)
    assert h.settle()
    assert h.api("%s start %s mono 8k" % (ch.uuid, server.url)) == "+OK Success"
    conn = server.wait_conn(2)
    ch.send_dtmf("8")
    assert server.wait_for(lambda: digits_of(conn) == ["8"])
    assert ch.dtmf_hooks == 1


def test_hangup_ends_the_digits_and_leaves_nothing(h):
    server = h.server()
    ch = h.call(rate=8000)
    conn = h.start(ch, server)
    ch.send_dtmf("6")
    assert server.wait_for(lambda: digits_of(conn) == ["6"])
    ch.hangup()
    assert conn.closed.wait(5) and conn.close_code == 1000
    assert h.settle()
    assert dtmf_mod.live_ports() == 0 and h.sim.event_bindings() == 0
    calls = ch.dtmf_hook_calls
    ch.send_dtmf("7")
    time.sleep(0.1)
    assert ch.dtmf_hook_calls == calls


def test_failed_connect_removes_the_hook(h):
    from .support import free_port
    ch = h.call(rate=8000)
    assert h.api("%s start ws://127.0.0.1:%d/x mono 8k" % (ch.uuid, free_port())) == "+OK Success"
    h.event("error")
    assert wait_until(lambda: ch.dtmf_hooks == 0)
    assert h.settle()
    assert h.sim.event_bindings() == 0


def test_digits_while_connecting_follow_the_metadata(h):
    server = h.server(handshake_delay=0.4)
    ch = h.call(rate=8000)
    assert h.api("%s start %s mono 8k hello" % (ch.uuid, server.url)) == "+OK Success"
    ch.send_dtmf("42")
    assert wait_until(lambda: len(h.events("dtmf")) == 2)
    conn = server.wait_conn()
    assert server.wait_for(lambda: digits_of(conn) == ["4", "2"])
    assert conn.messages[0] == ("text", "hello")


def test_no_digits_while_paused_nor_sensitive_ones(h):
    server = h.server()
    ch = h.call(rate=8000)
    conn = h.start(ch, server)
    assert h.api("%s pause" % ch.uuid) == "+OK Success"
    ch.send_dtmf("12")
    ch.send_dtmf("3", via="queue", flags=DTMF_FLAG_SKIP_PROCESS)
    assert wait_until(lambda: ch.dtmf_dequeued == 3)
    time.sleep(0.1)
    assert h.api("%s resume" % ch.uuid) == "+OK Success"
    ch.set_var("sensitive_dtmf", "true")
    ch.send_dtmf("4")
    ch.send_dtmf("5", via="queue", flags=DTMF_FLAG_SKIP_PROCESS)
    assert wait_until(lambda: ch.dtmf_dequeued == 5)
    ch.set_var("sensitive_dtmf", None)
    ch.send_dtmf("6")
    assert server.wait_for(lambda: digits_of(conn) == ["6"])
    time.sleep(0.1)
    assert digits_of(conn) == ["6"] and len(h.events("dtmf")) == 1


def test_a_burst_of_injected_digits_arrives_whole_and_in_order(h):
    server = h.server()
    ch = h.call(rate=8000)
    conn = h.start(ch, server)
    ch.send_dtmf("*" * 40, via="queue", flags=DTMF_FLAG_SKIP_PROCESS)
    assert server.wait_for(lambda: len(digits_of(conn)) == 40, 5)
    assert set(digits_of(conn)) == {"*"}


def test_two_ports_on_one_call_share_one_hook(h):
    """The hook is per session; every port of the call gets each digit (several streams per call)."""
    ch = h.call(rate=8000)
    got = {1: [], 2: []}
    done = threading.Event()

    class L:
        def __init__(self, n):
            self.n = n

        def dtmf(self, digit, ms):
            got[self.n].append(digit)
            if len(got[1]) == 2 and len(got[2]) >= 1:
                done.set()
    notify = service.loop().call_soon_threadsafe
    p1, p2 = dtmf_mod.DtmfPort(h.be, L(1), notify), dtmf_mod.DtmfPort(h.be, L(2), notify)
    s = h.be.core.locate(ch.uuid)
    try:
        assert p1.attach(s) is None and p2.attach(s) is None
    finally:
        h.be.core.unlock(s)
    assert ch.dtmf_hooks == 1 and h.sim.event_bindings() == 1
    ch.send_dtmf("1")
    assert wait_until(lambda: got[1] == ["1"] and got[2] == ["1"])
    p2.detach()
    p2.detach()
    assert ch.dtmf_hooks == 1
    ch.send_dtmf("2", via="queue", flags=DTMF_FLAG_SKIP_PROCESS)
    assert done.wait(5) and got == {1: ["1", "2"], 2: ["1"]}
    p1.detach()
    assert ch.dtmf_hooks == 0 and h.sim.event_bindings() == 0 and dtmf_mod.live_ports() == 0


def test_hangup_races_with_digits_flowing(h):
    """Digits arrive on the session thread and from other threads while calls hang up at random
    moments: no crash, no violation, nothing left attached (the fixture checks)."""
    server = h.server()
    rnd = random.Random(13)
    stop = threading.Event()
    chans = []
    for _ in range(6):
        ch = h.call(rate=8000, speed=4.0)
        assert h.api("%s start %s mono 8k" % (ch.uuid, server.url)) == "+OK Success"
        chans.append(ch)

    def pound():
        while not stop.is_set():
            for ch in chans:
                if ch.state != 2:
                    try:
                        ch.send_dtmf("1", via="queue")
                        ch.send_dtmf("2", via="queue", flags=DTMF_FLAG_SKIP_PROCESS)
                        ch.send_dtmf("3")
                    except RuntimeError:
                        pass
            time.sleep(0.001)
    t = threading.Thread(target=pound)
    t.start()
    try:
        for ch in chans:
            time.sleep(rnd.uniform(0.0, 0.15))
            if rnd.random() < 0.5:
                ch.hangup()
            else:
                h.api("%s stop" % ch.uuid)
    finally:
        stop.set()
        t.join()
    assert h.settle(10)
    assert dtmf_mod.live_ports() == 0


def test_protocol_builders():
    assert protocol.NativeDialect.dtmf("5", 120) == ['{"type":"dtmf","data":{"digit":"5","duration":120}}']
    assert protocol.dtmf_body("#", 250) == '{"digit":"#","duration":250}'


def test_every_named_stream_of_a_call_gets_the_digits(h):
    asr, rec = h.server(), h.server()
    ch = h.call(rate=8000)
    assert h.api("%s start %s mono 16k" % (ch.uuid, asr.url)) == "+OK Success"
    assert h.api("%s start name=recorder %s mono 8k" % (ch.uuid, rec.url)) == "+OK Success"
    a, r = asr.wait_conn(), rec.wait_conn()
    assert ch.dtmf_hooks == 1 and h.sim.event_bindings() == 1        # one per call, one per process
    ch.send_dtmf("1")
    ch.send_dtmf("2", via="queue", flags=DTMF_FLAG_SKIP_PROCESS)
    assert asr.wait_for(lambda: digits_of(a) == ["1", "2"]) and rec.wait_for(lambda: digits_of(r) == ["1", "2"])
    assert wait_until(lambda: len(h.events("dtmf")) == 4)
    assert sorted(e["Stream-Name"] for e in h.events("dtmf")) == ["default", "default", "recorder", "recorder"]
    assert h.api("%s stop name=recorder" % ch.uuid) == "+OK Success"
    assert r.closed.wait(5)
    assert ch.dtmf_hooks == 1                                         # the default stream still listens
    ch.send_dtmf("3")
    assert asr.wait_for(lambda: digits_of(a) == ["1", "2", "3"])
    assert digits_of(r) == ["1", "2"]
    assert h.api("%s stop" % ch.uuid) == "+OK Success"
    assert a.closed.wait(5) and ch.dtmf_hooks == 0


def test_twilio_mode_sends_twilios_dtmf_message(h):
    server = h.server()
    ch = h.call(rate=8000, STREAM_PROTOCOL="twilio")
    assert h.api("%s start %s mono 8k" % (ch.uuid, server.url)) == "+OK Success"
    conn = server.wait_conn()
    assert server.wait_for(lambda: len(conn.texts) >= 2)
    ch.send_dtmf("5")
    ch.send_dtmf("#", via="queue", flags=DTMF_FLAG_SKIP_PROCESS)
    dtmf = lambda: [json.loads(t) for t in conn.texts if '"dtmf"' in t]   # noqa: E731
    assert server.wait_for(lambda: len(dtmf()) == 2), conn.texts
    sid = json.loads(conn.texts[1])["streamSid"]
    first = dtmf()[0]
    assert first["event"] == "dtmf" and first["streamSid"] == sid
    assert first["dtmf"] == {"track": "inbound_track", "digit": "5"} and dtmf()[1]["dtmf"]["digit"] == "#"
    assert json.loads(h.event("dtmf")["_body"]) == {"digit": "5", "duration": 100}
    # every message is numbered when it is sent, so the numbers follow the order on the wire
    h.api("%s stop" % ch.uuid)
    assert conn.closed.wait(5)
    seqs = [int(json.loads(t)["sequenceNumber"]) for t in conn.texts[1:]]
    assert seqs == list(range(1, len(seqs) + 1))
    assert json.loads(conn.texts[-1])["event"] == "stop"
