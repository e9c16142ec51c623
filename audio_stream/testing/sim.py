"""Build, load and drive the switch-core simulator (``fssim.c``).

The simulator is a C shared library exporting the FreeSWITCH 1.10.12 core symbols
audio_stream binds (``switch_core_media_bug_add``, ``switch_core_session_write_frame``,
...) with the real signatures and struct layouts, plus a control API (``fssim_*``)
used here. Channels run on native threads and call media-bug callbacks exactly as the
real core orders them; see docs/internals/core-semantics.md.

Typical use in a test::

    sw = SimSwitch()                  # compiles fssim.c once per source hash, loads it
    ch = sw.channel(rate=16000)       # a parked, answered call
    ch.set_tones(read_hz=500, write_hz=1200, amplitude=8000)
    ...  # the code under test binds sw.path with ctypes, locates ch.uuid, adds bugs
    ch.start(speed=1.0)
    ch.wait_ticks(50)
    ch.hangup()                       # CLOSE to every bug, on the channel thread
    audio = ch.heard()                # numpy int16: what the far end heard
    sw.reset()

``SimSwitch.path`` is the shared library; the project loads it with
``ctypes.CDLL(path)`` where inside FreeSWITCH it uses ``ctypes.CDLL(None)``.

Channel codecs. An 8 kHz channel is PCMU by default; any other rate is L16 by default.
``ch.set_codec(...)`` (before start) renames it, e.g. ``("G722", 9, 8000, 64000)`` at 16 kHz.
A channel whose codec is L16 behaves like a loopback channel (mod_loopback's codecs are
``switch_core_codec_init("L16", rate, ptime)``): its read and write codecs use the registered
L16 implementation itself, and the L16 encoder returns SWITCH_STATUS_NOOP. That exposes the
1.10.12 write_frame bug (docs/internals/core-semantics.md, "Codec mutexes"): with a
WRITE_REPLACE bug on the session, a frame written with your own L16 codec of the same rate and
ptime comes back with ``frame->codec`` set to the session's write codec, and your codec's
mutex stays locked (once more per such write) by the writing thread. To get such a channel at
8 kHz::

    ch = sw.loopback_channel(rate=8000)   # same as sw.channel(rate=8000) + ch.set_codec("L16", 100)
    ch.write_codec_ptr                    # the session's switch_codec_t* (what frame->codec becomes)
    sw.mutex_lock_count(codec.mutex)      # 1 after one such write from the session thread...
    sw.mutex_owner(codec.mutex)           # ...held by ch.thread_id

PCMU (and any other non-L16 name) encodes with SUCCESS and never touches the caller's frame.

Environment: ``CC`` (compiler, default ``cc``), ``AUDIO_STREAM_SIM_CACHE`` (cache
dir, default ``$XDG_CACHE_HOME/audio_stream`` or ``~/.cache/audio_stream``),
``FSSIM_LOG=1`` (print what the real core would log at ERROR level),
``FSSIM_ABORT_ON_VIOLATION=1`` (abort instead of counting a violation).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shlex
import subprocess
import tempfile
import time
from ctypes import (
    POINTER,
    c_char_p,
    c_double,
    c_int,
    c_int16,
    c_long,
    c_size_t,
    c_uint32,
    c_void_p,
)
from pathlib import Path
from typing import Any

import numpy as np

SOURCE = Path(__file__).with_name("fssim.c")
CFLAGS = ["-O2", "-g", "-Wall", "-Wextra", "-shared", "-fPIC", "-pthread"]
LIBS = ["-lm"]

# channel states reported by fssim_channel_state
STATE_NEW, STATE_RUNNING, STATE_HUNG_UP = 0, 1, 2
# fssim_channel_set_core_writing modes
CORE_WRITE_OFF, CORE_WRITE_SESSION_THREAD, CORE_WRITE_BRIDGED = 0, 1, 2
# switch_dtmf_t flags and sources (switch_types.h)
DTMF_FLAG_SKIP_PROCESS, DTMF_FLAG_SENSITIVE = 1 << 0, 1 << 1
DTMF_UNKNOWN, DTMF_INBAND_AUDIO, DTMF_RTP, DTMF_ENDPOINT, DTMF_APP = 0, 1, 2, 3, 4


class SimBuildError(RuntimeError):
    """The C compiler failed on fssim.c."""


def cache_dir() -> Path:
    env = os.environ.get("AUDIO_STREAM_SIM_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "audio_stream"


def build(force: bool = False) -> Path:
    """Compile fssim.c into the cache dir (once per source/flags hash); return the .so path."""
    cc = shlex.split(os.environ.get("CC", "cc"))
    src = SOURCE.read_bytes()
    digest = hashlib.sha256(src + repr((cc, CFLAGS, LIBS)).encode()).hexdigest()[:16]
    out_dir = cache_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"fssim-{digest}.so"
    if out.exists() and not force:
        return out
    fd, tmp = tempfile.mkstemp(prefix=".fssim-", suffix=".so", dir=out_dir)
    os.close(fd)
    try:
        cmd = [*cc, *CFLAGS, str(SOURCE), "-o", tmp, *LIBS]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise SimBuildError(f"{' '.join(cmd)} failed:\n{res.stderr}")
        os.replace(tmp, out)  # atomic: concurrent builders never see a partial file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


_PROTOTYPES: dict[str, tuple[Any, list[Any]]] = {
    "fssim_channel_new": (c_int, [c_char_p, c_uint32, c_uint32]),
    "fssim_channel_find": (c_int, [c_char_p]),
    "fssim_channel_uuid": (c_char_p, [c_int]),
    "fssim_channel_session": (c_void_p, [c_int]),
    "fssim_channel_set_var": (None, [c_int, c_char_p, c_char_p]),
    "fssim_channel_set_codec": (c_int, [c_int, c_char_p, c_int, c_uint32, c_int]),
    "fssim_channel_set_tones": (None, [c_int, c_double, c_double, c_int]),
    "fssim_channel_set_core_writing": (None, [c_int, c_int]),
    "fssim_channel_set_answered": (None, [c_int, c_int]),
    "fssim_channel_answer_state": (c_int, [c_int]),
    "fssim_channel_start": (c_int, [c_int, c_double]),
    "fssim_channel_set_tick_limit": (None, [c_int, c_long]),
    "fssim_channel_wait_ticks": (c_int, [c_int, c_long, c_int]),
    "fssim_channel_hangup": (c_int, [c_int]),
    "fssim_channel_hangup_cause": (c_int, [c_int, c_char_p]),
    "fssim_channel_wait_destroyed": (c_int, [c_int, c_int]),
    "fssim_channel_heard": (c_size_t, [c_int, POINTER(c_int16), c_size_t]),
    "fssim_channel_heard_clear": (None, [c_int]),
    "fssim_channel_bug_count": (c_int, [c_int]),
    "fssim_channel_ticks": (c_long, [c_int]),
    "fssim_channel_callbacks": (c_long, [c_int, c_int]),
    "fssim_channel_dtmf": (c_int, [c_int, ctypes.c_char, c_uint32]),
    "fssim_channel_queue_dtmf": (c_int, [c_int, ctypes.c_char, c_uint32, c_int, c_int]),
    "fssim_channel_dtmf_pending": (c_int, [c_int]),
    "fssim_channel_dtmf_queued": (c_int, [c_int, c_char_p, c_int]),
    "fssim_channel_dtmf_hook_calls": (c_long, [c_int]),
    "fssim_channel_dtmf_hooks": (c_int, [c_int]),
    "fssim_channel_set_dtmf_reading": (None, [c_int, c_int]),
    "fssim_channel_dtmf_dequeued": (c_long, [c_int]),
    "fssim_event_bindings": (c_int, []),
    "fssim_event_fire": (c_int, [c_void_p]),
    "fssim_event_drain": (c_int, [c_int]),
    "fssim_xml_set_config": (None, [c_char_p, c_char_p]),
    "fssim_xml_open_count": (c_int, []),
    "fssim_xml_opens_total": (c_long, []),
    "fssim_set_strict_locking": (None, [c_int]),
    "fssim_channel_first_tick_ns": (ctypes.c_longlong, [c_int]),
    "fssim_channel_state": (c_int, [c_int]),
    "fssim_channel_thread_tid": (c_long, [c_int]),
    "fssim_channel_partner_tid": (c_long, [c_int]),
    "fssim_channel_read_codec": (c_void_p, [c_int]),
    "fssim_channel_write_codec": (c_void_p, [c_int]),
    "fssim_mutex_lock_count": (c_int, [c_void_p]),
    "fssim_mutex_owner": (c_long, [c_void_p]),
    "fssim_locks_outstanding": (c_int, []),
    "fssim_sessions_alive": (c_int, []),
    "fssim_violations": (c_int, []),
    "fssim_last_violation": (c_char_p, []),
    "fssim_errors": (c_int, []),
    "fssim_last_error": (c_char_p, []),
    "fssim_struct_size": (c_size_t, [c_char_p]),
    "fssim_struct_offset": (c_long, [c_char_p, c_char_p]),
    "fssim_reset": (None, []),
    "fssim_event_new": (c_void_p, [c_char_p, c_char_p]),
    "fssim_event_add_header": (None, [c_void_p, c_char_p, c_char_p]),
    "fssim_event_del_header": (c_int, [c_void_p, c_char_p]),
    "fssim_event_get_header": (c_char_p, [c_void_p, c_char_p]),
    "fssim_event_set_body": (None, [c_void_p, c_char_p]),
    "fssim_event_get_body": (c_char_p, [c_void_p]),
    "fssim_event_name": (c_char_p, [c_void_p]),
    "fssim_event_subclass": (c_char_p, [c_void_p]),
    "fssim_event_header_count": (c_int, [c_void_p]),
    "fssim_event_header_name": (c_char_p, [c_void_p, c_int]),
    "fssim_event_header_value": (c_char_p, [c_void_p, c_int]),
    "fssim_event_free": (None, [c_void_p]),
}


def declare(lib: ctypes.CDLL, prototypes: dict[str, tuple[Any, list[Any]]]) -> ctypes.CDLL:
    """Give each named function of `lib` its (restype, argtypes); returns lib."""
    for name, (restype, argtypes) in prototypes.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    return lib


def load(path: str | os.PathLike[str] | None = None) -> ctypes.CDLL:
    """Load the simulator (building it if needed) with the fssim_* prototypes declared.

    Only the fssim_* control functions get prototypes here; the switch_* symbols are
    left to whoever binds them (the project's binding module, or a test).
    """
    return declare(ctypes.CDLL(str(path or build())), _PROTOTYPES)


def _b(s: str | None) -> bytes | None:
    return None if s is None else s.encode()


class SimSwitch:
    """One loaded simulator library and the channels made on it."""

    def __init__(self, lib: ctypes.CDLL | None = None, path: str | os.PathLike[str] | None = None):
        if lib is None:
            path = Path(path) if path else build()
            lib = load(path)
        self.lib = lib
        self.path = str(path or lib._name)
        self._keep: list[Any] = []

    # -- channels ---------------------------------------------------------
    def channel(self, uuid: str | None = None, rate: int = 8000, ptime_ms: int = 20) -> SimChannel:
        cid = self.lib.fssim_channel_new(_b(uuid), rate, ptime_ms)
        if cid <= 0:
            raise ValueError(f"fssim_channel_new({uuid!r}, {rate}, {ptime_ms}) failed: {self.last_violation()}")
        return SimChannel(self, cid)

    def loopback_channel(self, uuid: str | None = None, rate: int = 8000, ptime_ms: int = 20) -> SimChannel:
        """A channel with L16 codecs, like a mod_loopback leg (see the module docstring)."""
        ch = self.channel(uuid, rate, ptime_ms)
        ch.set_codec("L16", 100)
        return ch

    def find(self, uuid: str) -> SimChannel | None:
        cid = self.lib.fssim_channel_find(uuid.encode())
        return SimChannel(self, cid) if cid > 0 else None

    # -- keep Python callbacks alive until the channels using them are gone --
    def keep(self, obj: Any) -> Any:
        """Hold a reference (e.g. a CFUNCTYPE callback) until reset()."""
        self._keep.append(obj)
        return obj

    # -- codec mutexes ----------------------------------------------------
    def mutex_lock_count(self, mutex: int | None) -> int:
        """How many times a codec mutex (``switch_codec_t.mutex``) is locked now; 0 if free,
        -1 if the pointer is not a codec mutex."""
        return self.lib.fssim_mutex_lock_count(mutex)

    def mutex_owner(self, mutex: int | None) -> int:
        """Native thread id (gettid) holding a codec mutex, 0 if free."""
        return self.lib.fssim_mutex_owner(mutex)

    def set_strict_locking(self, on: bool = True) -> None:
        """Count a media-bug read or flag change outside the session's bug lock (not in one of
        the bug's callbacks, not in switch_core_media_bug_exec_all) as a violation: the real core
        allows it, but it races a hangup that frees the bug. Off by default."""
        self.lib.fssim_set_strict_locking(1 if on else 0)

    # -- events -----------------------------------------------------------
    def event_bindings(self) -> int:
        """switch_event_bind_removable bindings in place (each switch_event_unbind removes one)."""
        return self.lib.fssim_event_bindings()

    def event_drain(self, timeout: float = 5.0) -> bool:
        """Wait until every event the core fired has been delivered to the bindings."""
        return bool(self.lib.fssim_event_drain(int(timeout * 1000)))

    # -- the XML registry -------------------------------------------------
    def set_config(self, name: str, text: str | None) -> None:
        """Put a <configuration name=...> section in the switch's XML registry, as reloadxml would
        leave it (preprocessed: includes done, $${vars} expanded); None removes it."""
        self.lib.fssim_xml_set_config(name.encode(), None if text is None else text.encode())

    def xml_open_count(self) -> int:
        """XML roots handed out by switch_xml_open_cfg and not yet switch_xml_free'd."""
        return self.lib.fssim_xml_open_count()

    def xml_opens_total(self) -> int:
        return self.lib.fssim_xml_opens_total()

    # -- global counters --------------------------------------------------
    def locks_outstanding(self) -> int:
        return self.lib.fssim_locks_outstanding()

    def sessions_alive(self) -> int:
        return self.lib.fssim_sessions_alive()

    def violations(self) -> int:
        """Things the real core would deadlock or crash on (see fssim.c), counted."""
        return self.lib.fssim_violations()

    def last_violation(self) -> str:
        return (self.lib.fssim_last_violation() or b"").decode()

    def errors(self) -> int:
        """What the real core would have logged at ERROR level, counted."""
        return self.lib.fssim_errors()

    def last_error(self) -> str:
        return (self.lib.fssim_last_error() or b"").decode()

    def reset(self) -> None:
        """Hang up and free every channel (CLOSE callbacks run), then drop kept objects."""
        self.lib.fssim_reset()
        self._keep.clear()


class SimChannel:
    """A simulated call (session + channel), driven through the fssim_* control API."""

    def __init__(self, switch: SimSwitch, cid: int):
        self.switch = switch
        self.lib = switch.lib
        self.id = cid
        self.uuid: str = self.lib.fssim_channel_uuid(cid).decode()

    def __repr__(self) -> str:
        return f"SimChannel(id={self.id}, uuid={self.uuid!r}, state={self.state})"

    @property
    def session_ptr(self) -> int:
        """The switch_core_session_t* (not read-locked; tests only)."""
        return self.lib.fssim_channel_session(self.id) or 0

    # -- setup ------------------------------------------------------------
    def set_var(self, name: str, value: str | None) -> None:
        self.lib.fssim_channel_set_var(self.id, name.encode(), _b(value))

    def set_vars(self, **vars: str) -> None:
        for k, v in vars.items():
            self.set_var(k, v)

    def set_codec(self, iananame: str, ianacode: int, clock_rate: int = 0, bits_per_second: int = 0) -> None:
        """Change the negotiated codec's name/payload/RTP clock rate (before start);
        the sample rate stays the channel's. E.g. ("G722", 9, 8000, 64000) at 16 kHz.
        "L16" makes it loopback-like: the registered L16 implementation at the channel's
        rate/ptime (clock_rate and bits_per_second are then ignored) and a NOOP encoder."""
        if self.lib.fssim_channel_set_codec(self.id, iananame.encode(), ianacode, clock_rate, bits_per_second):
            raise RuntimeError(self.switch.last_violation())

    def set_tones(self, read_hz: float, write_hz: float, amplitude: int = 8000) -> None:
        """read: the caller's audio (left/read stream); write: what the core writes while core writing."""
        self.lib.fssim_channel_set_tones(self.id, read_hz, write_hz, amplitude)

    def set_core_writing(self, mode: int | bool) -> None:
        """0/False: parked (the core writes nothing); 1/True: the core writes one frame per
        tick on the session thread (playback / send_silence_when_idle); 2: the core writes
        from a second native thread (a bridged call: the other leg's thread writes)."""
        self.lib.fssim_channel_set_core_writing(self.id, int(mode))

    def set_answered(self, state: int) -> None:
        """0 ringing, 1 early media, 2 answered (the default)."""
        self.lib.fssim_channel_set_answered(self.id, state)

    @property
    def answer_state(self) -> int:
        return self.lib.fssim_channel_answer_state(self.id)

    # -- running ----------------------------------------------------------
    def start(self, speed: float = 1.0, ticks: int | None = None) -> None:
        """Start the media thread; speed 1.0 is real time, <= 0 as fast as possible.
        With ``ticks`` the thread stops after that many frames (see run_ticks)."""
        if ticks is not None:
            self.set_tick_limit(ticks)
        if self.lib.fssim_channel_start(self.id, speed) != 0:
            raise RuntimeError(f"channel {self.id} cannot be started (already started or hung up)")

    def set_tick_limit(self, limit: int | None) -> None:
        self.lib.fssim_channel_set_tick_limit(self.id, -1 if limit is None else limit)

    def run_ticks(self, n: int, timeout: float = 10.0) -> None:
        """Let exactly n more frames run (channel must be started with a tick limit)."""
        target = self.ticks + n
        self.set_tick_limit(target)
        if not self.wait_ticks(target, timeout):
            raise TimeoutError(f"channel {self.id}: {self.ticks}/{target} ticks after {timeout}s")

    def wait_ticks(self, n: int, timeout: float = 10.0) -> bool:
        return bool(self.lib.fssim_channel_wait_ticks(self.id, n, int(timeout * 1000)))

    def hangup(self, cause: str = "NORMAL_CLEARING") -> None:
        """Hang up: locate fails at once; returns after every bug got CLOSE (on the channel thread).
        `cause`: NORMAL_CLEARING, SYSTEM_SHUTDOWN (what fsctl shutdown uses), MANAGER_REQUEST..."""
        self.lib.fssim_channel_hangup_cause(self.id, cause.encode())

    def wait_destroyed(self, timeout: float = 10.0) -> bool:
        """Wait until the session is destroyed (needs every read lock released)."""
        return bool(self.lib.fssim_channel_wait_destroyed(self.id, int(timeout * 1000)))

    def send_dtmf(self, digits: str, duration_ms: int = 100, via: str = "rtp", flags: int = 0,
                  source: int | None = None) -> None:
        """The caller sends `digits`. via="rtp": RFC 2833 events, handed to switch_channel_queue_dtmf by
        the channel's session thread at the start of its next frame (so the channel must be running);
        via="queue": switch_channel_queue_dtmf now, on this thread (SIP INFO, or a loopback peer's
        uuid_send_dtmf, which passes DTMF_FLAG_SKIP_PROCESS unless the digits start with '~')."""
        for d in digits.encode():
            if via == "rtp":
                rc = self.lib.fssim_channel_dtmf(self.id, bytes([d]), duration_ms)
            elif via == "queue":
                rc = self.lib.fssim_channel_queue_dtmf(self.id, bytes([d]), duration_ms, flags,
                                                       DTMF_UNKNOWN if source is None else source)
            else:
                raise ValueError(f"via must be 'rtp' or 'queue', not {via!r}")
            if rc < 0:
                raise RuntimeError(f"channel {self.id}: cannot send DTMF {chr(d)!r}")

    @property
    def dtmf_pending(self) -> int:
        """RTP digits sent with send_dtmf() that the session thread has not handed on yet."""
        return self.lib.fssim_channel_dtmf_pending(self.id)

    def set_dtmf_reading(self, on: bool) -> None:
        """Whether the call's application takes digits from the DTMF queue, one per frame, firing a
        DTMF event for each (True, the default: a parked call), or leaves them queued (False)."""
        self.lib.fssim_channel_set_dtmf_reading(self.id, 1 if on else 0)

    @property
    def dtmf_dequeued(self) -> int:
        """Digits the call's application has taken from the DTMF queue."""
        return self.lib.fssim_channel_dtmf_dequeued(self.id)

    def dtmf_queued(self) -> str:
        """The digits waiting in the channel's DTMF queue (queued after the receive hooks, not yet
        taken by the application), oldest first."""
        buf = ctypes.create_string_buffer(256)
        self.lib.fssim_channel_dtmf_queued(self.id, buf, 256)
        return buf.value.decode()

    @property
    def dtmf_hook_calls(self) -> int:
        """Receive-DTMF hook calls the core made on this channel."""
        return self.lib.fssim_channel_dtmf_hook_calls(self.id)

    @property
    def dtmf_hooks(self) -> int:
        """Receive-DTMF hooks in the session's list now."""
        return self.lib.fssim_channel_dtmf_hooks(self.id)

    # -- observing --------------------------------------------------------
    def heard(self) -> np.ndarray:
        """All audio written to the channel so far (what the far end hears), int16 mono."""
        n = self.lib.fssim_channel_heard(self.id, None, 0)
        out = np.zeros(n, dtype=np.int16)
        if n:
            n = self.lib.fssim_channel_heard(self.id, out.ctypes.data_as(POINTER(c_int16)), n)
        return out[:n]

    def heard_clear(self) -> None:
        self.lib.fssim_channel_heard_clear(self.id)

    @property
    def bug_count(self) -> int:
        return self.lib.fssim_channel_bug_count(self.id)

    @property
    def ticks(self) -> int:
        return self.lib.fssim_channel_ticks(self.id)

    @property
    def state(self) -> int:
        return self.lib.fssim_channel_state(self.id)

    def callbacks(self, abc_type: int) -> int:
        """How many media-bug callbacks of this switch_abc_type_t the core made on this channel's
        bugs (bugs without a callback cost nothing and are not counted)."""
        return self.lib.fssim_channel_callbacks(self.id, abc_type)

    @property
    def first_tick_time(self) -> float | None:
        """time.monotonic() of the channel's first frame (CLOCK_MONOTONIC), None before it."""
        ns = self.lib.fssim_channel_first_tick_ns(self.id)
        return ns / 1e9 if ns > 0 else None

    @property
    def thread_id(self) -> int:
        """Native id (gettid) of the session thread; compare with threading.get_native_id()."""
        return self.lib.fssim_channel_thread_tid(self.id)

    @property
    def read_codec_ptr(self) -> int:
        """The session's read codec (``switch_codec_t*``; the codec of the frames bugs are pinged with)."""
        return self.lib.fssim_channel_read_codec(self.id) or 0

    @property
    def write_codec_ptr(self) -> int:
        """The session's write codec (``switch_codec_t*``); on an L16 channel, what the write_frame
        NOOP bug stores into the caller's ``frame->codec``."""
        return self.lib.fssim_channel_write_codec(self.id) or 0

    @property
    def partner_thread_id(self) -> int:
        """Native id of the bridged-leg writer thread (0 before start)."""
        return self.lib.fssim_channel_partner_tid(self.id)


def wait_until(pred, timeout: float = 5.0, interval: float = 0.005) -> bool:
    """Poll pred() until true or timeout; returns the last result."""
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return bool(pred())
        time.sleep(interval)
