"""Tests of the switch simulator's DTMF and event dispatch, through ctypes with FreeSWITCH's
signatures, declared here independently of the project's binding (switch_types.h,
switch_core_event_hook.h, switch_event.h of v1.10.12). What they check is in
docs/internals/core-semantics.md, "DTMF" and "Event bindings"."""

from __future__ import annotations

import ctypes
import threading
import time
from ctypes import CFUNCTYPE, POINTER, Structure, byref, c_char, c_char_p, c_int, c_int32, c_uint32, c_void_p

import pytest

from audio_stream.testing import fake_freeswitch
from audio_stream.testing.sim import (DTMF_APP, DTMF_FLAG_SENSITIVE, DTMF_FLAG_SKIP_PROCESS, DTMF_RTP,
                                      DTMF_UNKNOWN, declare, wait_until)

from .test_sim import sw  # noqa: F401  (the module's simulator)

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
def core(sw):  # noqa: F811
    return bind_core(sw.path)


@pytest.fixture
def sim(sw):  # noqa: F811
    sw.allow_violations = 0
    yield sw
    violations, last = sw.violations(), sw.last_violation()
    sw.reset()
    assert sw.sessions_alive() == 0
    assert sw.event_bindings() == 0
    assert violations == sw.allow_violations, last


class Session:
    """A read-locked session for the length of a with block."""

    def __init__(self, core, uuid):
        self.core, self.uuid = core, uuid

    def __enter__(self):
        self.ptr = self.core.switch_core_session_perform_locate(self.uuid.encode(), b"t", b"t", 0)
        assert self.ptr
        return self.ptr

    def __exit__(self, *exc):
        self.core.switch_core_session_rwunlock(self.ptr)


class Hook:
    """A recv_dtmf hook that records (digit, duration, flags, source, direction, native thread)."""

    def __init__(self, sim, core, status=SUCCESS, name="h"):
        self.calls = []
        self.status = status
        self.name = name
        self.core = core
        self.fn = sim.keep(HOOKCB(self._cb))

    def _cb(self, session, dtmf, direction):
        d = dtmf.contents
        uuid = self.core.switch_core_session_get_uuid(session).decode()
        self.calls.append((d.digit.decode(), d.duration, d.flags, d.source, direction, threading.get_native_id(),
                           uuid, self.name))
        return self.status

    @property
    def digits(self):
        return "".join(c[0] for c in self.calls)


def channel_ptr(core, session):
    return core.switch_core_session_get_channel(session)


def queue(core, ch, digit, duration=800, flags=0, source=DTMF_APP):
    with Session(core, ch.uuid) as s:
        d = switch_dtmf_t(digit.encode(), duration, flags, source)
        return core.switch_channel_queue_dtmf(channel_ptr(core, s), byref(d))


# --- layout ---------------------------------------------------------------------------------

def test_dtmf_struct_layout(sim):
    assert sim.lib.fssim_struct_size(b"switch_dtmf_t") == ctypes.sizeof(switch_dtmf_t) == 16
    for field, off in (("digit", 0), ("duration", 4), ("flags", 8), ("source", 12)):
        assert sim.lib.fssim_struct_offset(b"switch_dtmf_t", field.encode()) == getattr(switch_dtmf_t, field).offset == off


# --- the hook list ----------------------------------------------------------------------------

def test_add_remove_semantics(sim, core):
    ch = sim.channel()
    h1, h2 = Hook(sim, core, name="1"), Hook(sim, core, name="2")
    with Session(core, ch.uuid) as s:
        assert core.switch_core_event_hook_add_recv_dtmf(s, h1.fn) == SUCCESS
        assert core.switch_core_event_hook_add_recv_dtmf(s, h1.fn) == FALSE      # already there
        assert core.switch_core_event_hook_add_recv_dtmf(s, h2.fn) == SUCCESS    # appended
        assert ch.dtmf_hooks == 2
    assert queue(core, ch, "4") == SUCCESS
    assert [c[7] for c in h1.calls + h2.calls] == ["1", "2"]
    with Session(core, ch.uuid) as s:
        assert core.switch_core_event_hook_remove_recv_dtmf(s, h1.fn) == SUCCESS
        assert core.switch_core_event_hook_remove_recv_dtmf(s, h1.fn) == FALSE   # not in the list
    assert queue(core, ch, "5") == SUCCESS
    assert h1.digits == "4" and h2.digits == "45"
    assert ch.dtmf_hooks == 1 and ch.dtmf_hook_calls == 3


def test_a_hook_that_fails_stops_the_walk_and_the_digit(sim, core):
    ch = sim.channel()
    h1, h2 = Hook(sim, core, status=BREAK, name="1"), Hook(sim, core, name="2")
    with Session(core, ch.uuid) as s:
        core.switch_core_event_hook_add_recv_dtmf(s, h1.fn)
        core.switch_core_event_hook_add_recv_dtmf(s, h2.fn)
    assert queue(core, ch, "7") == BREAK
    assert h1.digits == "7" and h2.digits == ""
    assert ch.dtmf_queued() == ""            # switch_channel_queue_dtmf gave up before queueing


