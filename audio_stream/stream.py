"""One call's stream: the call's media ↔ the outbox ↔ the server (link.py) ↔ events (events.py).

Threads: `attach()` runs on the API thread (the caller holds the session's read lock); everything
else on the loop thread. No Python runs on a media thread for the audio going out: the capture
port has no callback, and the service's capture clock calls `poll()` once per tick.

Life: `lifecycle.StreamMachine` decides everything: every command (stop, graceful-shutdown,
send_text, ...), every event from the call (hangup) and from the link (connected, lost, gone,
done) is one of its inputs, and `_input()` carries out the action its table gives for the current
state. While the API thread attaches (ATTACHING), every input waits and is replayed once the
attach is done, so a `stop` racing a `start` stops the stream as soon as it exists.

The parts are made by wiring.make_stream(); their contracts are in contracts.py; what the API may
ask is in controls.py; what the stream tells the world, in events.py.
"""
import asyncio
import time

from . import connection, lifecycle as L, metrics, protocol
from .controls import Controls
from .events import REPORT, STRIKE_OUT
from .link import CLOSE_TIMEOUT, Link
from .switch import core as C

MAX_TEXT_BYTES = 1 << 20   # texts waiting for a server that does not read
SHUTDOWN_CAUSES = (C.CAUSE_SYSTEM_SHUTDOWN,)   # a hangup because the switch is going away: close 1001
GONE_GRACE_S = 1.0         # capture bug gone and no CLOSE from the control bug after this: end anyway

# what a command answers when the stream cannot carry it out
ENDING = "the stream is ending"


