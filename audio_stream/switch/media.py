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
from ..policy import PairPolicy, PlaybackPolicy

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


def _on_bug(bug, user_data, abc_type):
    """The control bug's callback (media threads; CLOSE also on whichever thread removes it)."""
    try:
        port = _players.get(user_data)
        if port is None:
            return 1
        if abc_type == C.ABC_WRITE_REPLACE:
            port.on_write_replace(bug)
        elif abc_type == C.ABC_READ_PING:
            port.on_read_ping(bug)
        elif abc_type == C.ABC_CLOSE:
            port.on_close(bug)
        return 1
    except BaseException:  # never let an exception cross into the core
        return 1


def _on_exec(bug, user_data):
    """switch_core_media_bug_exec_all's callback: the session's bug list is write-locked."""
    try:
        port = _captures.get(user_data) or _players.get(user_data)
        if port is not None and bug == port.bug:
            port.locked(bug)
    except BaseException:
        pass


CALLBACK = C.BUG_CALLBACK(_on_bug)
EXEC = C.EXEC_CALLBACK(_on_exec)


class CapturePort:
    """The call's audio, read by the loop thread from a callback-less bug.

    `poll(uuid)` returns the bytes of every frame buffered since the last poll (L16 at the call's
    rate, in the stream's layout: mono, mixed, or stereo interleaved), b"" when there is none, or
    None when the bug is gone (the call's media ended).
    """

    def __init__(self, core, flags):
        self.core = core
        self.flags = flags
        self.key = next(_keys)
        self.bug = None
        self.pair = PairPolicy() if flags & C.SMBF_WRITE_STREAM else None
        self.frames_read = 0
        self._frame = C.Frame()
        self._frame_ptr = ctypes.pointer(self._frame)
        self._visited = False
        self._used = 0
        self.removing = False     # the loop thread is removing the bug: CLOSE must not read it

    def attach(self, session):
        bug, status = self.core.bug_add(session, CAPTURE_BUG, None, self.key, self.flags)
        if bug is None:
            return False, "switch_core_media_bug_add failed (status %d)" % status
        self.bug = bug
        with _lock:
            _captures[self.key] = self
        return True, None

    def poll(self, uuid, remove=False):
        """Loop thread. `remove=True`: read what is left, then remove the bug."""
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
        self._used = 0
        try:
            core.switch_core_media_bug_exec_all(session, _CAPTURE_BUG_B, EXEC, self.key)
            if remove and self._visited:
                core.bug_remove(session, self.bug)
        finally:
            core.unlock(session)
        if not self._visited or remove:
            self.forget()
            if not self._visited:
                return None
        return ctypes.string_at(_scratch_addr, self._used) if self._used else b""

    def take_last(self, uuid):
        """Loop thread: what is left, then remove the bug (stop, graceful-shutdown)."""
        return self.poll(uuid, remove=True)

    def forget(self):
        with _lock:
            _captures.pop(self.key, None)
        self.bug = None

    def locked(self, bug):
        """Inside exec_all (loop thread): read every buffered frame into the scratch buffer."""
        self._visited = True
        n = self._read_all(bug, 1)
        if self.pair is not None and self.pair.pad(n):
            self._read_all(bug, 0)

    def _read_all(self, bug, fill):
        n, self._used = self._read_into(bug, fill, self._frame, _scratch_addr, self._used, SCRATCH_BYTES)
        return n

    def _read_into(self, bug, fill, frame, base, used, size):
        # fill=1 returns a frame only when every direction of the bug has one; a READ-only bug
        # drains its buffer. fill=0 pads a missing direction with silence and stops when both
        # are empty (it must never be used on a READ-only bug: there it never stops).
        read = self.core.switch_core_media_bug_read
        ptr = ctypes.pointer(frame) if frame is not self._frame else self._frame_ptr
        n = 0
        while used + READ_BUFLEN <= size:
            frame.data = base + used
            frame.buflen = READ_BUFLEN
            frame.datalen = 0
            if read(bug, ptr, fill) != C.SUCCESS:
                break
            used += frame.datalen
            n += 1
        self.frames_read += n
        return n, used

    def read_tail(self):
        """On the thread that closes the bugs at hangup, inside the core's bug-list write lock
        (from the control bug's CLOSE): what no capture pass has read yet. The capture bug is
        closed or about to be, not yet destroyed. Everything is drained, padded if both sides."""
        bug = self.bug
        if bug is None or self.removing:
            return b""
        buf = ctypes.create_string_buffer(TAIL_BYTES)
        base = ctypes.addressof(buf)
        frame = C.Frame()
        n, used = self._read_into(bug, 1, frame, base, 0, TAIL_BYTES)
        if self.pair is not None:
            n, used = self._read_into(bug, 0, frame, base, used, TAIL_BYTES)
        return buf.raw[:used]


class ControlPort:
    """The stream's control bug: sees the end of the call's media at once, and plays the
    server's audio into the call one frame at a time on the media threads (when `queue`, the
    stream's PlaybackQueue, is not None).

    `notify(fn, *args)` hands a call to the loop thread: `listener.media_closed(tail, cause)` once
    (the bug is gone; `tail` = the capture bug's unread frames at hangup, else b""; `cause` = the
    call's hangup cause, 0 if it is still up), and
    `player.playback_started(t)`, `player.playback_done()`, `player.marks_played(names)`.
    """

    def __init__(self, core, rate, ptime_ms, queue, capture, listener, player, notify):
        self.core = core
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
        self.playing = False       # written by the media threads only (see cut())
        self._cuts = 0             # written by the loop thread only
        self._cuts_seen = 0        # written by the media threads only
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

    def wake(self, uuid):
        """Loop thread: switch the callbacks on (the server's audio arrived at a dormant port).
        False if the bug is gone."""
        if self.closed or self.bug is None or self.queue is None:
            return False
        session = self.core.locate(uuid)
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
        self._replaced_seen = self._replaced
        self.policy.activate()
        self.core.switch_core_media_bug_set_flag(bug, PLAY_FLAGS)
        self._wake_ok = True

    def cut(self):
        """Loop thread: the current playback episode is over (clear, pause); the next frame that
        plays starts a new one. A handoff through two counters, each written by one thread."""
        self._cuts += 1

    # -- media threads -------------------------------------------------------------------------
    def _pull(self, nbytes):
        if self._cuts != self._cuts_seen:
            self._cuts_seen = self._cuts
            self.playing = False
        data, marks = self.queue.pull(nbytes)
        if marks:
            self.notify(self.player.marks_played, marks)
        if data is None:
            if self.playing and not self.queue.queued:
                self.playing = False
                self.notify(self.player.playback_done)
            return None
        if not self.playing:
            self.playing = True
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
        if policy.may_sleep() and not self.playing and self.queue.sleep_if_idle():
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


def live_ports():
    """Bugs this process still has registered (tests: 0 once every stream is over)."""
    return len(_captures) + len(_players)
