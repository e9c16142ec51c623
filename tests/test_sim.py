"""Tests of the switch-core simulator itself, through ctypes with FreeSWITCH's signatures.

The prototypes and struct layouts are declared here, independently of the project's
binding module, from switch_core.h / switch_frame.h / switch_module_interfaces.h (v1.10.12).
"""

from __future__ import annotations

import ctypes
import errno
import platform
import threading
import time
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    byref,
    c_char_p,
    c_int,
    c_int16,
    c_int32,
    c_long,
    c_uint8,
    c_uint16,
    c_uint32,
    c_void_p,
    cast,
    sizeof,
)

import numpy as np
import pytest

from audio_stream.testing import fake_freeswitch
from audio_stream.testing.sim import SimSwitch, wait_until

# --- FreeSWITCH ABI ------------------------------------------------------------

SUCCESS, FALSE, NOTIMPL, GENERR, NOT_INITALIZED = 0, 1, 5, 9, 22
ABC_INIT, ABC_READ, ABC_WRITE, ABC_WRITE_REPLACE, ABC_READ_REPLACE, ABC_READ_PING, ABC_CLOSE = 0, 1, 2, 3, 4, 5, 8
READ_STREAM, WRITE_STREAM, WRITE_REPLACE, READ_REPLACE, READ_PING, STEREO = 1, 2, 4, 8, 16, 32
SMBF_FIRST = 1 << 26
CODEC_FLAG_ENCODE, CODEC_FLAG_DECODE, CODEC_FLAG_FREE_POOL, CODEC_FLAG_READY = 1, 2, 1 << 5, 1 << 8


class switch_codec_implementation_t(Structure):
    _fields_ = [
        ("codec_type", c_int),
        ("ianacode", c_uint8),
        ("iananame", c_char_p),
        ("fmtp", c_char_p),
        ("samples_per_second", c_uint32),
        ("actual_samples_per_second", c_uint32),
        ("bits_per_second", c_int),
        ("microseconds_per_packet", c_int),
        ("samples_per_packet", c_uint32),
        ("decoded_bytes_per_packet", c_uint32),
        ("encoded_bytes_per_packet", c_uint32),
        ("number_of_channels", c_uint8),
        ("codec_frames_per_packet", c_int),
        ("init", c_void_p),
        ("encode", c_void_p),
        ("decode", c_void_p),
        ("encode_video", c_void_p),
        ("decode_video", c_void_p),
        ("codec_control", c_void_p),
        ("destroy", c_void_p),
        ("codec_id", c_uint32),
        ("impl_id", c_uint32),
        ("modname", c_char_p),
        ("next", c_void_p),
    ]


class switch_codec_t(Structure):
    _fields_ = [
        ("codec_interface", c_void_p),
        ("implementation", POINTER(switch_codec_implementation_t)),
        ("fmtp_in", c_char_p),
        ("fmtp_out", c_char_p),
        ("flags", c_uint32),
        ("memory_pool", c_void_p),
        ("private_info", c_void_p),
        ("agreed_pt", c_uint8),
        ("mutex", c_void_p),
        ("next", c_void_p),
        ("session", c_void_p),
        ("cur_frame", c_void_p),
    ]


class switch_frame_geometry_t(Structure):
    _fields_ = [(n, c_int32) for n in ("w", "h", "x", "y", "z", "M", "X")]


class switch_frame_t(Structure):
    _fields_ = [
        ("codec", POINTER(switch_codec_t)),
        ("source", c_char_p),
        ("packet", c_void_p),
        ("packetlen", c_uint32),
        ("extra_data", c_void_p),
        ("data", c_void_p),
        ("datalen", c_uint32),
        ("buflen", c_uint32),
        ("samples", c_uint32),
        ("rate", c_uint32),
        ("channels", c_uint32),
        ("payload", c_uint8),
        ("timestamp", c_uint32),
        ("seq", c_uint16),
        ("ssrc", c_uint32),
        ("m", c_int),
        ("flags", c_uint32),
        ("user_data", c_void_p),
        ("pmap", c_void_p),
        ("img", c_void_p),
        ("geometry", switch_frame_geometry_t),
    ]


BUGCB = CFUNCTYPE(c_int, c_void_p, c_void_p, c_int)
EXECCB = CFUNCTYPE(None, c_void_p, c_void_p)
STEREO_SWAP, SMBF_PRUNE = 1 << 11, 1 << 9


def bind_core(path: str) -> ctypes.CDLL:
    lib = ctypes.CDLL(path)  # own instance: prototypes independent of sim.py's
    protos = {
        "switch_core_session_perform_locate": (c_void_p, [c_char_p, c_char_p, c_char_p, c_int]),
        "switch_core_session_perform_force_locate": (c_void_p, [c_char_p, c_char_p, c_char_p, c_int]),
        "switch_core_media_bug_exec_all": (c_int, [c_void_p, c_char_p, EXECCB, c_void_p]),
        "switch_core_media_bug_set_flag": (c_uint32, [c_void_p, c_uint32]),
        "switch_core_media_bug_clear_flag": (c_uint32, [c_void_p, c_uint32]),
        "switch_core_session_rwunlock": (None, [c_void_p]),
        "switch_core_session_get_channel": (c_void_p, [c_void_p]),
        "switch_core_session_get_uuid": (c_char_p, [c_void_p]),
        "switch_channel_get_variable_dup": (c_char_p, [c_void_p, c_char_p, c_int, c_int]),
        "switch_channel_perform_pre_answer": (c_int, [c_void_p, c_char_p, c_char_p, c_int]),
        "switch_channel_event_set_data": (None, [c_void_p, c_void_p]),
        "switch_core_session_get_read_impl": (c_int, [c_void_p, POINTER(switch_codec_implementation_t)]),
        "switch_core_session_get_write_impl": (c_int, [c_void_p, POINTER(switch_codec_implementation_t)]),
        "switch_core_media_bug_add": (
            c_int,
            [c_void_p, c_char_p, c_char_p, BUGCB, c_void_p, c_long, c_uint32, POINTER(c_void_p)],
        ),
        "switch_core_media_bug_read": (c_int, [c_void_p, POINTER(switch_frame_t), c_int]),
        "switch_core_media_bug_remove": (c_int, [c_void_p, POINTER(c_void_p)]),
        "switch_core_media_bug_get_write_replace_frame": (POINTER(switch_frame_t), [c_void_p]),
        "switch_core_media_bug_set_write_replace_frame": (None, [c_void_p, POINTER(switch_frame_t)]),
        "switch_core_media_bug_get_session": (c_void_p, [c_void_p]),
        "switch_core_media_bug_get_user_data": (c_void_p, [c_void_p]),
        "switch_core_session_write_frame": (c_int, [c_void_p, POINTER(switch_frame_t), c_uint32, c_int]),
        "switch_core_codec_init_with_bitrate": (
            c_int,
            [POINTER(switch_codec_t), c_char_p, c_char_p, c_char_p, c_uint32, c_int, c_int, c_uint32, c_uint32,
             c_void_p, c_void_p],
        ),
        "switch_core_codec_destroy": (c_int, [POINTER(switch_codec_t)]),
        "switch_core_session_get_pool": (c_void_p, [c_void_p]),
        "switch_mutex_lock": (c_int, [c_void_p]),
        "switch_mutex_unlock": (c_int, [c_void_p]),
        "fssim_event_new": (c_void_p, [c_char_p, c_char_p]),
        "fssim_event_header_count": (c_int, [c_void_p]),
        "fssim_event_header_name": (c_char_p, [c_void_p, c_int]),
        "fssim_event_header_value": (c_char_p, [c_void_p, c_int]),
        "fssim_event_free": (None, [c_void_p]),
    }
    for name, (res, args) in protos.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    return lib


# --- fixtures ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def sw() -> SimSwitch:
    return SimSwitch()


@pytest.fixture(scope="module")
def core(sw: SimSwitch) -> ctypes.CDLL:
    return bind_core(sw.path)


@pytest.fixture
def sim(sw: SimSwitch):
    sw.allow_violations = 0
    sw.set_strict_locking(False)     # the simulator's own tests read bugs from the test thread
    yield sw
    violations, last = sw.violations(), sw.last_violation()
    sw.reset()
    assert sw.sessions_alive() == 0
    assert violations == sw.allow_violations, last


def locate(core, uuid: str) -> int | None:
    return core.switch_core_session_perform_locate(uuid.encode(), b"test_sim.py", b"locate", 1)


