"""The accelerated media path: audio_stream._accel (C), when it was built and loads.

Same contracts as the pure-Python path in media.py (CaptureSource, PlaybackQueue, ControlPort), so
a stream does not know which one it has:

- AccelCapture: the callback-less capture bug, read for every accelerated stream of a tick in one
  C call with the GIL released (`capture_pass`), resampled by the same polyphase filter audio.py
  designs, cut into STREAM_BUFFER_SIZE chunks in C.
- AccelQueue + AccelControlPort: the control bug's callback is C. The media thread plays from a C
  queue the loop thread fills and never takes the GIL; what the loop must hear of (playback
  started/done, a mark reached, the bug closed) arrives as events through a pipe the loop watches.

`path(core)` returns the AccelPath for that core, or None (not built, disabled with
AUDIO_STREAM_ACCEL=0, or a layout mismatch) and `why_not()` says why.
"""
import collections
import ctypes
import os

import numpy as np

from . import core as C
from ..audio import (PolyphaseResampler, Passthrough, Uplink, jitter_bytes, resampler as audio_resampler,
                     sample_bytes)
from .media import CAPTURE_BUG, CONTROL_BUG, CONTROL_FLAGS, PLAY_FLAGS

from .. import accelerator

_accel = accelerator.native

_BIND = (
    "switch_core_session_perform_force_locate", "switch_core_session_perform_locate",
    "switch_core_session_rwunlock", "switch_core_media_bug_exec_all", "switch_core_media_bug_read",
    "switch_core_media_bug_get_write_replace_frame", "switch_core_media_bug_set_write_replace_frame",
    "switch_core_media_bug_get_session", "switch_core_media_bug_set_flag", "switch_core_media_bug_clear_flag",
    "switch_core_session_write_frame", "switch_mutex_unlock", "switch_core_media_bug_remove",
    "switch_core_session_get_channel", "switch_channel_get_cause", "switch_core_codec_destroy",
)

_paths = {}          # id(core) -> AccelPath
_why = None
_ports = {}          # player id -> AccelControlPort (loop thread)
_reader_loop = None  # the loop whose reader watches the event pipe


def _layout_ok():
    got = _accel.frame_layout()
    want = {"size": ctypes.sizeof(C.Frame)}
    for name in ("codec", "data", "datalen", "buflen", "samples", "rate", "channels"):
        want[name] = getattr(C.Frame, name).offset
    return got == want, got, want


def why_not():
    """Why the accelerated path is not used ("" when it is available)."""
    return _why or ""


def path(core):
    """The AccelPath bound to this core, or None (why_not() says why)."""
    global _why
    if _accel is None:
        _why = accelerator.why_not
        return None
    p = _paths.get(id(core))
    if p is not None and p.core is core:
        return p
    ok, got, want = _layout_ok()
    if not ok:
        _why = "switch_frame_t layout mismatch: compiled %r, ctypes %r" % (got, want)
        return None
    _accel.bind({name: ctypes.cast(getattr(core, name), ctypes.c_void_p).value for name in _BIND})
    p = _paths[id(core)] = AccelPath(core)
    _why = None
    return p


def dispatch_events():
    """The loop thread: everything the media threads posted since the last call."""
    for pid, kind, value in _accel.take_events():
        port = _ports.get(pid)
        if port is not None:
            port.event(kind, value)


def unwatch():
    """The loop that watched the event pipe is gone (service.stop_loop): close the pipe; a new
    loop makes a new one. Events posted meanwhile wait in the queue."""
    global _reader_loop
    _reader_loop = None
    if _accel is not None:
        _accel.close_event_fd()


def _watch(loop):
    global _reader_loop
    if _reader_loop is loop:
        return
    fd = _accel.event_fd()
    loop.add_reader(fd, dispatch_events)
    _reader_loop = loop
    # what was posted before the pipe existed (no byte was written for it) is taken now
    dispatch_events()


SINK_MAX_FRAME = 1 << 20      # larger binary frames go through aiohttp and Python (rare: seconds of audio)


