"""Media bugs: capture without any per-frame Python, playback with Python only while playing.

Each stream has up to two bugs on its call:

- The capture bug (`audio_stream`) has NO callback. The core buffers the call's frames in the
  bug by itself (up to 512 KB per direction) and never runs Python for it. The loop thread reads
  the buffered frames once per capture pass (`CapturePort.poll`), inside
  `switch_core_media_bug_exec_all`, which holds the session's bug-list write lock while it calls
  us: the core cannot remove (and free) the bug during the read, and "our bug was not visited"
  is how the stream learns that the call's media ended (hangup, or someone removed it).
- The control bug (`audio_stream_ctl`) has the callback below. With STREAM_PLAYBACK on it plays
  the server's audio (WRITE_REPLACE | READ_PING), and is dormant (both flags cleared: the core
  calls nothing) while there is nothing to play: the loop thread switches the flags on when the
  server's audio arrives (`ControlPort.wake`, inside exec_all), the READ_PING callback switches
  them off once the queue is empty (inside its own callback, where the list is read-locked).
  Either way its CLOSE callback sees the hangup at once: the core closes every bug of the call
  under one write lock and destroys them only afterwards, so CLOSE can still read the last frames
  out of the capture bug (the ones no capture pass has read yet) and nothing is lost.

This module is imported, never reloaded (mod_python3 reloads only the entry module), so the two
ctypes callback objects below live as long as the process: FreeSWITCH may call them whenever a bug
is attached. Media-thread code here is short: no blocking, no big allocations, never raises.
"""
import ctypes
import itertools
import threading
import time

from . import core as C
from ..audio import Pairer, PlaybackQueue, Uplink, resampler
from ..policy import PlaybackPolicy

CAPTURE_BUG = "audio_stream"
CONTROL_BUG = "audio_stream_ctl"
_CAPTURE_BUG_B = CAPTURE_BUG.encode()
_CONTROL_BUG_B = CONTROL_BUG.encode()
PLAY_FLAGS = C.SMBF_WRITE_REPLACE | C.SMBF_READ_PING
# switch_core_media_bug_add turns flags 0 into READ|WRITE (per-frame READ callbacks): the control
# bug always carries STEREO_SWAP, which only switch_core_media_bug_read looks at (never called on
# this bug), so its flags are never 0 and mean nothing per frame while dormant.
CONTROL_FLAGS = C.SMBF_STEREO_SWAP
TAIL_BYTES = 64 * 1024        # what CLOSE reads out of the capture bug at most (a tick is ~1 KB)

_keys = itertools.count(1)
_lock = threading.Lock()
_captures = {}     # key -> CapturePort (loop thread)
_players = {}      # key -> ControlPort (media threads, and the loop thread in exec_all)

# One scratch buffer for every capture read: all of them happen on the loop thread, one at a time.
# A pass reads at most what fits, so the work per stream per pass is bounded; the rest stays in
# the core's buffer for the next pass.
SCRATCH_BYTES = 256 * 1024
READ_BUFLEN = 2 * C.SWITCH_RECOMMENDED_BUFFER_SIZE   # a stereo read writes two frames' worth
_scratch = ctypes.create_string_buffer(SCRATCH_BYTES)
_scratch_addr = ctypes.addressof(_scratch)
_wscratch = ctypes.create_string_buffer(SCRATCH_BYTES)      # the write side of a mixed/stereo capture
_wscratch_addr = ctypes.addressof(_wscratch)


# CPU time spent in _on_bug (the pure-Python path's per-frame cost; `status` reports it): each
# thread adds only to its own entry, so no update is lost and no lock is taken.
_cb_ns = {}
_thread_ns = time.thread_time_ns
_ident = threading.get_ident


def callback_cpu_s():
    """CPU seconds every thread has spent in _on_bug since the process started."""
    return sum(list(_cb_ns.values())) / 1e9


def _on_bug(bug, user_data, abc_type):
    """The control bug's callback (media threads; CLOSE also on whichever thread removes it)."""
    t0 = _thread_ns()
    try:
        port = _players.get(user_data)
        if port is not None:
            if abc_type == C.ABC_WRITE_REPLACE:
                port.on_write_replace(bug)
            elif abc_type == C.ABC_READ_PING:
                port.on_read_ping(bug)
            elif abc_type == C.ABC_CLOSE:
                port.on_close(bug)
        tid = _ident()
        _cb_ns[tid] = _cb_ns.get(tid, 0) + _thread_ns() - t0
    except BaseException:  # never let an exception cross into the core
        pass
    return 1


def _on_exec(bug, user_data):
    """switch_core_media_bug_exec_all's callback: the session's bug list is write-locked."""
    try:
        port = _captures.get(user_data) or _players.get(user_data)
        if port is not None:
            port.locked(bug)
    except BaseException:
        pass