class Bug:
    """A media bug driven from Python: records (abc, native thread id) and the frames read."""

    def __init__(self, sim, core, session, flags, handlers=None, drain=True, fill=1, function="test"):
        self.core = core
        self.session = session
        self.events: list[tuple[int, int]] = []
        self.frames: list[bytes] = []
        self.meta: list[tuple[int, int, int, int]] = []
        self.handlers = handlers or {}
        self.drain = drain
        self.fill = fill
        self.buf = (c_uint8 * 16384)()
        self.frame = switch_frame_t()
        self.frame.data = cast(self.buf, c_void_p)
        self.frame.buflen = sizeof(self.buf)
        self.cb = sim.keep(BUGCB(self._cb))
        self.ptr = c_void_p()
        self.status = core.switch_core_media_bug_add(
            session, function.encode(), None, self.cb, None, 0, flags, byref(self.ptr)
        )

    def _cb(self, bug, user_data, abc):
        self.events.append((abc, threading.get_native_id()))
        h = self.handlers.get(abc)
        if h is not None:
            return h(self, bug)
        if abc in (ABC_READ, ABC_READ_PING) and self.drain:
            self.read_all(bug)
        return 1

    def read_all(self, bug=None):
        n = 0
        while self.core.switch_core_media_bug_read(bug or self.ptr, byref(self.frame), self.fill) == SUCCESS:
            f = self.frame
            self.frames.append(ctypes.string_at(self.buf, f.datalen))
            self.meta.append((f.datalen, f.samples, f.rate, f.channels))
            n += 1
        return n

    def count(self, abc) -> int:
        return sum(1 for a, _ in self.events if a == abc)

    def threads(self, abc) -> set[int]:
        return {t for a, t in self.events if a == abc}

    def pcm(self) -> np.ndarray:
        return np.frombuffer(b"".join(self.frames), dtype=np.int16)


def spectrum(x: np.ndarray, rate: int):
    x = np.asarray(x, dtype=float)
    x = x - x.mean()
    mag = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.fft.rfftfreq(len(x), 1.0 / rate), mag


def dominant(x: np.ndarray, rate: int) -> float:
    f, mag = spectrum(x, rate)
    return float(f[np.argmax(mag)])


def level_at(x: np.ndarray, rate: int, hz: float) -> float:
    f, mag = spectrum(x, rate)
    return float(mag[np.argmin(np.abs(f - hz))] / mag.max())


class L16:
    """An L16 codec + frame for writing into a channel."""

    def __init__(self, core, rate: int, ms: int = 20):
        self.codec = switch_codec_t()
        self.status = core.switch_core_codec_init_with_bitrate(
            byref(self.codec), b"L16", None, None, rate, ms, 1, 0, CODEC_FLAG_ENCODE | CODEC_FLAG_DECODE, None, None
        )
        self.samples = rate * ms // 1000
        self.buf = (c_int16 * 4096)()
        self.frame = switch_frame_t()
        self.frame.codec = ctypes.pointer(self.codec)
        self.frame.data = cast(self.buf, c_void_p)
        self.frame.buflen = sizeof(self.buf)
        self.frame.rate = rate
        self.frame.channels = 1
        self.phase = 0.0
        self.rate = rate

    def tone(self, hz: float, amp: float = 6000.0, samples: int | None = None) -> ctypes.POINTER(switch_frame_t):
        n = samples or self.samples
        t = self.phase + 2 * np.pi * hz / self.rate * np.arange(n)
        self.phase = float(t[-1] + 2 * np.pi * hz / self.rate)
        ctypes.memmove(self.buf, np.round(amp * np.sin(t)).astype(np.int16).tobytes(), 2 * n)
        self.frame.datalen = 2 * n
        self.frame.samples = n
        return ctypes.pointer(self.frame)


# --- layout, codec ---------------------------------------------------------------------


def test_struct_layout_matches_real_headers(sim):
    # sizes measured by compiling the real v1.10.12 headers on x86_64
    assert sizeof(switch_frame_t) == 152
    assert sizeof(switch_codec_t) == 96
    assert sizeof(switch_codec_implementation_t) == 144
    lib = sim.lib
    for name, cls in [("switch_frame_t", switch_frame_t), ("switch_codec_t", switch_codec_t),
                      ("switch_codec_implementation_t", switch_codec_implementation_t)]:
        assert lib.fssim_struct_size(name.encode()) == sizeof(cls)
    for tname, cls, fields in [
        ("switch_frame_t", switch_frame_t, ["codec", "data", "datalen", "buflen", "samples", "rate", "channels",
                                            "timestamp", "flags", "user_data", "geometry"]),
        ("switch_codec_t", switch_codec_t, ["implementation", "flags", "memory_pool", "mutex", "cur_frame"]),
        ("switch_codec_implementation_t", switch_codec_implementation_t,
         ["ianacode", "iananame", "samples_per_second", "actual_samples_per_second", "microseconds_per_packet",
          "samples_per_packet", "decoded_bytes_per_packet", "number_of_channels", "codec_id", "next"]),
    ]:
        for f in fields:
            assert lib.fssim_struct_offset(tname.encode(), f.encode()) == getattr(cls, f).offset, (tname, f)


def test_l16_codec_init_and_destroy(sim, core):
    c = L16(core, 16000, 20)
    assert c.status == SUCCESS
    impl = c.codec.implementation.contents
    assert impl.iananame == b"L16" and impl.ianacode == 100
    assert (impl.samples_per_second, impl.actual_samples_per_second) == (16000, 16000)
    assert (impl.microseconds_per_packet, impl.samples_per_packet, impl.decoded_bytes_per_packet) == (20000, 320, 640)
    assert impl.number_of_channels == 1 and impl.codec_id != 0
    # pool NULL: the codec makes and owns its pool
    assert c.codec.flags == CODEC_FLAG_ENCODE | CODEC_FLAG_DECODE | CODEC_FLAG_FREE_POOL | CODEC_FLAG_READY
    assert c.codec.mutex and c.codec.memory_pool
    # same rate/ptime -> the same implementation object
    c2 = L16(core, 16000, 20)
    assert ctypes.addressof(c2.codec.implementation.contents) == ctypes.addressof(impl)
    assert core.switch_core_codec_destroy(byref(c.codec)) == SUCCESS
    assert not c.codec.implementation and c.codec.flags == 0
    assert core.switch_core_codec_destroy(byref(c.codec)) == NOT_INITALIZED
    assert core.switch_core_codec_destroy(byref(c2.codec)) == SUCCESS

    for rate, ms, want in [(8000, 20, SUCCESS), (8000, 120, SUCCESS), (48000, 20, SUCCESS), (48000, 40, SUCCESS),
                           (48000, 60, NOTIMPL), (16000, 70, NOTIMPL), (44100, 20, SUCCESS)]:
        cx = L16(core, rate, ms)
        assert cx.status == want, (rate, ms)
        if want == SUCCESS:
            core.switch_core_codec_destroy(byref(cx.codec))
    codec = switch_codec_t()
    assert core.switch_core_codec_init_with_bitrate(byref(codec), b"PCMU", None, None, 8000, 20, 1, 0, 3, None,
                                                    None) == GENERR
    # ms=0: 20 ms preferred
    assert core.switch_core_codec_init_with_bitrate(byref(codec), b"L16", None, None, 8000, 0, 1, 0, 3, None,
                                                    None) == SUCCESS
    assert codec.implementation.contents.microseconds_per_packet == 20000
    core.switch_core_codec_destroy(byref(codec))


def test_l16_codec_in_the_session_pool(sim, core):
    ch = sim.channel(rate=8000)
    s = locate(core, ch.uuid)
    pool = core.switch_core_session_get_pool(s)
    assert pool
    codecs = []
    for _ in range(2):
        codec = switch_codec_t()
        assert core.switch_core_codec_init_with_bitrate(byref(codec), b"L16", None, None, 8000, 20, 1, 0,
                                                        CODEC_FLAG_ENCODE | CODEC_FLAG_DECODE, None, pool) == SUCCESS
        assert codec.flags == CODEC_FLAG_ENCODE | CODEC_FLAG_DECODE | CODEC_FLAG_READY   # no FREE_POOL
        assert codec.memory_pool == pool and codec.session == s
        codecs.append(codec)
    buf = (c_int16 * 160)()
    f = switch_frame_t(codec=ctypes.pointer(codecs[0]), data=cast(buf, c_void_p), datalen=320, buflen=320,
                       samples=160, rate=8000, channels=1)
    assert core.switch_core_session_write_frame(s, byref(f), 0, 0) == SUCCESS
    assert core.switch_core_codec_destroy(byref(codecs[0])) == SUCCESS     # before the session ends: fine
    core.switch_core_session_rwunlock(s)
    ch.hangup()
    assert ch.wait_destroyed()
    # the pool went with the session: destroying the codec now touches freed memory
    assert core.switch_core_codec_destroy(byref(codecs[1])) == FALSE
    assert "session pool" in sim.last_violation()
    sim.allow_violations = 1