def test_hook_removed_from_inside_itself(sim, core):
    ch = sim.channel()
    hooks = []

    def cb(session, dtmf, direction):
        hooks.append(dtmf.contents.digit)
        core.switch_core_event_hook_remove_recv_dtmf(session, fn)   # no lock in the core: allowed
        return SUCCESS
    fn = sim.keep(HOOKCB(cb))
    with Session(core, ch.uuid) as s:
        core.switch_core_event_hook_add_recv_dtmf(s, fn)
    queue(core, ch, "1")
    queue(core, ch, "2")
    assert hooks == [b"1"] and ch.dtmf_hooks == 0


# --- switch_channel_queue_dtmf / switch_core_session_recv_dtmf ---------------------------------

def test_flags_durations_and_the_queue(sim, core):
    ch = sim.channel()
    h = Hook(sim, core)
    with Session(core, ch.uuid) as s:
        core.switch_core_event_hook_add_recv_dtmf(s, h.fn)
    queue(core, ch, "1", duration=800)
    queue(core, ch, "2", duration=0)              # 0 counts as short: 400 samples (50 ms)
    queue(core, ch, "3", duration=10 ** 6)         # clamped to 192000 (24 s)
    queue(core, ch, "4", flags=DTMF_FLAG_SKIP_PROCESS)             # queued, no hook
    queue(core, ch, "5", flags=DTMF_FLAG_SENSITIVE)                # queued, no hook
    assert [(c[0], c[1], c[4]) for c in h.calls] == [("1", 800, DTMF_RECV), ("2", 400, DTMF_RECV),
                                                     ("3", 192000, DTMF_RECV)]
    assert ch.dtmf_queued() == "12345"


def test_sensitive_dtmf_variable_still_reaches_the_hooks(sim, core):
    """switch_channel_queue_dtmf flags its own copy and hands the hooks the digit as it came."""
    ch = sim.channel()
    ch.set_var("sensitive_dtmf", "true")
    h = Hook(sim, core)
    with Session(core, ch.uuid) as s:
        core.switch_core_event_hook_add_recv_dtmf(s, h.fn)
    queue(core, ch, "9")
    assert h.digits == "9" and h.calls[0][2] == 0
    assert ch.dtmf_queued() == "9"


def test_rtp_digits_come_on_the_session_thread_before_that_frame_reaches_the_bugs(sim, core):
    ch = sim.channel()
    order = []
    h = Hook(sim, core)
    orig = h._cb

    def hook(session, dtmf, direction):
        order.append(("dtmf", ch.ticks))
        return orig(session, dtmf, direction)
    h.fn = sim.keep(HOOKCB(hook))

    def bug(b, ud, abc):
        if abc == ABC_READ:
            order.append(("read", ch.ticks))
        return 1
    bugfn = sim.keep(BUGCB(bug))
    with Session(core, ch.uuid) as s:
        core.switch_core_event_hook_add_recv_dtmf(s, h.fn)
        assert core.switch_core_media_bug_add(s, b"t", None, bugfn, None, 0, READ_STREAM, byref(c_void_p())) == 0
    ch.start(speed=4.0, ticks=3)
    assert ch.wait_ticks(3)
    ch.send_dtmf("5", duration_ms=120)
    assert ch.dtmf_pending == 1 and h.calls == []        # waits for the next frame
    ch.run_ticks(1)
    assert h.calls[0][:5] == ("5", 960, 0, DTMF_RTP, DTMF_RECV)
    assert h.calls[0][5] == ch.thread_id
    assert order[-2:] == [("dtmf", 3), ("read", 3)]       # frame 4 (tick index 3): the digit first
    assert ch.dtmf_pending == 0


def test_queue_dtmf_runs_the_hooks_on_the_callers_thread(sim, core):
    ch = sim.channel()
    h = Hook(sim, core)
    with Session(core, ch.uuid) as s:
        core.switch_core_event_hook_add_recv_dtmf(s, h.fn)
    t = threading.Thread(target=lambda: ch.send_dtmf("#", via="queue"))
    t.start()
    t.join()
    assert h.digits == "#" and h.calls[0][5] == t.native_id


def test_hangup_stops_the_hooks_and_they_die_with_the_session(sim, core):
    ch = sim.channel()
    ch.start(speed=4.0)
    h = Hook(sim, core)
    with Session(core, ch.uuid) as s:           # held: the session is not destroyed meanwhile
        core.switch_core_event_hook_add_recv_dtmf(s, h.fn)
        ch.hangup()
        assert ch.dtmf_hooks == 1                    # not removed by the hangup
        d = switch_dtmf_t(b"1", 800, 0, DTMF_APP)
        assert core.switch_channel_queue_dtmf(channel_ptr(core, s), byref(d)) == FALSE   # down: no hook
        ch.send_dtmf("2")
    assert ch.wait_destroyed()
    assert h.calls == []