class AccelPath:
    name = "accel"

    def __init__(self, core):
        self.core = core
        self.ws_frames = _accel.ws_frames     # masked binary frames: the capture clock's direct path
        self.workers = _accel.set_workers(min(os.cpu_count() or 1, 8))
        self.resampler = resampler            # the server's audio to the call's rate

    def capture(self, uuid, mix, call_rate, ptime_ms, rate, chunk_ms, encoding="L16"):
        return AccelCapture(self.core, uuid, mix, call_rate, ptime_ms, rate, chunk_ms, encoding)

    def queue(self, uuid, call_rate, ptime_ms, settings):
        return AccelQueue(uuid, call_rate, ptime_ms, settings.playback_buffer_ms, settings.playback_jitter_ms)

    def binary_sink(self, queue, rate_in, rate_out, max_frame):
        """The server's binary L16 at rate_in straight into `queue` (an AccelQueue) at the call's
        rate, in C: an _accel.BinarySink, or None where the ratio needs libsamplerate."""
        rs = None
        if rate_in != rate_out:
            rs = resampler(rate_in, rate_out, 1, lead=True)
            if not isinstance(rs, Resampler):
                return None
            rs = rs._r
        return _accel.BinarySink(queue.p, rs, min(max_frame, SINK_MAX_FRAME))

    def released_s(self):
        return _accel.pass_times()

    def control(self, uuid, call_rate, ptime_ms, queue, capture, listener, player, loop):
        return AccelControlPort(self.core, uuid, call_rate, ptime_ms, queue, capture, listener, player, loop)


class Resampler:
    """audio.PolyphaseResampler's interface, its filter run in C."""

    def __init__(self, rs):
        self.rate_in, self.rate_out, self.channels, self.ratio = rs.rate_in, rs.rate_out, rs.channels, rs.ratio
        self.lead = rs.lead
        self._r = _accel.Resampler(np.concatenate(rs.h).astype(np.float32), rs.L, rs.M, rs.d, rs.channels, rs.lead)
        self.process = self._r.process
        self.flush = self._r.flush


def resampler(rate_in, rate_out, channels=1, lead=False):
    """audio.resampler(), with the polyphase ratios run in C."""
    rs = audio_resampler(rate_in, rate_out, channels, lead)
    return Resampler(rs) if isinstance(rs, PolyphaseResampler) else rs


# ---- capture ----------------------------------------------------------------------------------------

ENCODING_CODES = {"L16": 0, "PCMU": 1, "PCMA": 2}     # _accel.Capture's `encoding`