# --- sessions -------------------------------------------------------------------------


def test_locate_and_rwunlock_counting(sim, core):
    ch = sim.channel(uuid="11111111-aaaa-bbbb-cccc-000000000001", rate=8000)
    assert locate(core, "no-such-uuid") is None
    assert sim.locks_outstanding() == 0
    s1, s2 = locate(core, ch.uuid), locate(core, ch.uuid)
    assert s1 and s1 == s2 == ch.session_ptr
    assert sim.locks_outstanding() == 2
    assert core.switch_core_session_get_uuid(s1).decode() == ch.uuid
    core.switch_core_session_rwunlock(s1)
    core.switch_core_session_rwunlock(s2)
    assert sim.locks_outstanding() == 0
    core.switch_core_session_rwunlock(s1)  # unbalanced: counted, not crashed
    sim.allow_violations = 1
    assert sim.locks_outstanding() == 0


def test_held_lock_delays_destroy_and_locate_fails_from_hangup(sim, core):
    ch = sim.channel()
    s = locate(core, ch.uuid)
    ch.start(speed=0, ticks=3)
    ch.hangup()
    assert ch.state == 2
    assert locate(core, ch.uuid) is None          # down from the moment hangup starts
    assert not ch.wait_destroyed(timeout=0.2)     # our read lock keeps the session alive
    assert sim.sessions_alive() == 1
    core.switch_core_session_rwunlock(s)
    assert ch.wait_destroyed(timeout=5)
    assert sim.sessions_alive() == 0 and sim.locks_outstanding() == 0


@pytest.mark.parametrize("rate,name,iana", [(8000, b"PCMU", 0), (16000, b"L16", 100), (48000, b"L16", 100)])
def test_read_and_write_impl(sim, core, rate, name, iana):
    ch = sim.channel(rate=rate, ptime_ms=20)
    s = locate(core, ch.uuid)
    for getter in (core.switch_core_session_get_read_impl, core.switch_core_session_get_write_impl):
        impl = switch_codec_implementation_t()
        assert getter(s, byref(impl)) == SUCCESS
        assert impl.iananame == name and impl.ianacode == iana
        assert impl.actual_samples_per_second == rate
        assert impl.samples_per_packet == rate // 50 and impl.decoded_bytes_per_packet == rate // 25
        assert impl.microseconds_per_packet == 20000 and impl.number_of_channels == 1 and impl.codec_id
    core.switch_core_session_rwunlock(s)


def test_g722_style_codec_reports_actual_rate(sim, core):
    ch = sim.channel(rate=16000)
    ch.set_codec("G722", 9, 8000, 64000)
    s = locate(core, ch.uuid)
    impl = switch_codec_implementation_t()
    core.switch_core_session_get_read_impl(s, byref(impl))
    assert (impl.samples_per_second, impl.actual_samples_per_second, impl.decoded_bytes_per_packet) == (8000, 16000,
                                                                                                          640)
    core.switch_core_session_rwunlock(s)


def test_channel_variables(sim, core):
    ch = sim.channel(rate=16000)
    ch.set_vars(STREAM_BUFFER_SIZE="40", STREAM_EXTRA_HEADERS='{"a": 1}')
    s = locate(core, ch.uuid)
    c = core.switch_core_session_get_channel(s)
    assert core.switch_channel_get_variable_dup(c, b"STREAM_BUFFER_SIZE", 1, -1) == b"40"
    assert core.switch_channel_get_variable_dup(c, b"stream_buffer_size", 0, -1) == b"40"  # case-insensitive
    assert core.switch_channel_get_variable_dup(c, b"STREAM_EXTRA_HEADERS", 1, -1) == b'{"a": 1}'
    assert core.switch_channel_get_variable_dup(c, b"nope", 1, -1) is None
    assert core.switch_channel_get_variable_dup(c, b"read_rate", 1, -1) == b"16000"
    assert core.switch_channel_get_variable_dup(c, b"uuid", 1, -1) == ch.uuid.encode()
    ch.set_var("STREAM_BUFFER_SIZE", None)
    assert core.switch_channel_get_variable_dup(c, b"STREAM_BUFFER_SIZE", 1, -1) is None
    core.switch_core_session_rwunlock(s)


def test_event_set_data_headers(sim, core):
    ch = sim.channel(uuid="22222222-aaaa-bbbb-cccc-000000000002", rate=16000)
    ch.set_var("foo", "bar")
    s = locate(core, ch.uuid)
    ev = core.fssim_event_new(b"CUSTOM", b"mod_audio_stream::connect")
    core.switch_channel_event_set_data(core.switch_core_session_get_channel(s), ev)
    headers = {}
    for i in range(core.fssim_event_header_count(ev)):
        headers.setdefault(core.fssim_event_header_name(ev, i).decode(), core.fssim_event_header_value(ev, i).decode())
    core.fssim_event_free(ev)
    core.switch_core_session_rwunlock(s)
    assert headers["Event-Subclass"] == "mod_audio_stream::connect"
    assert headers["Unique-ID"] == headers["Caller-Unique-ID"] == ch.uuid
    assert headers["Channel-State"] == "CS_EXECUTE" and headers["Answer-State"] == "answered"
    assert headers["Channel-Read-Codec-Name"] == "L16" and headers["Channel-Read-Codec-Rate"] == "16000"
    assert headers["Channel-Name"].startswith("sofia/")
    assert headers["variable_foo"] == "bar"


# --- media bugs: what switch_core_media_bug_read returns ---------------------------------

MONO, MIXED, STEREO_MODE = "mono", "mixed", "stereo"
FLAGS = {MONO: READ_STREAM, MIXED: READ_STREAM | WRITE_STREAM, STEREO_MODE: READ_STREAM | WRITE_STREAM | STEREO}


@pytest.mark.parametrize("rate", [8000, 16000, 48000])
@pytest.mark.parametrize("mode", [MONO, MIXED, STEREO_MODE])
def test_bug_read_layout_and_tones(sim, core, rate, mode):
    ch = sim.channel(rate=rate, ptime_ms=20)
    ch.set_tones(read_hz=500, write_hz=1200, amplitude=8000)
    ch.set_core_writing(mode != MONO)
    s = locate(core, ch.uuid)
    bug = Bug(sim, core, s, FLAGS[mode])
    assert bug.status == SUCCESS and bug.ptr
    ch.start(speed=0, ticks=50)
    assert ch.wait_ticks(50)
    spf = rate // 50
    assert len(bug.frames) >= 45
    for datalen, samples, frate, channels in bug.meta:
        assert samples == spf and frate == rate
        assert (datalen, channels) == ((4 * spf, 2) if mode == STEREO_MODE else (2 * spf, 1))
    pcm = bug.pcm()
    if mode == MONO:
        assert abs(dominant(pcm, rate) - 500) < 5
        assert level_at(pcm, rate, 1200) < 0.01
    elif mode == MIXED:
        assert level_at(pcm, rate, 500) > 0.5 and level_at(pcm, rate, 1200) > 0.5
    else:
        left, right = pcm[0::2], pcm[1::2]
        assert abs(dominant(left, rate) - 500) < 5 and level_at(left, rate, 1200) < 0.01
        assert abs(dominant(right, rate) - 1200) < 5 and level_at(right, rate, 500) < 0.01
    ch.hangup()
    core.switch_core_session_rwunlock(s)
    assert bug.count(ABC_CLOSE) == 1


def test_fill_false_pads_with_0xff_forever_fill_true_stops(sim, core):
    ch = sim.channel(rate=8000)
    s = locate(core, ch.uuid)
    bug = Bug(sim, core, s, READ_STREAM, drain=False)
    ch.start(speed=0, ticks=3)
    assert ch.wait_ticks(3)
    assert bug.read_all() == 3                      # fill=TRUE: exactly what was buffered
    bug.fill = 0
    for _ in range(5):                              # fill=FALSE: SUCCESS, 0xFF padding, forever
        assert core.switch_core_media_bug_read(bug.ptr, byref(bug.frame), 0) == SUCCESS
        f = bug.frame
        assert (f.datalen, f.samples, f.rate, f.channels) == (320, 160, 8000, 1)
        assert set(np.frombuffer(ctypes.string_at(bug.buf, f.datalen), np.int16)) == {-1}
    assert core.switch_core_media_bug_read(bug.ptr, byref(bug.frame), 1) == FALSE
    # a caller that loops on fill=FALSE never stops; the simulator reports it instead of spinning
    assert bug.read_all() == 1000
    sim.allow_violations = 1
    core.switch_core_session_rwunlock(s)