CALLBACK = C.BUG_CALLBACK(_on_bug)
EXEC = C.EXEC_CALLBACK(_on_exec)


class CapturePort:
    """The call's audio, read by the loop thread from callback-less bugs: one READ_STREAM bug
    (mono), or for `mixed`/`stereo` also a WRITE_STREAM bug for what the caller hears (both named
    CAPTURE_BUG, read in the same exec_all, paired by audio.Pairer: see there why not one
    READ|WRITE bug).

    `poll(uuid)` returns what every bug buffered since the last poll (L16 at the call's rate):
    bytes (mono) or (read, write) (both sides), empty when there is none, or None when the bugs
    are gone (the call's media ended).
    """

    def __init__(self, core, both_sides):
        self.core = core
        self.both = both_sides
        self.key = next(_keys)
        self.bug = None
        self.wbug = None
        self.frames_read = 0
        self._frame = C.Frame()
        self._frame_ptr = ctypes.pointer(self._frame)
        self._visited = False
        self._used = 0
        self._wused = 0
        self.removing = False     # the loop thread is removing the bugs: CLOSE must not read them

    def attach(self, session):
        bug, status = self.core.bug_add(session, CAPTURE_BUG, None, self.key, C.SMBF_READ_STREAM)
        if bug is None:
            return False, "switch_core_media_bug_add failed (status %d)" % status
        if self.both:
            wbug, status = self.core.bug_add(session, CAPTURE_BUG, None, self.key, C.SMBF_WRITE_STREAM)
            if wbug is None:
                self.core.bug_remove(session, bug)
                return False, "switch_core_media_bug_add failed (status %d)" % status
            self.wbug = wbug
        self.bug = bug
        with _lock:
            _captures[self.key] = self
        return True, None

    def remove(self, session):
        """Remove the bugs (API thread, session read-locked by the caller)."""
        for bug in (self.bug, self.wbug):
            if bug is not None:
                self.core.bug_remove(session, bug)
        self.forget()

    def poll(self, uuid, remove=False):
        """Loop thread. `remove=True`: read what is left, then remove the bugs."""
        if self.bug is None:
            return None
        if remove:
            self.removing = True
        core = self.core
        session = core.force_locate(uuid)
        if not session:
            self.forget()
            return None
        self._visited = False
        self._used = self._wused = 0
        try:
            core.switch_core_media_bug_exec_all(session, _CAPTURE_BUG_B, EXEC, self.key)
            if remove and self._visited:
                for bug in (self.bug, self.wbug):
                    if bug is not None:
                        core.bug_remove(session, bug)
        finally:
            core.unlock(session)
        if not self._visited or remove:
            self.forget()
            if not self._visited:
                return None
        read = ctypes.string_at(_scratch_addr, self._used) if self._used else b""
        if not self.both:
            return read
        return read, ctypes.string_at(_wscratch_addr, self._wused) if self._wused else b""

    def forget(self):
        with _lock:
            _captures.pop(self.key, None)
        self.bug = self.wbug = None

    def locked(self, bug):
        """Inside exec_all (loop thread): read every buffered frame of our bugs."""
        if bug == self.bug:
            self._visited = True
            self._used = self._read_into(bug, self._frame, _scratch_addr, self._used, SCRATCH_BYTES)
        elif bug == self.wbug:
            self._wused = self._read_into(bug, self._frame, _wscratch_addr, self._wused, SCRATCH_BYTES)

    def _read_into(self, bug, frame, base, used, size):
        # a single-direction bug: fill=TRUE drains exactly the frames it holds
        read = self.core.switch_core_media_bug_read
        ptr = ctypes.pointer(frame) if frame is not self._frame else self._frame_ptr
        n = 0
        while used + READ_BUFLEN <= size:
            frame.data = base + used
            frame.buflen = READ_BUFLEN
            frame.datalen = 0
            if read(bug, ptr, 1) != C.SUCCESS:
                break
            used += frame.datalen
            n += 1
        self.frames_read += n
        return used

    def read_tail(self):
        """On the thread that closes the bugs at hangup, inside the core's bug-list write lock
        (from the control bug's CLOSE): what no capture pass has read yet, as poll() returns it.
        The capture bugs are closed or about to be, not yet destroyed."""
        bug, wbug = self.bug, self.wbug
        if bug is None or self.removing:
            return b""
        buf = ctypes.create_string_buffer(TAIL_BYTES)
        frame = C.Frame()
        used = self._read_into(bug, frame, ctypes.addressof(buf), 0, TAIL_BYTES)
        if not self.both:
            return buf.raw[:used]
        wbuf = ctypes.create_string_buffer(TAIL_BYTES)
        wused = self._read_into(wbug, frame, ctypes.addressof(wbuf), 0, TAIL_BYTES) if wbug else 0
        return buf.raw[:used], wbuf.raw[:wused]


