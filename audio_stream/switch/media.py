"""The media bug: one process-wide ctypes callback and the per-stream MediaPort it dispatches to.

This module is imported, never reloaded (mod_python3 reloads only the entry module), so the
callback object below lives as long as the process: FreeSWITCH may call it at any time while a
bug is attached. The callback runs on FreeSWITCH's media threads (240 KB stacks): it copies
frames out, copies prepared playback in, and never blocks, allocates much, or raises.
"""
import ctypes
import itertools
import threading
import time

from . import core as C

_ports = {}                    # user_data key -> MediaPort
_keys = itertools.count(1)
_ports_lock = threading.Lock()


def _on_bug(bug, user_data, abc_type):
    try:
        port = _ports.get(user_data)
        if port is None:
            return 1
        if abc_type == C.ABC_READ:
            port.on_read(bug)
        elif abc_type == C.ABC_WRITE_REPLACE:
            port.on_write_replace(bug)
        elif abc_type == C.ABC_READ_PING:
            port.on_read_ping(bug)
        elif abc_type == C.ABC_CLOSE:
            port.on_close()
        return 1
    except BaseException:  # never let an exception cross into the core
        return 1


CALLBACK = C.BUG_CALLBACK(_on_bug)

BUG_NAME = "audio_stream"
QUIET_PINGS = 3