def test_mixed_bug_on_parked_call_reads_nothing_with_fill_true(sim, core):
    ch = sim.channel(rate=8000)
    ch.set_tones(500, 1200, 8000)
    s = locate(core, ch.uuid)
    bug = Bug(sim, core, s, READ_STREAM | WRITE_STREAM)
    ch.start(speed=0, ticks=10)
    assert ch.wait_ticks(10)
    assert bug.count(ABC_READ) == 10 and bug.frames == []   # the write side never has data
    bug.fill = 0
    assert bug.read_all() == 10                              # read side + write side padded with -1
    read_only = bug.pcm().astype(int) + 1
    assert abs(dominant(read_only, 8000) - 500) < 5
    core.switch_core_session_rwunlock(s)


def test_short_write_side_is_zero_filled_in_stereo(sim, core):
    # stereo read whose write side has a whole frame but is fed shorter frames is not possible
    # with fill=TRUE; with fill=FALSE on a parked call the right channel is all 0xFF (-1)
    ch = sim.channel(rate=16000)
    ch.set_tones(500, 1200, 8000)
    s = locate(core, ch.uuid)
    bug = Bug(sim, core, s, READ_STREAM | WRITE_STREAM | STEREO, drain=False)
    ch.start(speed=0, ticks=2)
    assert ch.wait_ticks(2)
    assert core.switch_core_media_bug_read(bug.ptr, byref(bug.frame), 0) == SUCCESS
    pcm = np.frombuffer(ctypes.string_at(bug.buf, bug.frame.datalen), np.int16)
    assert bug.frame.datalen == 4 * 320 and bug.frame.channels == 2
    assert set(pcm[1::2]) == {-1} and np.abs(pcm[0::2]).max() > 1000
    core.switch_core_session_rwunlock(s)


def test_stereo_read_into_too_small_buffer_is_reported(sim, core):
    ch = sim.channel(rate=8000)
    ch.set_core_writing(True)
    s = locate(core, ch.uuid)
    bug = Bug(sim, core, s, READ_STREAM | WRITE_STREAM | STEREO, drain=False)
    ch.start(speed=0, ticks=3)
    assert ch.wait_ticks(3)
    bug.frame.buflen = 320  # enough for the real core's check (>= one mono frame), too small for stereo
    assert core.switch_core_media_bug_read(bug.ptr, byref(bug.frame), 1) == FALSE
    sim.allow_violations = 1
    bug.frame.buflen = 200  # below one frame: the core's own "frame buffer too small"
    errors = sim.errors()
    assert core.switch_core_media_bug_read(bug.ptr, byref(bug.frame), 1) == FALSE
    assert sim.errors() == errors + 1
    core.switch_core_session_rwunlock(s)


def test_real_time_pacing(sim, core):
    ch = sim.channel(rate=8000, ptime_ms=20)
    t0 = time.monotonic()
    ch.start(speed=2.0)                    # 10 ms per tick
    assert ch.wait_ticks(40)
    elapsed = time.monotonic() - t0
    assert 0.37 < elapsed < 0.6, elapsed
    time.sleep(0.2)
    assert 55 <= ch.ticks <= 66            # absolute clock: no drift, no burst


# --- writing: WRITE_REPLACE and write_frame ---------------------------------------------


def test_core_write_is_heard_and_parked_call_hears_nothing(sim, core):
    ch = sim.channel(rate=16000)
    ch.set_tones(500, 1200, 8000)
    ch.start(speed=0, ticks=20)
    assert ch.wait_ticks(20)
    assert len(ch.heard()) == 0                              # parked: the core writes nothing
    ch.set_core_writing(True)
    ch.run_ticks(20)
    heard = ch.heard()
    assert len(heard) == 20 * 320 and abs(dominant(heard, 16000) - 1200) < 5


def test_write_replace_replaces_what_is_heard(sim, core):
    ch = sim.channel(rate=16000)
    ch.set_tones(500, 1200, 8000)
    ch.set_core_writing(True)
    s = locate(core, ch.uuid)
    phase = [0.0]

    def replace(b, bug):
        f = core.switch_core_media_bug_get_write_replace_frame(bug).contents
        n = f.datalen // 2
        t = phase[0] + 2 * np.pi * 300 / 16000 * np.arange(n)
        phase[0] = float(t[-1] + 2 * np.pi * 300 / 16000)
        ctypes.memmove(f.data, np.round(5000 * np.sin(t)).astype(np.int16).tobytes(), 2 * n)
        core.switch_core_media_bug_set_write_replace_frame(bug, ctypes.pointer(f))
        return 1

    # WRITE_STREAM on the same bug sees the frame before its own replacement
    bug = Bug(sim, core, s, WRITE_REPLACE | WRITE_STREAM, handlers={ABC_WRITE_REPLACE: replace}, drain=False)
    ch.start(speed=0, ticks=30)
    assert ch.wait_ticks(30)
    heard = ch.heard()
    assert len(heard) == 30 * 320
    assert abs(dominant(heard, 16000) - 300) < 5 and level_at(heard, 16000, 1200) < 0.01
    assert bug.count(ABC_WRITE_REPLACE) == 30 and bug.count(ABC_WRITE) == 30
    assert bug.threads(ABC_WRITE_REPLACE) == {ch.thread_id}
    # a write-only bug reads the write stream; with more than two frames buffered and nothing on the
    # read side, every read first tosses one frame: 30 buffered frames come out as 16
    assert bug.read_all() == 16
    assert abs(dominant(bug.pcm(), 16000) - 1200) < 5         # ...as the core wrote it, before replace
    core.switch_core_session_rwunlock(s)


def test_write_frame_from_read_ping_is_heard_on_parked_call(sim, core):
    ch = sim.channel(rate=8000)
    ch.set_tones(500, 1200, 8000)
    s = locate(core, ch.uuid)
    l16 = L16(core, 8000, 20)
    assert l16.status == SUCCESS
    statuses = []

    def ping(b, bug):
        sess = core.switch_core_media_bug_get_session(bug)
        statuses.append(core.switch_core_session_write_frame(sess, l16.tone(1000), 0, 0))
        return 1

    writer = Bug(sim, core, s, READ_PING, handlers={ABC_READ_PING: ping})
    # a second bug with WRITE_REPLACE: the frame written from READ_PING passes through it
    # (re-entrantly, on the session thread, inside the READ_PING callback)
    replacer = Bug(sim, core, s, WRITE_REPLACE, handlers={ABC_WRITE_REPLACE: lambda b, bug: 1})
    ch.start(speed=0, ticks=25)
    assert ch.wait_ticks(25)
    heard = ch.heard()
    assert statuses == [SUCCESS] * 25
    assert len(heard) == 25 * 160 and abs(dominant(heard, 8000) - 1000) < 5
    assert writer.threads(ABC_READ_PING) == {ch.thread_id}
    assert replacer.count(ABC_WRITE_REPLACE) == 25 and replacer.threads(ABC_WRITE_REPLACE) == {ch.thread_id}
    core.switch_core_session_rwunlock(s)
    ch.hangup()
    core.switch_core_codec_destroy(byref(l16.codec))


def test_short_frame_is_padded_at_its_start(sim, core):
    ch = sim.channel(rate=8000)
    s = locate(core, ch.uuid)
    l16 = L16(core, 8000, 20)
    f = l16.tone(1000, samples=150)     # 10 samples short of a 160-sample frame
    tail = np.frombuffer(ctypes.string_at(l16.buf, 320), np.int16).copy()
    assert core.switch_core_session_write_frame(s, f, 0, 0) == SUCCESS
    heard = ch.heard()
    assert len(heard) == 160
    assert set(heard[:10]) == {-1}                 # memset(data, 255, missing) from the start
    assert (heard[10:] == tail[10:160]).all()      # the rest is the buffer as it was
    core.switch_core_session_rwunlock(s)
    core.switch_core_codec_destroy(byref(l16.codec))


def test_frame_of_another_ptime_is_buffered_into_whole_frames(sim, core):
    ch = sim.channel(rate=8000, ptime_ms=20)
    s = locate(core, ch.uuid)
    l16 = L16(core, 8000, 10)
    assert l16.status == SUCCESS
    assert core.switch_core_session_write_frame(s, l16.tone(700), 0, 0) == SUCCESS
    assert len(ch.heard()) == 0                      # half a channel frame: held back
    assert core.switch_core_session_write_frame(s, l16.tone(700), 0, 0) == SUCCESS
    assert len(ch.heard()) == 160
    assert core.switch_core_session_write_frame(s, l16.tone(700), 0, 0) == SUCCESS
    assert len(ch.heard()) == 160
    core.switch_core_session_rwunlock(s)
    core.switch_core_codec_destroy(byref(l16.codec))