class ControlPort:
    """The stream's control bug: sees the end of the call's media at once, and plays the
    server's audio into the call one frame at a time on the media threads (when `queue`, the
    stream's PlaybackQueue, is not None).

    `notify(fn, *args)` hands a call to the loop thread: `listener.media_closed(tail, cause)` once
    (the bug is gone; `tail` = the capture bug's unread frames at hangup, else b""; `cause` = the
    call's hangup cause, 0 if it is still up), and
    `player.playback_started(t)`, `player.playback_done()`, `player.marks_played(names)`.
    """

    def __init__(self, core, rate, ptime_ms, queue, capture, listener, player, notify, uuid=None):
        self.core = core
        self.uuid = uuid
        self.rate = rate
        self.ptime_ms = ptime_ms
        self.queue = queue
        self.capture = capture
        self.listener = listener
        self.player = player
        self.notify = notify
        self.key = next(_keys)
        self.bug = None
        self.closed = False
        self.policy = PlaybackPolicy()
        self.frames_replaced = 0
        self.frames_written = 0
        self._codec = None
        self._codec_addr = None
        self._wbuf = None
        self._wframe = None
        self._wframe_ptr = None
        self._write_bytes = rate * ptime_ms // 1000 * 2
        self._writer = None        # thread ident while we write a frame ourselves
        self._replaced = 0         # core writes seen by WRITE_REPLACE (any thread)
        self._replaced_seen = 0    # ... as of the last READ_PING
        self._wake_ok = False

    @property
    def playing(self):
        return self.queue is not None and self.queue.playing

    # -- API / loop thread, session read-locked by the caller ----------------------------------
    def attach(self, session):
        flags = CONTROL_FLAGS
        if self.queue is not None:
            ok, reason = self._make_codec(session)
            if not ok:
                return ok, reason
            flags |= PLAY_FLAGS
        with _lock:
            _players[self.key] = self
        bug, status = self.core.bug_add(session, CONTROL_BUG, CALLBACK, self.key, flags)
        if bug is None:
            with _lock:
                _players.pop(self.key, None)
            self._release_codec()
            return False, "switch_core_media_bug_add failed (status %d)" % status
        self.bug = bug
        return True, None

    def _make_codec(self, session):
        codec = self.core.l16_codec(session, self.rate, self.ptime_ms)
        if codec is None:
            return False, "cannot initialise an L16 codec at %d Hz / %d ms" % (self.rate, self.ptime_ms)
        self._codec = codec
        self._codec_addr = ctypes.addressof(codec)
        self._wbuf = ctypes.create_string_buffer(self._write_bytes)
        wf = C.Frame()
        wf.codec = self._codec_addr
        wf.data = ctypes.addressof(self._wbuf)
        wf.buflen = self._write_bytes
        wf.rate = self.rate
        wf.channels = 1
        self._wframe = wf
        self._wframe_ptr = ctypes.pointer(wf)
        return True, None

    def detach(self, session):
        """Remove the bug (the core then calls CLOSE on this thread). Safe after a hangup."""
        if self.bug is not None and not self.closed:
            self.core.bug_remove(session, self.bug)

    def wake(self, uuid=None):
        """Loop thread: switch the callbacks on (the server's audio arrived at a dormant port).
        False if the bug is gone."""
        if self.closed or self.bug is None or self.queue is None:
            return False
        session = self.core.locate(uuid or self.uuid)
        if not session:
            return False
        self._wake_ok = False
        try:
            self.core.switch_core_media_bug_exec_all(session, _CONTROL_BUG_B, EXEC, self.key)
        finally:
            self.core.unlock(session)
        return self._wake_ok

    def locked(self, bug):
        """Inside exec_all (loop thread): no callback of this bug is running."""
        if bug != self.bug:
            return
        self._replaced_seen = self._replaced
        self.policy.activate()
        self.core.switch_core_media_bug_set_flag(bug, PLAY_FLAGS)
        self._wake_ok = True

    # -- media threads -------------------------------------------------------------------------
    def _pull(self, nbytes):
        data, marks, started, done = self.queue.pull(nbytes)
        if marks:
            self.notify(self.player.marks_played, marks)
        if done:
            self.notify(self.player.playback_done)
        if started:
            self.notify(self.player.playback_started, time.monotonic())
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
        if self.queue is None:
            return
        replaced = self._replaced
        core_wrote = replaced != self._replaced_seen
        self._replaced_seen = replaced
        policy = self.policy
        if policy.may_write(core_wrote):
            data = self._pull(self._write_bytes)
            if data is not None:
                self._write(bug, data)
                return
        if policy.may_sleep() and self.queue.sleep_if_idle():
            # nothing to play: no more callbacks until the loop wakes us (inside exec_all, which
            # waits for this callback to return before it sets the flags again)
            policy.sleep()
            self.core.switch_core_media_bug_clear_flag(bug, PLAY_FLAGS)

    def _write(self, bug, data):
        n = len(data)
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

    def on_close(self, bug=None):
        if self.closed:
            return
        tail = b""
        cause = 0
        try:
            tail = self.capture.read_tail()
            if bug:
                cause = self.core.hangup_cause(self.core.switch_core_media_bug_get_session(bug))
        finally:
            self.closed = True
            with _lock:
                _players.pop(self.key, None)
            self._release_codec()
            self.notify(self.listener.media_closed, tail, cause)

    def _release_codec(self):
        if self._codec is not None:
            self.core.codec_destroy(self._codec)
            self._codec = None