class AccelCapture:
    """The capture bug read in C: `batch` goes to _accel.capture_pass once per tick; `convert()`
    turns its result into complete chunks (one bytes object, a multiple of chunk_bytes), or None
    when the bug is gone (the call's media ended). With `encoding` PCMU/PCMA the chunks are G.711
    (encoded in C, or in Python where Python resamples)."""

    def __init__(self, core, uuid, mix, call_rate, ptime_ms, rate, chunk_ms, encoding="L16"):
        self.core = core
        self.uuid = uuid
        self.both = mix != "mono"
        channels = 2 if mix == "stereo" else 1
        self.chunk_bytes = rate * chunk_ms // 1000 * sample_bytes(encoding) * channels
        rs = audio_resampler(call_rate, rate, channels)
        kw = {"uuid": uuid.encode("utf-8", "surrogateescape"), "frame_bytes": call_rate * ptime_ms // 1000 * 2,
              "mix": mix}
        self.uplink = None
        if isinstance(rs, Passthrough):
            kw.update(chunk_bytes=self.chunk_bytes, encoding=ENCODING_CODES[encoding])
        elif isinstance(rs, PolyphaseResampler):
            kw.update(chunk_bytes=self.chunk_bytes, encoding=ENCODING_CODES[encoding],
                      taps=np.concatenate(rs.h).astype(np.float32), L=rs.L, M=rs.M, d=rs.d)
        else:   # a ratio only libsamplerate takes: C reads, Python resamples, chunks (and encodes)
            self.uplink = Uplink(call_rate, rate, channels, chunk_ms, encoding)
        self.batch = _accel.Capture(**kw)

    def attach(self, session):
        """The bugs (API thread, session read-locked): READ_STREAM, and for mixed/stereo a
        WRITE_STREAM one too (paired in C; see audio.Pairer)."""
        core = self.core
        bug, status = core.bug_add(session, CAPTURE_BUG, None, 0, C.SMBF_READ_STREAM)
        if bug is None:
            return False, "switch_core_media_bug_add failed (status %d)" % status
        wbug = None
        if self.both:
            wbug, status = core.bug_add(session, CAPTURE_BUG, None, 0, C.SMBF_WRITE_STREAM)
            if wbug is None:
                core.bug_remove(session, bug)
                return False, "switch_core_media_bug_add failed (status %d)" % status
        self.batch.set_bug(bug, wbug)
        self._bugs = (bug, wbug)
        return True, None

    def remove(self, session):
        """Remove the bugs (API thread, session read-locked by the caller)."""
        for bug in getattr(self, "_bugs", ()):
            if bug is not None:
                self.core.bug_remove(session, bug)
        self.batch.forget()

    @property
    def bug(self):
        return self.batch.bug

    @property
    def frames_read(self):
        return self.batch.frames_read

    @property
    def paused(self):
        return self.batch.paused

    @paused.setter
    def paused(self, value):
        self.batch.paused = value

    def convert(self, result):
        """A result of capture_pass() or poll(): the chunks for the outbox (bytes), None when the bug
        is gone; frames a short send left go to `on_rest` (the transport) first."""
        kind, value = result
        if kind == _CHUNKS:
            return value if self.uplink is None or not value else b"".join(self.uplink.feed(value))
        if kind == _GONE:
            return None
        if self.on_rest is not None:
            self.on_rest(value)
        return b""

    def poll(self, remove=False):
        """This capture now (stop, a digit, a text that must follow the audio so far)."""
        return self.convert(self.batch.poll(remove=remove))

    # the direct path: complete chunks go to the socket from C during the pass, as masked frames, while
    # nothing waits before them (the stream's outbox and the transport's buffer are empty)
    on_rest = None        # the transport's write: for the frames a short send left

    def attach_socket(self, fd):
        """Send from C on this socket (the stream says when). False if not possible."""
        if fd is None or self.uplink is not None:
            return False
        self.batch.set_socket(fd)
        return True

    def detach_socket(self):
        self.on_rest = None
        self.batch.set_socket(-1)

    def stop_direct(self):
        self.batch.direct = False

    @property
    def direct(self):
        return self.batch.direct

    @direct.setter
    def direct(self, on):
        self.batch.direct = on

    @property
    def sent(self):
        """(messages, payload bytes) sent from C."""
        return self.batch.sent

    def feed(self, tail, final=True):
        """What the control bug's CLOSE read out of the bugs ((read, write) bytes) → complete chunks,
        paired and drained (`final`)."""
        read, write = tail or (b"", b"")
        data = self.batch.feed(read, write, final=final)
        if self.uplink is not None:
            return b"".join(self.uplink.feed(data)) if data else b""
        return data

    def flush(self):
        """What is still held: the resampler's delay and a partial chunk (may be short)."""
        if self.uplink is not None:
            return b"".join(self.uplink.flush())
        return self.batch.flush()

    def forget(self):
        self.batch.forget()


# ---- playback --------------------------------------------------------------------------------------

class AccelQueue:
    """audio.PlaybackQueue's loop-thread interface over the C queue; the marks stay here."""

    def __init__(self, uuid, rate, ptime_ms, max_ms, jitter_ms, hold_ms=40):
        self.rate = rate
        self.max_bytes = rate * max_ms // 1000 * 2
        self.frame_bytes = rate * ptime_ms // 1000 * 2
        self.jitter_bytes = jitter_bytes(rate, jitter_ms)
        self.p = _accel.Player(uuid.encode("utf-8", "surrogateescape"), rate, ptime_ms, self.max_bytes,
                               hold_ms=float(hold_ms), jitter_ms=float(jitter_ms), jitter_bytes=self.jitter_bytes)
        self._marks = collections.deque()     # (position, name)
        self._wake = False

    # what playback.Player uses
    def push(self, pcm16):
        r = self.p.push(pcm16)
        if r == 2:
            self._wake = True
        return r != 0

    def take_wake(self):
        wake, self._wake = self._wake, False
        return wake

    def mark(self, name):
        if not self.p.queued:
            return True
        self._marks.append((self.p.pushed, name))
        if len(self._marks) == 1:
            self.p.set_mark_at(self._marks[0][0])
        return False

    def clear_marks(self):
        names = [n for _, n in self._marks]
        self._marks.clear()
        self.p.set_mark_at(-1)
        return names

    def clear(self):
        _, was = self.p.clear()
        names = [n for _, n in self._marks]
        self._marks.clear()
        return names, was

    def set_paused(self, paused):
        wake, was = self.p.pause(paused)
        if wake:
            self._wake = True
        return was

    def stop_playing(self):
        return self.p.stop_playing()

    def take_stats(self):
        return self.p.take_stats()

    def drop(self, nbytes, frame_bytes, silent_below=0):
        return self.p.drop(nbytes, frame_bytes, silent_below), None   # marks reached: by event

    @property
    def paused(self):
        return self.p.paused

    @property
    def playing(self):
        return self.p.playing

    @property
    def queued(self):
        return self.p.queued

    @property
    def queued_ms(self):
        return self.p.queued * 1000 // (2 * self.rate)

    @property
    def marks_waiting(self):
        return len(self._marks)

    @property
    def debt(self):
        return self.p.debt

    def marks_reached(self, played):
        """EV_MARK: the names of the marks now played; the next mark is armed."""
        names = []
        while self._marks and self._marks[0][0] <= played:
            names.append(self._marks.popleft()[1])
        self.p.set_mark_at(self._marks[0][0] if self._marks else -1)
        return names

    # tests
    def pull(self, nbytes):
        return self.p.pull(nbytes)