def test_write_frame_without_codec_hangs_up_the_call(sim, core):
    ch = sim.channel(rate=8000)
    s = locate(core, ch.uuid)
    buf = (c_int16 * 160)()
    f = switch_frame_t(data=cast(buf, c_void_p), datalen=320, buflen=320, samples=160, rate=8000, channels=1)
    assert core.switch_core_session_write_frame(s, byref(f), 0, 0) == FALSE
    assert ch.state == 2 and locate(core, ch.uuid) is None
    core.switch_core_session_rwunlock(s)
    assert ch.wait_destroyed()


def test_write_frame_rate_mismatch_is_reported(sim, core):
    ch = sim.channel(rate=8000)
    s = locate(core, ch.uuid)
    l16 = L16(core, 16000, 20)
    assert core.switch_core_session_write_frame(s, l16.tone(440), 0, 0) == GENERR
    sim.allow_violations = 1
    core.switch_core_session_rwunlock(s)
    core.switch_core_codec_destroy(byref(l16.codec))


def test_bridged_core_write_comes_from_another_thread(sim, core):
    ch = sim.channel(rate=8000)
    ch.set_core_writing(2)
    s = locate(core, ch.uuid)
    bug = Bug(sim, core, s, READ_STREAM | WRITE_REPLACE, handlers={ABC_WRITE_REPLACE: lambda b, bug: 1})
    ch.start(speed=4.0)
    assert wait_until(lambda: bug.count(ABC_WRITE_REPLACE) >= 10 and bug.count(ABC_READ) >= 10)
    assert bug.threads(ABC_READ) == {ch.thread_id}
    assert bug.threads(ABC_WRITE_REPLACE) == {ch.partner_thread_id} != {ch.thread_id}
    core.switch_core_session_rwunlock(s)


# --- codec mutexes: the write_frame NOOP bug (1.10.12) ------------------------------------


def frame_codec_addr(frame: switch_frame_t) -> int | None:
    """The raw frame->codec pointer (offset 0)."""
    return c_void_p.from_address(ctypes.addressof(frame)).value


def codec_mutex(codec_addr: int) -> int:
    return switch_codec_t.from_address(codec_addr).mutex


class PingWriter:
    """A READ_PING bug that writes one frame per tick with its own L16 codec, as the product does,
    setting frame->codec to that codec before every write. Records what each write left behind."""

    def __init__(self, sim, core, ch, s, rate, ms=20, after=None, writes=None):
        self.sim, self.core, self.ch = sim, core, ch
        self.l16 = L16(core, rate, ms)
        assert self.l16.status == SUCCESS
        self.own = ctypes.addressof(self.l16.codec)
        self.mutex = self.l16.codec.mutex
        self.after = after
        self.writes = writes
        self.log: list[dict] = []
        self.bug = Bug(sim, core, s, READ_PING, handlers={ABC_READ_PING: self._ping})

    def _ping(self, b, bug):
        if self.writes is not None and len(self.log) >= self.writes:
            return 1
        l16 = self.l16
        l16.frame.codec = ctypes.pointer(l16.codec)
        sess = self.core.switch_core_media_bug_get_session(bug)
        rec = {"status": self.core.switch_core_session_write_frame(sess, l16.tone(1000), 0, 0)}
        rec.update(
            codec=frame_codec_addr(l16.frame),
            payload=l16.frame.payload,
            count=self.sim.mutex_lock_count(self.mutex),
            owner=self.sim.mutex_owner(self.mutex),
            write_codec_count=self.sim.mutex_lock_count(codec_mutex(self.ch.write_codec_ptr)),
            read_codec_count=self.sim.mutex_lock_count(codec_mutex(self.ch.read_codec_ptr)),
            tid=threading.get_native_id(),
        )
        if self.after is not None:
            self.after(self, rec)
        self.log.append(rec)
        return 1


def test_l16_channel_write_replace_noop_overwrites_frame_codec_and_leaks_its_mutex(sim, core):
    ch = sim.loopback_channel(rate=8000)
    s = locate(core, ch.uuid)
    impl = switch_codec_implementation_t()
    core.switch_core_session_get_write_impl(s, byref(impl))
    assert impl.iananame == b"L16" and impl.decoded_bytes_per_packet == 320
    replacer = Bug(sim, core, s, WRITE_REPLACE, handlers={ABC_WRITE_REPLACE: lambda b, bug: 1})
    w = PingWriter(sim, core, ch, s, 8000)
    wc = ch.write_codec_ptr
    assert wc and wc != w.own and codec_mutex(wc) != w.mutex
    ch.start(speed=0, ticks=3)
    assert ch.wait_ticks(3)
    tid = ch.thread_id
    assert [r["status"] for r in w.log] == [SUCCESS] * 3
    # the NOOP branch made the caller's frame the encoded frame: codec = session write codec, payload 100
    assert [r["codec"] for r in w.log] == [wc] * 3 and {r["payload"] for r in w.log} == {100}
    # ...so the final unlock hit the write codec's mutex a second time (EPERM, no effect) and ours
    # was never unlocked: one more level per write, held by the session thread
    assert [r["count"] for r in w.log] == [1, 2, 3]
    assert {r["owner"] for r in w.log} == {r["tid"] for r in w.log} == {tid}
    assert {r["write_codec_count"] for r in w.log} == {0}
    assert {r["read_codec_count"] for r in w.log} == {1}         # read_frame holds the read codec
    assert replacer.count(ABC_WRITE_REPLACE) == 3
    heard = ch.heard()
    assert len(heard) == 3 * 160 and abs(dominant(heard, 8000) - 1000) < 30
    assert sim.mutex_lock_count(w.mutex) == 3 and sim.mutex_owner(w.mutex) == tid
    # unlocking from a thread that does not hold it: EPERM, nothing changes
    assert core.switch_mutex_unlock(w.mutex) == errno.EPERM
    assert sim.mutex_lock_count(w.mutex) == 3
    assert sim.violations() == 0
    # destroying the codec from another thread: the real core blocks forever
    assert core.switch_core_codec_destroy(byref(w.l16.codec)) == SUCCESS
    assert sim.violations() == 1
    assert f"codec_destroy would deadlock: mutex held by thread {tid}" in sim.last_violation()
    sim.allow_violations = 1
    core.switch_core_session_rwunlock(s)


def test_l16_channel_default_rate_triggers_too_and_leaked_frame_codec_is_balanced(sim, core):
    # a 16 kHz channel is L16 by default; a frame that keeps the overwritten codec pointer (here:
    # not reset before the next write) uses the write codec twice and unlocks it twice: balanced,
    # so only the first write leaks a level of our codec's mutex
    ch = sim.channel(rate=16000)
    s = locate(core, ch.uuid)
    Bug(sim, core, s, WRITE_REPLACE, handlers={ABC_WRITE_REPLACE: lambda b, bug: 1})
    l16 = L16(core, 16000, 20)
    mutex = l16.codec.mutex
    counts = []

    def ping(b, bug):
        sess = core.switch_core_media_bug_get_session(bug)
        assert core.switch_core_session_write_frame(sess, l16.tone(700), 0, 0) == SUCCESS
        counts.append((sim.mutex_lock_count(mutex), sim.mutex_lock_count(codec_mutex(ch.write_codec_ptr))))
        return 1

    Bug(sim, core, s, READ_PING, handlers={ABC_READ_PING: ping})
    ch.start(speed=0, ticks=4)
    assert ch.wait_ticks(4)
    assert counts == [(1, 0)] * 4
    assert frame_codec_addr(l16.frame) == ch.write_codec_ptr
    assert core.switch_core_codec_destroy(byref(l16.codec)) == SUCCESS
    assert "codec_destroy would deadlock" in sim.last_violation()
    sim.allow_violations = 1
    core.switch_core_session_rwunlock(s)


def test_l16_noop_leak_destroyed_on_the_same_thread_is_fine(sim, core):
    ch = sim.loopback_channel(rate=8000)
    s = locate(core, ch.uuid)
    Bug(sim, core, s, WRITE_REPLACE, handlers={ABC_WRITE_REPLACE: lambda b, bug: 1})

    def destroy_here(w, rec):
        rec["destroy"] = core.switch_core_codec_destroy(byref(w.l16.codec))   # recursive: we hold it

    w = PingWriter(sim, core, ch, s, 8000, after=destroy_here, writes=1)
    ch.start(speed=0, ticks=3)
    assert ch.wait_ticks(3)
    assert [(r["count"], r["destroy"]) for r in w.log] == [(1, SUCCESS)]
    assert not w.l16.codec.implementation and not w.l16.codec.mutex
    assert sim.violations() == 0
    core.switch_core_session_rwunlock(s)