class CaptureSource:
    """The stream's audio out, pure-Python path: CapturePort + audio.Uplink (which encodes G.711
    for `encoding` PCMU/PCMA). `poll()` returns the complete chunks read so far as one bytes object (a
    multiple of `chunk_bytes`), b"" when there is none, None when the bug is gone (the call's media
    ended). `batch` is None: the capture clock polls it on its own (switch/accel.py's AccelCapture
    is read in one C call per tick)."""

    batch = None

    def __init__(self, core, uuid, mix, call_rate, ptime_ms, rate, chunk_ms, encoding="L16"):
        self.uuid = uuid
        both = mix in ("mixed", "stereo")
        self.port = CapturePort(core, both)
        self.pairer = Pairer(call_rate * ptime_ms // 1000 * 2, mix == "stereo") if both else None
        self.uplink = Uplink(call_rate, rate, 2 if mix == "stereo" else 1, chunk_ms, encoding)
        self.chunk_bytes = self.uplink.chunk_bytes
        self.paused = False

    def attach(self, session):
        return self.port.attach(session)

    def remove(self, session):
        self.port.remove(session)

    @property
    def bug(self):
        return self.port.bug

    @property
    def frames_read(self):
        return self.port.frames_read

    def convert(self, result):
        return result

    def poll(self, remove=False):
        data = self.port.poll(self.uuid, remove)
        if data is None:
            return None
        return self.feed(data, final=remove)

    def feed(self, raw, final=False):
        """What the bugs gave (poll()'s shape, or the control bug's CLOSE tail) → complete chunks.
        `final`: the bugs are gone, pair what is left."""
        if self.pairer is not None:
            read, write = raw or (b"", b"")
            raw = self.pairer.push(read, write, time.monotonic())
            if final:
                raw += self.pairer.drain()
        if not raw or self.paused:
            return b""
        return b"".join(self.uplink.feed(raw))

    def flush(self):
        return b"".join(self.uplink.flush())

    def forget(self):
        self.port.forget()

    # no direct path here: every chunk goes through the stream's outbox
    direct = False
    sent = (0, 0)

    def attach_socket(self, fd):
        return False

    def detach_socket(self):
        pass

    def stop_direct(self):
        pass


class PythonPath:
    """The media path without the compiled accelerator: ctypes callbacks and numpy."""

    name = "python"
    ws_frames = None          # audio goes through the outbox and aiohttp's writer
    resampler = staticmethod(resampler)

    def __init__(self, core):
        self.core = core

    def capture(self, uuid, mix, call_rate, ptime_ms, rate, chunk_ms, encoding="L16"):
        return CaptureSource(self.core, uuid, mix, call_rate, ptime_ms, rate, chunk_ms, encoding)

    def queue(self, uuid, call_rate, ptime_ms, settings):
        return PlaybackQueue(call_rate, settings.playback_buffer_ms, jitter_ms=settings.playback_jitter_ms,
                             ptime_ms=ptime_ms)

    def binary_sink(self, queue, rate_in, rate_out, max_frame):
        return None           # the server's binary frames come as messages (playback.Player.binary)

    def released_s(self):
        return None           # no pass runs without the GIL

    def control(self, uuid, call_rate, ptime_ms, queue, capture, listener, player, loop):
        return ControlPort(self.core, call_rate, ptime_ms, queue, capture.port, listener, player,
                           loop.call_soon_threadsafe, uuid)


def live_ports():
    """Bugs this process still has registered (tests: 0 once every stream is over), on either path."""
    from . import accel
    return len(_captures) + len(_players) + accel.live_ports()