class AccelControlPort:
    """The control bug with the C callback. Same contract as media.ControlPort: the listener's
    `media_closed(tail, cause)` once, and the player's `playback_started(t)`, `playback_done()`,
    `marks_played(names)`, all on the loop thread (through the event pipe)."""

    def __init__(self, core, uuid, rate, ptime_ms, queue, capture, listener, player, loop):
        self.core = core
        self.uuid = uuid
        self.rate = rate
        self.ptime_ms = ptime_ms
        self.queue = queue
        self.capture = capture
        self.listener = listener
        self.player = player
        self.loop = loop
        # a stream with playback off still needs the bug (it sees the end of the call's media)
        self.p = queue.p if queue is not None else _accel.Player(
            uuid.encode("utf-8", "surrogateescape"), rate, ptime_ms, 0)
        self.p.set_capture(capture.batch)
        self.bug = None
        self._closed_seen = False
        self._codec = None

    @property
    def closed(self):
        return self._closed_seen or self.p.closed

    @property
    def playing(self):
        return self.p.playing

    @property
    def frames_replaced(self):
        return self.p.frames_replaced

    @property
    def frames_written(self):
        return self.p.frames_written

    def attach(self, session):
        flags = CONTROL_FLAGS
        if self.queue is not None:
            codec = C.Codec.from_address(self.p.codec_address)
            if not self.core.l16_codec_into(codec, session, self.rate, self.ptime_ms):
                return False, "cannot initialise an L16 codec at %d Hz / %d ms" % (self.rate, self.ptime_ms)
            self._codec = codec
            self.p.codec_ready(codec.mutex)
            flags |= PLAY_FLAGS
        _accel.event_fd()     # the pipe exists before the bug can post: its byte then wakes the loop
        self.loop.call_soon_threadsafe(_watch, self.loop)
        _ports[self.p.id] = self
        self.p.bug_ref()
        bug, status = self.core.bug_add(session, CONTROL_BUG, _CALLBACK, self.p.user_data, flags)
        if bug is None:
            _ports.pop(self.p.id, None)
            self.p.bug_unref()
            self.p.release_codec()
            return False, "switch_core_media_bug_add failed (status %d)" % status
        self.bug = bug
        self.p.set_bug(bug)
        return True, None

    def detach(self, session):
        """Remove the bug (the core then calls CLOSE on this thread). Safe after a hangup."""
        if self.bug is not None and not self.p.closed:
            self.core.bug_remove(session, self.bug)

    def wake(self, uuid=None):
        return self.p.wake() if self.queue is not None else False

    def event(self, kind, value):
        """Loop thread: what the C callback posted."""
        if kind == _accel.EV_STARTED:
            self.player.playback_started(value / 1e9)
        elif kind == _accel.EV_DONE:
            self.player.playback_done()
        elif kind == _accel.EV_MARK:
            names = self.queue.marks_reached(value) if self.queue is not None else []
            if names:
                self.player.marks_played(names)
        elif kind == _accel.EV_CLOSED:
            if self._closed_seen:
                return
            self._closed_seen = True
            _ports.pop(self.p.id, None)
            self.listener.media_closed(self.p.take_tail(), value)


_CALLBACK = C.BUG_CALLBACK(_accel.callback_address()) if _accel is not None else None


_CHUNKS, _GONE, _REST = 0, 1, 2


def capture_pass(captures):
    """Read every accelerated capture of a tick in one call (the GIL released meanwhile)."""
    return _accel.capture_pass(captures)


def live_ports():
    """Accelerated control bugs still attached (tests: 0 once every stream is over)."""
    return len(_ports)