def test_l16_noop_leak_undone_with_switch_mutex_unlock(sim, core):
    ch = sim.loopback_channel(rate=8000)
    s = locate(core, ch.uuid)
    Bug(sim, core, s, WRITE_REPLACE, handlers={ABC_WRITE_REPLACE: lambda b, bug: 1})

    def workaround(w, rec):
        # the product's workaround, on the writing thread right after the write
        rec["overwritten"] = rec["codec"] != w.own
        if rec["overwritten"]:
            w.l16.frame.codec = ctypes.pointer(w.l16.codec)
            rec["unlock"] = core.switch_mutex_unlock(w.mutex)
        rec["count_after"] = sim.mutex_lock_count(w.mutex)
        rec["owner_after"] = sim.mutex_owner(w.mutex)

    w = PingWriter(sim, core, ch, s, 8000, after=workaround)
    ch.start(speed=0, ticks=5)
    assert ch.wait_ticks(5)
    assert [(r["overwritten"], r["count"], r["unlock"], r["count_after"], r["owner_after"]) for r in w.log] == \
        [(True, 1, 0, 0, 0)] * 5
    assert frame_codec_addr(w.l16.frame) == w.own
    assert sim.mutex_lock_count(w.mutex) == 0 and sim.mutex_owner(w.mutex) == 0
    heard = ch.heard()
    assert len(heard) == 5 * 160 and abs(dominant(heard, 8000) - 1000) < 30
    # destroy from another thread: nothing held, clean
    assert core.switch_core_codec_destroy(byref(w.l16.codec)) == SUCCESS
    assert sim.violations() == 0
    core.switch_core_session_rwunlock(s)