class Stream:
    def __init__(self, be, runtime, uuid, cmd, settings, call_rate, ptime_ms, dialect_class, events):
        self.be = be
        self.runtime = runtime              # contracts.Runtime (service.py)
        self.uuid = uuid
        self.name = cmd.stream
        self.key = (uuid, cmd.stream)
        self.started_at = time.time()
        self.url = cmd.url
        self.mix = cmd.mix
        self.rate = cmd.rate
        self.metadata = cmd.text
        self.settings = settings
        self.call_rate = call_rate
        self.ptime_ms = ptime_ms
        self.channels = 2 if cmd.mix == "stereo" else 1
        self.dialect_class = dialect_class
        self.dialect = None                 # one per connection (wiring makes the first)
        self.events = events                # events.StreamEvents
        self.machine = L.StreamMachine()
        self.controls = Controls(self)      # what the API may ask
        # made by wiring.make_stream()
        self.outbox = self.capture = self.control = self.player = self.dtmf_port = None
        self.path = None                    # the media path's name (accel, python)
        self.ws_frames = None               # the path's framer for the direct path, or None
        self.link = None                    # made in run(), on the loop thread
        self.paused = False
        self.stop_text = None
        self._task = None
        self._connections = 0
        self._paused_at = 0.0
        self._gone_at = None
        self._prev = None                   # the state before the input being carried out
        self._actions = {
            L.START: self._start, L.DISCARD: self._discard, L.REPORT: self._report, L.ACCEPT: self._accept,
            L.REFUSE: self._refuse, L.DIGIT: self._dtmf, L.END: self._stop, L.GRACEFUL_END: self._graceful,
            L.END_GRACEFUL: self._stop_graceful, L.MEDIA_OVER: self._media_over, L.MEDIA_GONE: self._media_gone,
            L.HANGUP_GRACEFUL: self._hangup_graceful, L.ABANDON: self._abandon, L.GOING_AWAY: self._going_away,
            L.CLEANUP: self._cleanup,
        }

    # ---- the lifecycle ---------------------------------------------------------------------------
    def _input(self, inp, *args):
        """Feed the machine one input and carry out its action (loop thread). Returns what a
        command answers: None, or why it was not carried out."""
        self._prev = self.machine.state
        action = self.machine.on(inp, *args)
        if action == L.IGNORE or action == L.DEFER:
            return None
        if action == L.REPORT:
            return self._report(inp, *args)
        return self._actions[action](*args)

    @property
    def state(self):
        return self.machine.state

    def sent_totals(self):
        """(messages, bytes) sent to the server so far: by the link, and by the capture itself on
        the direct path."""
        link = self.link
        messages, nbytes = self.capture.sent
        if link is not None:
            messages += link.messages_sent
            nbytes += link.bytes_sent
        return messages, nbytes

    def status(self):
        """What `status` shows of this stream (loop thread)."""
        link = self.link
        sent = self.sent_totals()
        received = link.received() if link else (0, 0)
        queue = self.player.queue
        return {
            "uuid": self.uuid,
            "name": self.name,
            "url": connection.redact(self.url),
            "protocol": self.settings.protocol,
            "encoding": self.dialect.uplink_format().encoding,
            "path": self.path,
            "state": self.machine.state,
            "mix": self.mix,
            "call_rate": self.call_rate,
            "rate": self.rate,
            "seconds": round(time.time() - self.started_at, 1),
            "frames_captured": self.capture.frames_read,
            "messages_sent": sent[0],
            "bytes_sent": sent[1],
            "messages_received": received[0],
            "bytes_received": received[1],
            "dropped_ms": self.outbox.dropped_ms,
            "queued_ms": self.outbox.queued_ms,
            "reconnects": link.policy.reconnects if link else 0,
            "paused": self.paused,
            "playback": "off" if queue is None else ("paused" if queue.paused else
                                                     "playing" if queue.playing else "idle"),
            "playback_queued_ms": queue.queued_ms if queue is not None else 0,
            "marks_waiting": queue.marks_waiting if queue is not None else 0,
            "latency_recovered_ms": self.player.recovered_ms,
            "frames_played": self.control.frames_written + self.control.frames_replaced,
            "last_error": self.events.last_error,
        }

    # ---- API thread ------------------------------------------------------------------------------
    def attach(self, session):
        """Put the stream on the call (the session read-locked by the caller). (ok, reason)."""
        ok, reason = self.capture.attach(session)
        if not ok:
            return ok, reason
        ok, reason = self.control.attach(session)
        if not ok:
            self.capture.remove(session)
        elif self.dtmf_port is not None:
            why = self.dtmf_port.attach(session)
            if why:
                self.log("WARNING", "some digits will not reach the server: %s" % why)
        return ok, reason

    def attach_failed(self):
        """API thread: attach() failed; the stream never runs."""
        self.runtime.loop().call_soon_threadsafe(self._input, L.ATTACH_FAILED)

    # ---- loop thread: the capture clock (contracts.Ticked) ---------------------------------------
    def poll(self):
        """Read what the core buffered since the last poll (the capture clock, once per tick, for a
        capture it does not read in its batch; and before anything that must come after the audio
        so far)."""
        if self.machine.state not in L.LIVE:
            return
        self.captured(self.capture.poll())

    def captured(self, data):
        """What a capture pass read: complete chunks of the stream's audio (bytes, the capture's
        chunk_bytes each), or None when the capture bug is gone."""
        if self.machine.state not in L.LIVE:
            return
        if data is None:
            # The capture bug is gone: a hangup. The control bug's CLOSE is running or has run
            # (the core closes all of a call's bugs in one pass, and exec_all can miss them while
            # it does); its media_closed(tail) ends the media, after the tail. Should it never
            # come (nothing known does that), end the media a little later.
            now = time.monotonic()
            if self._gone_at is None:
                self._gone_at = now
            elif now - self._gone_at > GONE_GRACE_S and not self.control.closed:
                self._input(L.HANGUP, b"", 0)
            return
        link = self.link
        if not data or (link is not None and link.send_audio_now(data, self.capture.chunk_bytes)):
            return                    # nothing new, or on the wire already (the direct path)
        self._feed(data)
        if link is not None:
            link.wake()
        self.events.overruns(self.outbox)

    def maintain(self, now):
        """Upkeep every few tenths of a second (the capture clock): latency recovery."""
        if self.machine.state in L.LIVE:
            self.player.maintain(now)

    def _feed(self, data):
        """Complete chunks into the outbox (the last one short only from the capture's flush())."""
        put = self.outbox.put_audio
        n = self.capture.chunk_bytes
        if len(data) == n:
            put(data)
            return
        for i in range(0, len(data), n):
            put(data[i:i + n])

    def _take_last(self):
        """What is left in the capture bug, then off the call."""
        data = self.capture.poll(remove=True)
        if data:
            self._feed(data)

    def _queue(self, build, size):
        """Queue the texts `build(dialect)` returns, rendered when they are sent (on the dialect of
        the connection that sends them), after the audio captured so far. None, or why not."""
        self.poll()
        if not self.outbox.put_deferred(lambda: build(self.dialect), size):
            self.events.text_dropped(self.outbox.text_bytes, size)
            return "the server is not reading: too much text already waits to be sent"
        if self.link is not None:
            self.link.wake()
        return None

    # ---- the switch side (contracts.MediaListener, DtmfListener; loop thread) --------------------
    def media_closed(self, tail, cause=0):
        """The control bug is gone (hangup, or our own removal). `tail`: the frames no capture pass
        had read yet; `cause`: the call's hangup cause."""
        self._input(L.HANGUP, tail, cause)

    def dtmf(self, digit, duration_ms):
        """A digit the call received: to the server after the audio captured before it, and the
        dtmf event. Not while paused (pause is how card numbers are kept out of a recording)."""
        self._input(L.DTMF, digit, duration_ms)

    # ---- what the commands do, once the lifecycle lets them (controls.Controls) --------------------
    def send_text(self, text):
        return self._queue(lambda d: d.text(text), len(text))

    def set_paused(self, paused):
        self.poll()          # audio before the command is sent (or not) as it was
        if paused and not self.paused:
            self._paused_at = time.monotonic()
        elif not paused and self.paused:
            self.dialect.skip(int((time.monotonic() - self._paused_at) * 1000))   # Twilio's media clock
        self.paused = paused
        self.capture.paused = paused

    # ---- what the player and the receiver ask for (contracts.PlayerHost) -------------------------
    def send_mark(self, name, event):
        """The acknowledgement of a server's mark (played out, or cleared)."""
        self._queue(lambda d: d.mark_ack(name, event), len(name) + 64)

    def wake_playback(self):
        if not self.control.wake(self.uuid):
            self.log("DEBUG", "playback bug gone: audio stays queued")

    def log(self, level, message):
        self.events.log(level, message)

    def fire(self, name, body):
        self.events.fire(name, body)

    def bad(self, reason, kind="bad_message"):
        """A message from the server that cannot be used: error event, log, reply (all three
        rate-limited). A server that keeps sending them is closed with 1008."""
        verdict = self.events.bad(reason)
        if verdict == STRIKE_OUT:
            if self.link is not None:
                self.link.fail(1008, self.events.strike_out_reason(reason), protocol.ERR_PROTOCOL)
        elif verdict == REPORT:
            self._queue(lambda d: d.error_reply(kind, reason), len(reason) + 64)

    # ---- the link's host (contracts.LinkHost) -----------------------------------------------------
    def opening_texts(self):
        if self._connections:
            self.dialect = self.dialect_class.for_stream(self.uuid, self.metadata, self.mix, self.rate,
                                                         self.settings)
        self._connections += 1
        return self.dialect.opening()

    def uplink_format(self):
        return self.dialect.uplink_format()

    def render_audio(self, chunk):
        return self.dialect.media(chunk)

    def link_connected(self):
        metrics.connected(self)
        self._input(L.CONNECTED)

    def link_reconnecting(self, attempt, delay, reason):
        self._input(L.LINK_LOST, attempt, delay, reason)

    def link_reconnected(self, attempt, dropped_ms):
        self._input(L.RECONNECTED, attempt, dropped_ms)

    def link_lost(self, closed, code, reason, error_code):
        metrics.link_lost(self, closed, error_code)
        self.events.lost(closed, code, reason, error_code)
        self._input(L.LINK_GONE)

    def outbox_drained(self):
        self.events.overruns(self.outbox)

    def connection_up(self, ws):
        """A connection audio may go to without the outbox: the capture sends from C on its socket
        (where the path can), while nothing waits before it."""
        capture = self.capture
        if capture.attach_socket(connection.socket_for_direct(ws)):
            def buffered():
                capture.direct = False
                if self.link is not None:
                    self.link.wake()
            capture.on_rest = connection.watch_writes(ws, buffered, capture.detach_socket)

    def connection_down(self):
        self.capture.detach_socket()

    def direct_ready(self):
        if not self.outbox:
            self.capture.direct = True

    def on_text(self, text):
        metrics.received("text", len(text))
        if len(text) > self.settings.max_message:
            self.bad("message of %d bytes is over STREAM_MAX_MESSAGE (%d), dropped"
                     % (len(text), self.settings.max_message), "message_too_large")
            return
        self._handle(self.dialect.parse(text))

    def binary_sink(self):
        sink = self.player.sink
        return sink if sink is not None and sink.enabled else None

    def binary_taken(self, frames, nbytes):
        metrics.received("binary", nbytes, frames)
        self.player.sink_took()

    def on_binary(self, data):
        metrics.received("binary", len(data))
        if len(data) > self.settings.max_message:
            self.bad("binary message of %d bytes is over STREAM_MAX_MESSAGE (%d), dropped"
                     % (len(data), self.settings.max_message), "message_too_large")
            return
        self._handle(self.dialect.parse_binary(data))

    def _handle(self, msg):
        kind = type(msg)
        if kind is protocol.Passthrough:
            self.events.json(msg.text)
        elif kind is protocol.BadMessage:
            self.bad(msg.reason)
        else:
            self.player.handle(msg)

    # ---- running (loop thread) -------------------------------------------------------------------
    async def run(self):
        self._task = asyncio.current_task()
        self.link = Link(self, self.url, self.settings, self.outbox, self.runtime.http)
        if self.dialect.binary_audio:
            self.link.frame = self.ws_frames
        metrics.started(self)
        self._input(L.ATTACHED)
        try:
            await self.link.run()
        except connection.ConnectError as e:
            message = e.message
            lag = self.runtime.loop_lag_ms()
            if e.code == protocol.ERR_TIMEOUT and lag > 100:
                message += " (audio_stream's loop thread is overloaded: %d ms late)" % lag
            metrics.end_reason(self, "connect_failed")
            self.events.error(e.code, message)
            self._input(L.LINK_GONE)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            metrics.end_reason(self, "error")
            self.events.failed(e)
            self._input(L.LINK_GONE)
        finally:
            self._input(L.LINK_DONE)

    async def shutdown(self, code=1001, timeout=1.0):
        """The switch or the module is going away: everything captured, then close with 1001."""
        metrics.end_reason(self, "shutdown")
        self._input(L.SHUTDOWN, code, timeout)
        task = self._task
        if task is not None and not task.done() and task is not asyncio.current_task():
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout)
            except (asyncio.TimeoutError, Exception):
                task.cancel()

    # ---- the actions (StreamMachine's table says which, when) -------------------------------------
    def _start(self):
        self.runtime.poll_add(self)
        for inp, args in self.machine.take_deferred():
            self._input(inp, *args)

    def _discard(self):
        self.machine.take_deferred()

    def _report(self, inp, *args):
        if inp == L.CONNECTED:
            self.events.connected()
        elif inp == L.LINK_LOST:
            self.events.reconnecting(*args)
        else:
            self.events.reconnected(*args)

    def _accept(self, fn, *args):
        return fn(*args)

    def _refuse(self, *args):
        return ENDING

    def _dtmf(self, digit, duration_ms):
        self.poll()
        if self.machine.state not in L.LIVE or self.paused:
            return
        self._queue(lambda d: d.dtmf(digit, duration_ms), 64)
        self.events.fire("dtmf", protocol.dtmf_body(digit, duration_ms))

    def _stop(self, text):
        metrics.end_reason(self, "stop")
        self.player.stop_requested = True
        self.stop_text = text
        self._take_last()
        self._end_media()

    def _graceful(self, text):
        metrics.end_reason(self, "graceful-shutdown")
        self.stop_text = text
        self._take_last()
        self._end_media(keep_playback=True, linger_s=self.settings.graceful_timeout)

    def _stop_graceful(self, text):
        self.player.stop_requested = True
        if text:
            self.send_text(text)
        self._release()
        self.link.finish()

    def _media_over(self, tail, cause):
        metrics.end_reason(self, "shutdown" if cause in SHUTDOWN_CAUSES else "hangup")
        self.events.call_over = bool(cause)
        self.player.playback_closed()
        if tail:
            data = self.capture.feed(tail, final=True)
            if data:
                self._feed(data)
        if cause in SHUTDOWN_CAUSES:
            self._end_media(code=1001, message=b"going away", drain_s=0.5)
        else:
            self._end_media()

    def _media_gone(self, tail, cause):
        self.events.call_over = bool(cause)
        self.player.playback_closed()

    def _hangup_graceful(self, tail, cause):
        """Graceful-shutdown stops waiting for the server at the hangup: what is queued goes
        within the usual limit, then the close."""
        self.events.call_over = bool(cause)
        self.player.playback_closed()
        self._release()
        if cause in SHUTDOWN_CAUSES:
            self.link.finish(1001, b"going away", 0.5, 0.0, force=True)
        else:
            self.link.finish()

    def _abandon(self):
        """The connection is gone for good: end the media, send nothing more."""
        prev = self._prev
        self.link.abandon()
        if prev in L.LIVE:
            self.capture.poll(remove=True)
            self._end_media()
        self._release()
        self.outbox.clear()

    def _going_away(self, code, timeout):
        if self._prev in L.LIVE:
            self.poll()
            self._end_media(code=code, message=b"going away", drain_s=timeout * 0.5)
        self.link.finish(code, b"going away", timeout * 0.5, 0.0, force=True)

    def _cleanup(self):
        prev = self._prev
        self.runtime.poll_remove(self)
        if prev in L.LIVE:
            self._take_last()
            self._end_media()
        self._release()
        self.player.remove_files()
        if self.outbox.dropped_bytes:
            self.log("WARNING", "%d ms of the call's audio were dropped: the connection was not ready or the "
                     "server did not keep up" % self.outbox.dropped_ms)
        metrics.ended(self)
        self.runtime.finished(self)

    def _end_media(self, keep_playback=False, code=1000, message=b"", drain_s=CLOSE_TIMEOUT, linger_s=0.0):
        """The call's audio is over for this stream: flush, queue the stop text, and let the link
        send what is left and close. `keep_playback`: graceful-shutdown, the server's audio still
        plays until the link is done."""
        self.runtime.poll_remove(self)
        if self.dtmf_port is not None:
            self.dtmf_port.detach()
        self.capture.forget()
        if not keep_playback:
            self._release()
        rest = self.capture.flush()
        if rest:
            self._feed(rest)
        stop_text = self.stop_text

        def last_words():
            return (self.dialect.text(stop_text) if stop_text else []) + self.dialect.closing()

        self.outbox.put_deferred(last_words, len(stop_text or "") + 256)
        self.link.finish(code, message, drain_s, linger_s)

    def _release(self):
        """Off the call (no more playback) and off the registry. Idempotent."""
        if not self.control.closed:
            session = self.be.core.force_locate(self.uuid)
            if session:
                try:
                    self.control.detach(session)
                finally:
                    self.be.core.unlock(session)
        self.player.playback_closed()
        self.runtime.retire(self)