class MediaPort:
    """One stream's attachment to one call.

    `sink(bytes)` receives every frame read from the bug (media thread; must not block).
    `queue` (a PlaybackQueue or None) is what plays into the call. `listener` gets, through
    `notify(fn, *args)` (which must hand the call to the loop thread), `bug_closed()`,
    `playback_started(t)` (t: time.monotonic() of the first frame), `playback_done()` and
    `marks_played(names)`; and, directly on the thread that closes the bug, `detached()`
    (must be quick and never block).
    """

    def __init__(self, core, flags, rate, ptime_ms, sink, queue, listener, notify):
        self.core = core
        self.flags = flags
        self.rate = rate
        self.ptime_ms = ptime_ms
        self.sink = sink
        self.queue = queue
        self.listener = listener
        self.notify = notify
        self.key = next(_keys)
        self.bug = None
        self.paused = False
        self.closed = False
        self.playing = False
        self.frames_read = 0
        self.frames_replaced = 0
        self.frames_written = 0
        self._buf = ctypes.create_string_buffer(C.SWITCH_RECOMMENDED_BUFFER_SIZE)
        self._buf_addr = ctypes.addressof(self._buf)
        self._both_sides = bool(flags & C.SMBF_WRITE_STREAM)
        self._frame = C.Frame()
        self._frame_ptr = ctypes.pointer(self._frame)
        self._codec = None
        self._wbuf = None
        self._wframe = None
        self._wframe_ptr = None
        self._write_bytes = rate * ptime_ms // 1000 * 2
        self._writer = None        # thread ident while we write a frame ourselves
        self._replaced = 0         # core writes seen by WRITE_REPLACE (any thread)
        self._replaced_seen = 0    # ... as of the last READ_PING
        self._quiet_pings = 0      # READ_PINGs in a row with no core write in between

    # -- attach / detach (API or loop thread, session read-locked by the caller) ----------------
    def attach(self, session):
        """Add the bug; returns (ok, reason)."""
        if self.queue is not None:
            codec = self.core.l16_codec(session, self.rate, self.ptime_ms)
            if codec is None:
                return False, "cannot initialise an L16 codec at %d Hz / %d ms" % (self.rate, self.ptime_ms)
            self._codec = codec
            self._wbuf = ctypes.create_string_buffer(C.SWITCH_RECOMMENDED_BUFFER_SIZE)
            wf = C.Frame()
            self._codec_addr = ctypes.addressof(codec)
            wf.codec = self._codec_addr
            wf.data = ctypes.addressof(self._wbuf)
            wf.buflen = C.SWITCH_RECOMMENDED_BUFFER_SIZE
            wf.rate = self.rate
            wf.channels = 1
            self._wframe = wf
            self._wframe_ptr = ctypes.pointer(wf)
        with _ports_lock:
            _ports[self.key] = self
        bug, status = self.core.bug_add(session, BUG_NAME, CALLBACK, self.key, self.flags)
        if bug is None:
            with _ports_lock:
                _ports.pop(self.key, None)
            self._release_codec()
            return False, "switch_core_media_bug_add failed (status %d)" % status
        self.bug = bug
        return True, None

    def detach(self, session):
        """Remove the bug (the core then calls CLOSE on this thread). Safe after a hangup."""
        if self.bug is not None and not self.closed:
            self.core.bug_remove(session, self.bug)

    # -- media thread ----------------------------------------------------------------------------
    def _read_one(self, bug, fill):
        frame = self._frame
        frame.data = self._buf_addr
        frame.buflen = C.SWITCH_RECOMMENDED_BUFFER_SIZE
        frame.datalen = 0
        if self.core.switch_core_media_bug_read(bug, self._frame_ptr, fill) != C.SUCCESS:
            return False
        n = frame.datalen
        if n and not self.paused:
            self.frames_read += 1
            self.sink(ctypes.string_at(self._buf_addr, n))
        return True

    def on_read(self, bug):
        # The core calls READ once for each frame it adds to the read buffer.
        # fill=TRUE returns a frame only when every stream of the bug has one: a READ-only bug
        # drains its buffer, but a READ|WRITE bug (mixed, stereo) gets nothing while the core
        # writes nothing to the channel (a parked call), and its read buffer just grows.
        # fill=FALSE pads a missing side with silence, but loops forever on a READ-only bug.
        # So: take the paired frames there are; if there were none, this tick's read frame goes
        # out alone (write side silent). The output then follows the caller's clock exactly.
        n = 0
        while n < 8 and self._read_one(bug, 1):
            n += 1
        if not n and self._both_sides:
            self._read_one(bug, 0)

    def _pull(self, nbytes):
        data, marks = self.queue.pull(nbytes)
        if marks:
            self.notify(self.listener.marks_played, marks)
        if data is None:
            if self.playing and not self.queue.queued:
                self.playing = False
                self.notify(self.listener.playback_done)
            return None
        if not self.playing:
            self.playing = True
            self.notify(self.listener.playback_started, time.monotonic())
        return data

    def on_write_replace(self, bug):
        if self.queue is None or self._writer == threading.get_ident():
            return          # our own frame, written from READ_PING: let it through
        self._replaced += 1
        fp = self.core.switch_core_media_bug_get_write_replace_frame(bug)
        if not fp:
            return
        frame = fp.contents
        n = frame.datalen
        if not n:
            return
        data = self._pull(n)
        if data is None:
            return
        ctypes.memmove(frame.data, data, n)
        self.core.switch_core_media_bug_set_write_replace_frame(bug, fp)
        self.frames_replaced += 1

    def on_read_ping(self, bug):
        # Write ourselves only when the core has written nothing to the channel for the last
        # QUIET_PINGS frames (counted in events, not wall time, so a GIL stall cannot fool it):
        # two writers on one session make the core drop a frame.
        if self.queue is None:
            return
        if self._replaced != self._replaced_seen:
            self._replaced_seen = self._replaced
            self._quiet_pings = 0
            return
        if self._quiet_pings < QUIET_PINGS:
            self._quiet_pings += 1
            return
        n = self._write_bytes
        data = self._pull(n)
        if data is None:
            return
        ctypes.memmove(self._wbuf, data, n)
        wf = self._wframe
        wf.datalen = n
        wf.samples = n // 2
        session = self.core.switch_core_media_bug_get_session(bug)
        self._writer = threading.get_ident()
        try:
            self.core.switch_core_session_write_frame(session, self._wframe_ptr, 0, 0)
        finally:
            self._writer = None
        if wf.codec != self._codec_addr:
            # FreeSWITCH 1.10 bug: when the channel's write codec is L16 and a WRITE_REPLACE bug
            # is present, switch_core_session_write_frame takes the encoder's NOOP branch, which
            # sets frame->codec to the session's write codec; it then unlocks that codec's mutex
            # instead of ours, leaving ours locked by this thread (a later codec destroy from
            # another thread deadlocks). Undo exactly that: restore the pointer, unlock ours.
            wf.codec = self._codec_addr
            self.core.switch_mutex_unlock(self._codec.mutex)
        self.frames_written += 1

    def on_close(self):
        if self.closed:
            return
        self.closed = True
        with _ports_lock:
            _ports.pop(self.key, None)
        self._release_codec()
        self.listener.detached()
        self.notify(self.listener.bug_closed)

    def _release_codec(self):
        if self._codec is not None:
            self.core.codec_destroy(self._codec)
            self._codec = None


def live_ports():
    return len(_ports)