@pytest.mark.parametrize("case", ["pcmu", "g722", "l16_no_write_replace"])
def test_no_noop_overwrite(sim, core, case):
    rate, ms = (16000 if case == "g722" else 8000), 20
    ch = sim.channel(rate=rate) if case in ("pcmu", "g722") else sim.loopback_channel(rate=rate)
    if case == "g722":
        ch.set_codec("G722", 9, 8000, 64000)
    s = locate(core, ch.uuid)
    if case == "l16_no_write_replace":
        other = Bug(sim, core, s, WRITE_STREAM, drain=False)   # bugs, but none with WRITE_REPLACE
    else:
        other = Bug(sim, core, s, WRITE_REPLACE, handlers={ABC_WRITE_REPLACE: lambda b, bug: 1})
    w = PingWriter(sim, core, ch, s, rate, ms)
    ch.start(speed=0, ticks=4)
    assert ch.wait_ticks(4)
    assert [r["status"] for r in w.log] == [SUCCESS] * 4
    assert {r["codec"] for r in w.log} == {w.own}                      # frame->codec untouched
    assert {r["count"] for r in w.log} == {0} and sim.mutex_owner(w.mutex) == 0
    assert other.count(ABC_WRITE if case == "l16_no_write_replace" else ABC_WRITE_REPLACE) == 4
    assert len(ch.heard()) == 4 * (rate * ms // 1000)
    assert core.switch_core_codec_destroy(byref(w.l16.codec)) == SUCCESS
    assert sim.violations() == 0
    core.switch_core_session_rwunlock(s)


def test_l16_frame_of_another_ptime_is_buffered_without_overwrite(sim, core):
    # another implementation object of the same codec (codec_id) counts as a ptime mismatch: the
    # write buffer path, whose NOOP rewrites the session's raw_write_frame, not the caller's frame.
    # (Written from the test thread: from inside a callback, engaging the write buffer deadlocks.)
    ch = sim.loopback_channel(rate=8000)
    s = locate(core, ch.uuid)
    Bug(sim, core, s, WRITE_REPLACE, handlers={ABC_WRITE_REPLACE: lambda b, bug: 1})
    l16 = L16(core, 8000, 10)
    own = ctypes.addressof(l16.codec)
    for _ in range(4):
        assert core.switch_core_session_write_frame(s, l16.tone(1000), 0, 0) == SUCCESS
        assert frame_codec_addr(l16.frame) == own and sim.mutex_lock_count(l16.codec.mutex) == 0
    assert len(ch.heard()) == 2 * 160
    assert core.switch_core_codec_destroy(byref(l16.codec)) == SUCCESS
    assert sim.violations() == 0
    core.switch_core_session_rwunlock(s)


def test_noop_overwrites_the_replacement_frame_not_the_callers(sim, core):
    ch = sim.loopback_channel(rate=8000)
    s = locate(core, ch.uuid)
    sub = L16(core, 8000, 20)
    sub.tone(300)

    def substitute(b, bug):
        sub.frame.codec = ctypes.pointer(sub.codec)
        core.switch_core_media_bug_set_write_replace_frame(bug, ctypes.pointer(sub.frame))
        return 1

    Bug(sim, core, s, WRITE_REPLACE, handlers={ABC_WRITE_REPLACE: substitute})
    w = PingWriter(sim, core, ch, s, 8000)
    ch.start(speed=0, ticks=3)
    assert ch.wait_ticks(3)
    assert {r["codec"] for r in w.log} == {w.own} and {r["count"] for r in w.log} == {0}
    assert frame_codec_addr(sub.frame) == ch.write_codec_ptr              # the substitute was rewritten
    assert sim.mutex_lock_count(sub.codec.mutex) == 0                      # ...but never locked
    assert abs(dominant(ch.heard(), 8000) - 300) < 30
    for codec in (w.l16.codec, sub.codec):
        assert core.switch_core_codec_destroy(byref(codec)) == SUCCESS
    assert sim.violations() == 0
    core.switch_core_session_rwunlock(s)


@pytest.mark.skipif(platform.machine() != "x86_64" or platform.libc_ver()[0] != "glibc",
                    reason="reads glibc's x86_64 pthread_mutex_t fields")
def test_codec_mutex_is_a_real_recursive_pthread_mutex_at_offset_8(sim, core):
    # fspr_thread_mutex_t is {pool*, pthread_mutex_t}; glibc's pthread_mutex_t starts
    # {int __lock; unsigned __count; int __owner; ...}
    ch = sim.loopback_channel(rate=8000)
    s = locate(core, ch.uuid)
    Bug(sim, core, s, WRITE_REPLACE, handlers={ABC_WRITE_REPLACE: lambda b, bug: 1})
    w = PingWriter(sim, core, ch, s, 8000, writes=2)
    assert c_void_p.from_address(w.mutex).value == w.l16.codec.memory_pool
    ch.start(speed=0, ticks=2)
    assert ch.wait_ticks(2)
    count = c_uint32.from_address(w.mutex + 8 + 4).value
    owner = c_int.from_address(w.mutex + 8 + 8).value
    assert (count, owner) == (2, ch.thread_id) == (sim.mutex_lock_count(w.mutex), sim.mutex_owner(w.mutex))
    core.switch_core_codec_destroy(byref(w.l16.codec))
    sim.allow_violations = 1
    core.switch_core_session_rwunlock(s)


def test_switch_mutex_lock_and_unlock_are_recursive(sim, core):
    l16 = L16(core, 8000, 20)
    m = l16.codec.mutex
    me = threading.get_native_id()
    assert core.switch_mutex_lock(m) == 0 and core.switch_mutex_lock(m) == 0
    assert (sim.mutex_lock_count(m), sim.mutex_owner(m)) == (2, me)
    result = []
    t = threading.Thread(target=lambda: result.append(core.switch_mutex_unlock(m)))
    t.start()
    t.join(5)
    assert result == [errno.EPERM] and sim.mutex_lock_count(m) == 2
    assert core.switch_mutex_unlock(m) == 0 and core.switch_mutex_unlock(m) == 0
    assert (sim.mutex_lock_count(m), sim.mutex_owner(m)) == (0, 0)
    assert core.switch_mutex_unlock(m) == errno.EPERM                    # not locked at all
    assert sim.mutex_lock_count(m) == 0
    assert core.switch_core_codec_destroy(byref(l16.codec)) == SUCCESS
    assert sim.mutex_lock_count(None) == -1


# --- bug lifecycle -------------------------------------------------------------------


def test_init_on_caller_thread_close_on_session_thread_at_hangup(sim, core):
    ch = sim.channel(rate=8000)
    s = locate(core, ch.uuid)
    seen_in_init = []
    bug = Bug(sim, core, s, READ_STREAM,
              handlers={ABC_INIT: lambda b, bug: seen_in_init.append(b.ptr.value) or 1})
    assert bug.status == SUCCESS and ch.bug_count == 1
    assert bug.threads(ABC_INIT) == {threading.get_native_id()}
    assert seen_in_init == [None]                  # *new_bug is only set after INIT
    ch.start(speed=0, ticks=5)
    assert ch.wait_ticks(5)
    core.switch_core_session_rwunlock(s)
    ch.hangup()
    assert [a for a, _ in bug.events] == [ABC_INIT] + [ABC_READ] * 5 + [ABC_CLOSE]
    assert bug.threads(ABC_CLOSE) == {ch.thread_id} == bug.threads(ABC_READ)
    assert ch.bug_count == 0
    assert ch.wait_destroyed() and sim.sessions_alive() == 0 and ch.state == 2


def test_init_returning_false_refuses_the_bug(sim, core):
    ch = sim.channel()
    s = locate(core, ch.uuid)
    bug = Bug(sim, core, s, READ_STREAM, handlers={ABC_INIT: lambda b, bug: 0})
    assert bug.status == GENERR and not bug.ptr and ch.bug_count == 0
    ch.start(speed=0, ticks=3)
    assert ch.wait_ticks(3)
    assert [a for a, _ in bug.events] == [ABC_INIT]
    core.switch_core_session_rwunlock(s)


def test_remove_from_another_thread(sim, core):
    ch = sim.channel(rate=8000)
    s = locate(core, ch.uuid)

    def slow_read(b, bug):
        b.read_all(bug)
        time.sleep(0.003)  # widen the window in which remove must wait for the bug lock
        return 1

    bug = Bug(sim, core, s, READ_STREAM, handlers={ABC_READ: slow_read})
    ch.start(speed=2.0)
    assert ch.wait_ticks(5)
    result = {}

    def remover():
        result["tid"] = threading.get_native_id()
        result["status"] = core.switch_core_media_bug_remove(s, byref(bug.ptr))
        result["reads_at_return"] = bug.count(ABC_READ)

    t = threading.Thread(target=remover)
    t.start()
    t.join(5)
    assert result["status"] == SUCCESS
    assert bug.threads(ABC_CLOSE) == {result["tid"]} != {ch.thread_id}
    assert bug.events[-1][0] == ABC_CLOSE and bug.count(ABC_CLOSE) == 1
    ticks = ch.ticks
    assert ch.wait_ticks(ticks + 5)
    assert bug.count(ABC_READ) == result["reads_at_return"]   # no callback after remove returned
    assert core.switch_core_media_bug_remove(s, byref(bug.ptr)) == FALSE  # already gone
    assert core.switch_core_media_bug_read(bug.ptr, byref(bug.frame), 1) == FALSE  # buffers destroyed
    ch.hangup()
    assert bug.count(ABC_CLOSE) == 1
    core.switch_core_session_rwunlock(s)


def test_remove_from_inside_a_callback_would_deadlock(sim, core):
    ch = sim.channel(rate=8000)
    s = locate(core, ch.uuid)
    statuses = []

    def remove_self(b, bug):
        p = c_void_p(bug)
        statuses.append(core.switch_core_media_bug_remove(s, byref(p)))
        return 1

    bug = Bug(sim, core, s, READ_STREAM, handlers={ABC_READ: remove_self})
    ch.start(speed=0, ticks=1)
    assert ch.wait_ticks(1)
    assert statuses == [FALSE] and ch.bug_count == 1
    assert "deadlock" in sim.last_violation()
    sim.allow_violations = 1
    core.switch_core_session_rwunlock(s)


def test_close_at_hangup_runs_with_the_bug_list_locked(sim, core):
    ch = sim.channel(rate=8000)
    s = locate(core, ch.uuid)
    l16 = L16(core, 8000, 20)
    statuses = []

    def on_close(b, bug):
        p = c_void_p(bug)
        statuses.append(core.switch_core_media_bug_remove(s, byref(p)))              # would deadlock
        statuses.append(core.switch_core_session_write_frame(s, l16.tone(700), 0, 0))  # channel is down
        return 1

    bug = Bug(sim, core, s, READ_STREAM, handlers={ABC_CLOSE: on_close})
    ch.start(speed=0, ticks=2)
    assert ch.wait_ticks(2)
    ch.hangup()
    assert statuses == [FALSE, FALSE] and bug.threads(ABC_CLOSE) == {ch.thread_id}
    assert len(ch.heard()) == 0
    sim.allow_violations = 1
    core.switch_core_session_rwunlock(s)
    core.switch_core_codec_destroy(byref(l16.codec))


def test_callback_returning_false_prunes_the_bug(sim, core):
    ch = sim.channel(rate=8000)
    s = locate(core, ch.uuid)
    calls = []

    def third_false(b, bug):
        calls.append(1)
        return 0 if len(calls) == 3 else 1

    bug = Bug(sim, core, s, READ_STREAM, handlers={ABC_READ: third_false})
    other = Bug(sim, core, s, READ_STREAM)
    ch.start(speed=0, ticks=8)
    assert ch.wait_ticks(8)
    assert [a for a, _ in bug.events] == [ABC_INIT, ABC_READ, ABC_READ, ABC_READ, ABC_CLOSE]
    assert bug.threads(ABC_CLOSE) == {ch.thread_id}
    assert ch.bug_count == 1 and other.count(ABC_READ) == 8
    core.switch_core_session_rwunlock(s)


def test_bugs_run_in_list_order_and_first_flag(sim, core):
    ch = sim.channel(rate=8000)
    s = locate(core, ch.uuid)
    order = []
    a = Bug(sim, core, s, READ_STREAM, handlers={ABC_READ: lambda b, bug: order.append("a") or 1})
    b = Bug(sim, core, s, READ_STREAM, handlers={ABC_READ: lambda b, bug: order.append("b") or 1})
    c = Bug(sim, core, s, READ_STREAM | SMBF_FIRST, handlers={ABC_READ: lambda b, bug: order.append("c") or 1})
    assert SUCCESS == a.status == b.status == c.status and ch.bug_count == 3
    ch.start(speed=0, ticks=2)
    assert ch.wait_ticks(2)
    assert order == ["c", "a", "b"] * 2
    core.switch_core_session_rwunlock(s)


def test_bug_add_pre_answers_and_fails_after_hangup(sim, core):
    ch = sim.channel(rate=8000)
    ch.set_answered(0)
    s = locate(core, ch.uuid)
    bug = Bug(sim, core, s, READ_STREAM)
    assert bug.status == SUCCESS and ch.answer_state == 1     # early media, not answered
    ch.hangup()
    late = Bug(sim, core, s, READ_STREAM)
    assert late.status == FALSE and not late.ptr and late.events == []
    core.switch_core_session_rwunlock(s)


def test_user_data_and_session_of_a_bug(sim, core):
    ch = sim.channel(rate=8000)
    s = locate(core, ch.uuid)
    cb = sim.keep(BUGCB(lambda bug, ud, abc: 1))
    p = c_void_p()
    assert core.switch_core_media_bug_add(s, b"f", b"t", cb, c_void_p(0x1234), 0, READ_STREAM, byref(p)) == SUCCESS
    assert core.switch_core_media_bug_get_user_data(p) == 0x1234
    assert core.switch_core_media_bug_get_session(p) == s
    core.switch_core_session_rwunlock(s)


# --- fake freeswitch module --------------------------------------------------------------


def test_fake_freeswitch_events_logs_api(sim, core):
    fs = fake_freeswitch.bind(sim)
    ch = sim.channel(rate=16000)
    s = locate(core, ch.uuid)
    ev = fs.Event("CUSTOM", "mod_audio_stream::connect")
    assert ev.getType() == "CUSTOM" and ev.getHeader("Event-Subclass") == "mod_audio_stream::connect"
    ev.addHeader("X-Test", "1")
    ev.addBody('{"status":"connected"}')
    core.switch_channel_event_set_data(core.switch_core_session_get_channel(s), int(ev.event))
    assert ev.getHeader("Unique-ID") == ch.uuid
    results = []
    t = threading.Thread(target=lambda: results.append(fs.wait_for("mod_audio_stream::connect", timeout=5)))
    t.start()
    assert ev.fire()
    t.join(5)
    got = results[0]
    assert got["Event-Name"] == "CUSTOM" and got["X-Test"] == "1" and got["Unique-ID"] == ch.uuid
    assert got["_body"] == '{"status":"connected"}' and got["Channel-Read-Codec-Rate"] == "16000"
    assert fs.fired("mod_audio_stream::connect") == [got] and fs.fired("other") == []
    with pytest.raises(TimeoutError):
        fs.wait_for("mod_audio_stream::disconnect", timeout=0.05)
    assert fs.Event("BOGUS").getType() == "MESSAGE"
    assert fs.Event("MESSAGE", "x::y").getType() == "CUSTOM"
    fs.consoleLog("info", "hello\n")
    assert fs.logs() == [("info", "hello\n")]
    st = fs.Stream()
    st.write("+OK ")
    st.write("done")
    assert st.get_data() == "+OK done"
    sess = fs.Session(ch.uuid)
    assert sess.get_uuid() == ch.uuid and sess.ready()
    sess.setVariable("STREAM_HEART_BEAT", "15")
    assert sess.getVariable("STREAM_HEART_BEAT") == "15"
    assert fs.API().execute("nope", "") == "-ERR nope Command not found!\n"
    fs.register_api("echo", lambda a: a)
    assert fs.API().executeString("echo hi there") == "hi there"
    fs.clear()
    assert fs.fired() == [] and fs.logs() == []
    core.switch_core_session_rwunlock(s)
    assert sim.locks_outstanding() == 0


# --- callback-less bugs, exec_all, runtime flags, force_locate (the product's media path) ---------


def add_plain(core, session, function, flags, callback=None, user_data=None):
    ptr = c_void_p()
    status = core.switch_core_media_bug_add(session, function.encode(), None, callback or BUGCB(), user_data, 0,
                                            flags, byref(ptr))
    return status, ptr


def test_callbackless_bug_buffers_every_frame_and_costs_no_callback(sim, core):
    ch = sim.channel(rate=8000)
    ch.set_tones(440, 0)
    s = locate(core, ch.uuid)
    status, ptr = add_plain(core, s, "cap", READ_STREAM)
    assert status == SUCCESS and ptr.value
    ch.start(speed=0, ticks=0)
    ch.run_ticks(30)
    assert all(ch.callbacks(t) == 0 for t in (ABC_INIT, ABC_READ, ABC_READ_PING, ABC_CLOSE))
    got = []
    buf = (c_uint8 * 16384)()
    frame = switch_frame_t(data=cast(buf, c_void_p), buflen=16384)

    def on_exec(bug, user_data):
        assert bug == ptr.value and user_data == 77
        while core.switch_core_media_bug_read(bug, byref(frame), 1) == SUCCESS:
            got.append(ctypes.string_at(buf, frame.datalen))

    cb = EXECCB(on_exec)
    assert core.switch_core_media_bug_exec_all(s, b"cap", cb, 77) == SUCCESS
    assert len(got) == 30 and all(len(g) == 320 for g in got)
    assert abs(dominant(np.frombuffer(b"".join(got), np.int16), 8000) - 440) < 5
    core.switch_core_session_rwunlock(s)
    ch.hangup()


def test_exec_all_matches_the_function_skips_pruned_and_says_when_none(sim, core):
    ch = sim.channel(rate=8000)
    s = locate(core, ch.uuid)
    seen = []
    cb = EXECCB(lambda bug, ud: seen.append(bug))
    assert core.switch_core_media_bug_exec_all(s, b"a", cb, None) == FALSE     # no bug at all
    _, a1 = add_plain(core, s, "a", READ_STREAM)
    _, b1 = add_plain(core, s, "b", READ_STREAM)
    _, a2 = add_plain(core, s, "a", READ_STREAM)
    assert core.switch_core_media_bug_exec_all(s, b"a", cb, None) == SUCCESS
    assert seen == [a1.value, a2.value]
    seen.clear()
    assert core.switch_core_media_bug_exec_all(s, b"A", cb, None) == FALSE     # strcmp: case matters
    assert core.switch_core_media_bug_exec_all(s, b"zz", cb, None) == FALSE and not seen
    assert core.switch_core_media_bug_remove(s, byref(a1)) == SUCCESS
    assert core.switch_core_media_bug_exec_all(s, b"a", cb, None) == SUCCESS and seen == [a2.value]
    core.switch_core_session_rwunlock(s)
    ch.hangup()


def test_exec_all_holds_the_write_lock_no_callback_runs_meanwhile(sim, core):
    """While exec_all's callback runs, the session thread cannot enter any bug callback."""
    ch = sim.channel(rate=8000)
    s = locate(core, ch.uuid)
    pinged = []
    pcb = sim.keep(BUGCB(lambda bug, ud, abc: pinged.append(time.monotonic()) or 1))
    add_plain(core, s, "play", READ_PING, pcb)
    _, cap = add_plain(core, s, "cap", READ_STREAM)
    ch.start(speed=4.0)
    assert ch.wait_ticks(5)
    window = []

    def slow(bug, ud):
        t0 = time.monotonic()
        time.sleep(0.05)                  # 10 frames at 4x speed
        window.append((t0, time.monotonic()))

    cb = EXECCB(slow)
    assert core.switch_core_media_bug_exec_all(s, b"cap", cb, None) == SUCCESS
    t0, t1 = window[0]
    assert not [t for t in pinged if t0 < t < t1]
    assert ch.wait_ticks(ch.ticks + 3)
    core.switch_core_session_rwunlock(s)
    ch.hangup()


def test_exec_all_from_inside_a_bug_callback_is_a_deadlock(sim, core):
    ch = sim.channel(rate=8000)
    s = locate(core, ch.uuid)
    cb = EXECCB(lambda bug, ud: None)

    def on_read(b, bug):
        core.switch_core_media_bug_exec_all(s, b"test", cb, None)
        return 1

    Bug(sim, core, s, READ_STREAM, handlers={ABC_READ: on_read})
    ch.start(speed=0, ticks=0)
    ch.run_ticks(1)
    sim.allow_violations = 1
    assert "deadlock" in sim.last_violation()
    core.switch_core_session_rwunlock(s)
    ch.hangup()


def test_flags_switched_at_runtime_start_and_stop_the_callbacks(sim, core):
    ch = sim.channel(rate=8000)
    s = locate(core, ch.uuid)
    bug = Bug(sim, core, s, READ_PING | STEREO_SWAP, drain=False)
    ch.start(speed=0, ticks=0)
    ch.run_ticks(5)
    assert bug.count(ABC_READ_PING) == 5

    def flags(op, flag):
        cb = EXECCB(lambda b, ud: op(b, flag))
        assert core.switch_core_media_bug_exec_all(s, b"test", cb, None) == SUCCESS

    flags(core.switch_core_media_bug_clear_flag, READ_PING)
    ch.run_ticks(5)
    assert bug.count(ABC_READ_PING) == 5               # dormant: the core calls nothing
    flags(core.switch_core_media_bug_set_flag, READ_PING)
    ch.run_ticks(5)
    assert bug.count(ABC_READ_PING) == 10
    core.switch_core_session_rwunlock(s)
    ch.hangup()
    assert bug.count(ABC_CLOSE) == 1                   # still a bug: CLOSE at hangup


def test_strict_locking_flags_reads_and_flag_changes_outside_the_bug_lock(sim, core):
    ch = sim.channel(rate=8000)
    s = locate(core, ch.uuid)
    _, cap = add_plain(core, s, "cap", READ_STREAM)
    frame = switch_frame_t(data=cast((c_uint8 * 4096)(), c_void_p), buflen=4096)
    sim.set_strict_locking(True)
    try:
        core.switch_core_media_bug_read(cap, byref(frame), 1)
        assert "outside the session's bug lock" in sim.last_violation()
        core.switch_core_media_bug_set_flag(cap, READ_PING)
        assert sim.violations() == 2
    finally:
        sim.set_strict_locking(False)
    sim.allow_violations = 2
    core.switch_core_session_rwunlock(s)
    ch.hangup()


def test_force_locate_works_after_hangup_until_the_session_is_destroyed(sim, core):
    ch = sim.channel(rate=8000)
    s = core.switch_core_session_perform_force_locate(ch.uuid.encode(), b"t", b"t", 1)
    assert s
    ch.hangup()                      # the bugs are closed; destruction waits for our read lock
    assert locate(core, ch.uuid) is None
    again = core.switch_core_session_perform_force_locate(ch.uuid.encode(), b"t", b"t", 1)
    assert again == s
    core.switch_core_session_rwunlock(again)
    core.switch_core_session_rwunlock(s)
    assert ch.wait_destroyed()
    assert not core.switch_core_session_perform_force_locate(ch.uuid.encode(), b"t", b"t", 1)


def test_hangup_closes_every_bug_before_it_destroys_any(sim, core):
    """switch_core_media_bug_remove_all: the CLOSE callbacks run under the write lock, the bugs
    are destroyed afterwards, so a CLOSE can still read another bug's buffered frames."""
    ch = sim.channel(rate=8000)
    s = locate(core, ch.uuid)
    _, cap = add_plain(core, s, "cap", READ_STREAM)
    tail = []
    buf = (c_uint8 * 16384)()
    frame = switch_frame_t(data=cast(buf, c_void_p), buflen=16384)

    def on_close(b, bug):
        while core.switch_core_media_bug_read(cap, byref(frame), 1) == SUCCESS:
            tail.append(frame.datalen)
        return 1

    sim.set_strict_locking(True)
    try:
        Bug(sim, core, s, STEREO_SWAP, handlers={ABC_CLOSE: on_close})
        ch.start(speed=0, ticks=0)
        ch.run_ticks(7)
        core.switch_core_session_rwunlock(s)
        ch.hangup()
    finally:
        sim.set_strict_locking(False)
    assert tail == [320] * 7