def test_many_digits_keep_their_order(sim, core):
    ch = sim.channel()
    h = Hook(sim, core)
    with Session(core, ch.uuid) as s:
        core.switch_core_event_hook_add_recv_dtmf(s, h.fn)
    ch.start(speed=0)
    digits = "0123456789*#ABCD" * 3
    ch.send_dtmf(digits)
    assert wait_until(lambda: len(h.calls) == len(digits))
    assert h.digits == digits


# --- events ------------------------------------------------------------------------------------

class Binding:
    def __init__(self, sim, core, event=EVENT_DTMF, subclass=None):
        self.core = core
        self.events = []
        self.threads = set()
        self.fn = sim.keep(EVENTCB(self._cb))
        self.node = c_void_p()
        assert core.switch_event_bind_removable(b"test", event, subclass, self.fn, None, byref(self.node)) == SUCCESS

    def _cb(self, ev):
        self.threads.add(threading.get_native_id())
        get = self.core.switch_event_get_header_idx
        self.events.append({k: (get(ev, k.encode(), -1) or b"").decode()
                            for k in ("Event-Name", "Unique-ID", "DTMF-Digit", "DTMF-Duration", "DTMF-Source")})

    def unbind(self):
        return self.core.switch_event_unbind(byref(self.node))


def test_dequeue_fires_dtmf_events_one_digit_per_frame(sim, core):
    ch = sim.channel()
    b = Binding(sim, core)
    ch.start(speed=4.0, ticks=0)
    ch.send_dtmf("159#", via="queue", flags=DTMF_FLAG_SKIP_PROCESS, source=DTMF_UNKNOWN)
    assert ch.dtmf_queued() == "159#"
    ch.run_ticks(2)
    assert sim.event_drain()
    assert [e["DTMF-Digit"] for e in b.events] == ["1", "5"]
    ch.run_ticks(2)
    assert sim.event_drain()
    assert [e["DTMF-Digit"] for e in b.events] == ["1", "5", "9", "#"]
    assert all(e["Unique-ID"] == ch.uuid and e["DTMF-Source"] == "UNKNOWN" and e["DTMF-Duration"] == "800"
               for e in b.events)
    assert ch.thread_id not in b.threads and threading.get_native_id() not in b.threads   # the dispatch thread
    assert ch.dtmf_dequeued == 4
    assert b.unbind() == SUCCESS and b.unbind() == FALSE


def test_no_event_while_nothing_reads_the_digits_nor_for_sensitive_ones(sim, core):
    ch = sim.channel()
    ch.set_dtmf_reading(False)
    b = Binding(sim, core, EVENT_ALL)
    ch.start(speed=4.0, ticks=0)
    ch.send_dtmf("12", via="queue")
    ch.run_ticks(3)
    assert sim.event_drain() and b.events == [] and ch.dtmf_queued() == "12"
    ch.set_dtmf_reading(True)
    ch.send_dtmf("3", via="queue", flags=DTMF_FLAG_SENSITIVE)
    ch.set_var("sensitive_dtmf", "1")
    ch.send_dtmf("4", via="queue")
    ch.run_ticks(5)
    assert sim.event_drain()
    assert [e["DTMF-Digit"] for e in b.events] == ["1", "2"]      # 3 and 4 are sensitive
    assert ch.dtmf_dequeued == 4
    b.unbind()


def test_unbind_from_inside_an_event_callback_is_reported(sim, core):
    ch = sim.channel()
    node = c_void_p()

    def cb(ev):
        core.switch_event_unbind(byref(node))
    fn = sim.keep(EVENTCB(cb))
    core.switch_event_bind_removable(b"t", EVENT_DTMF, None, fn, None, byref(node))
    ch.start(speed=4.0, ticks=0)
    ch.send_dtmf("1", via="queue")
    ch.run_ticks(1)
    assert sim.event_drain()
    assert sim.violations() == 1 and "deadlocks" in sim.last_violation()
    sim.allow_violations = 1
    assert core.switch_event_unbind(byref(node)) == SUCCESS


def test_fake_freeswitch_event_consumer(sim):
    fs = fake_freeswitch.bind(sim)
    ch = sim.channel()
    con = fs.EventConsumer("DTMF")
    assert sim.event_bindings() == 1
    ch.start(speed=4.0, ticks=0)
    ch.send_dtmf("78", via="queue")
    ch.run_ticks(2)
    assert sim.event_drain()
    got = [con.pop(0), con.pop(0), con.pop(0)]
    assert [e.getHeader("DTMF-Digit") for e in got[:2]] == ["7", "8"] and got[2] is None
    assert got[0].getType() == "DTMF" and got[0].getHeader("unique-id") == ch.uuid
    t0 = time.monotonic()
    assert con.pop(1, 50) is None and time.monotonic() - t0 >= 0.04
    con.cleanup()
    assert sim.event_bindings() == 0 and con.pop(0) is None
