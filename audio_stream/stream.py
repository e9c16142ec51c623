"""One call's stream: the call's bugs ↔ audio ↔ the server (link.py) ↔ events.

Threads: `attach()` runs on the API thread (the caller holds the session's read lock); everything
else runs on the loop thread. No Python runs on a media thread for the audio going out: the
capture bug has no callback, and the service's capture clock calls `poll()` for every stream
once per tick. Python runs on a media thread only while the server's audio plays (playback.py).

Life: attach (bugs added, the core buffers frames) → run(): the Link connects, then sends the
outbox (metadata, then the audio captured meanwhile, in order) and reconnects when the server goes
away. The media side ends exactly once, in `_end_media()` (hangup, `stop`, `graceful-shutdown`,
or our own removal after the connection is gone for good); the Link then sends what is left,
within a time limit, and closes (1000; 1001 when the switch shuts down).
"""
import asyncio
import time

from . import audio, connection, metrics, protocol, service, twilio
from .link import CLOSE_TIMEOUT, CONNECTING, Link
from .outbox import Outbox
from .playback import Player
from .policy import RateLimit, Strikes
from .switch import core as C
from .switch.dtmf import DtmfPort
from .switch.media import CapturePort, ControlPort

PREFIX = "mod_audio_stream::"
MAX_TEXT_BYTES = 1 << 20   # texts waiting for a server that does not read
JSON_EVENTS_PER_S = 200    # mod_audio_stream::json events per stream (burst: 2 s worth)
BAD_REPORTS_PER_S = 5      # error events/logs/replies for unusable messages (burst: 20)
BAD_LIMIT = (100, 10.0)    # more unusable messages than this within that many s: close 1008
SHUTDOWN_CAUSES = (C.CAUSE_SYSTEM_SHUTDOWN,)   # a hangup because the switch is going away: close 1001


class Stream:
    def __init__(self, be, uuid, cmd, settings, call_rate, ptime_ms, plays=True):
        self.be = be
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
        self.loop = service.loop()
        self.dialect = self._make_dialect()
        chunk_ms = settings.buffer_ms
        if settings.protocol == "twilio":
            fmt = self.dialect.uplink_format()
            self.rate, chunk_ms = fmt.rate, fmt.chunk_ms
        self.uplink = audio.Uplink(call_rate, self.rate, self.channels, chunk_ms)
        # audio held while connecting (and while the server is slow): bounded, oldest dropped
        bytes_per_ms = self.rate * 2 * self.channels // 1000
        self.outbox = Outbox(settings.backlog_ms * bytes_per_ms, MAX_TEXT_BYTES + settings.max_message,
                             bytes_per_ms)
        flags = C.SMBF_READ_STREAM
        if cmd.mix in ("mixed", "stereo"):
            flags |= C.SMBF_WRITE_STREAM
        if cmd.mix == "stereo":
            flags |= C.SMBF_STEREO
        self.capture = CapturePort(be.core, flags)
        self.player = Player(self, call_rate, plays)
        self.control = ControlPort(be.core, call_rate, ptime_ms, self.player.queue, self.capture, self,
                                   self.player, self.loop.call_soon_threadsafe)
        self.player.port = self.control
        self.dtmf_port = DtmfPort(be, self, self.loop.call_soon_threadsafe) if settings.dtmf else None
        self.paused = False
        self.stop_text = None
        self.link = None          # made in run(), on the loop thread
        self.media_ended = False
        self.closing = False      # the connection is gone for good: what comes in no longer matters
        self.finished = False     # the WebSocket side is done: set by service.finished(), under its lock
        self._finish_args = None  # how the link must end, when the media ends before run() starts
        self._task = None
        self._cleaned = False
        self._json_limit = RateLimit(JSON_EVENTS_PER_S, 2 * JSON_EVENTS_PER_S, metrics.suppressed("json_event"))
        self._bad_limit = RateLimit(BAD_REPORTS_PER_S, 20, metrics.suppressed("bad_message_report"))
        self._bad_strikes = Strikes(*BAD_LIMIT)
        self._text_drop_limit = RateLimit(1, 5, metrics.suppressed("text_refused_log"))
        self._connections = 0
        self._paused_at = 0.0
        self.last_error = None
        self._gone_at = None

    def _make_dialect(self):
        """The wire format of one connection (a new one for each: Twilio's streamSid and counters
        start again)."""
        if self.settings.protocol == "twilio":
            return twilio.TwilioDialect(self.uuid, None, self.metadata, self.settings.twilio_account_sid,
                                        tracks=("inbound", "outbound") if self.mix == "stereo" else ("inbound",))
        return protocol.NativeDialect(self.metadata)

    def _queue(self, frames):
        """Queue a dialect's text frames after the audio captured so far. False if refused.
        `frames`: a list of texts, or a function returning one, called when they are sent (a
        dialect that numbers its messages, Twilio, numbers them in the order they leave)."""
        self.poll()
        ok = True
        if callable(frames):
            frames = [frames] if self.settings.protocol == "twilio" else frames()
        for text in frames:
            put = self.outbox.put_text if text.__class__ is str else self.outbox.put_deferred
            if not put(text):
                ok = False
                if self._text_drop_limit.allow(time.monotonic()):
                    missed = self._text_drop_limit.take_suppressed()
                    self.log("ERR", "%d bytes of text already wait for the server, which does not read: text of "
                             "%d bytes dropped%s" % (self.outbox.text_bytes, len(text),
                                                     " (and %d more)" % missed if missed else ""))
        if self.link is not None:
            self.link.wake()
        return ok

    @property
    def state(self):
        return self.link.state if self.link is not None else CONNECTING

    def status(self):
        """What `status` shows of this stream (loop thread)."""
        link = self.link
        queue = self.player.queue
        return {
            "uuid": self.uuid,
            "name": self.name,
            "url": connection.redact(self.url),
            "protocol": self.settings.protocol,
            "state": self.state if not self.finished else "closed",
            "mix": self.mix,
            "call_rate": self.call_rate,
            "rate": self.rate,
            "seconds": round(time.time() - self.started_at, 1),
            "frames_captured": self.capture.frames_read,
            "messages_sent": link.messages_sent if link else 0,
            "bytes_sent": link.bytes_sent if link else 0,
            "dropped_ms": self.outbox.dropped_ms,
            "queued_ms": self.outbox.queued_ms,
            "reconnects": link.policy.reconnects if link else 0,
            "paused": self.paused,
            "playback": "off" if queue is None else ("paused" if queue.paused else
                                                     "playing" if self.control.playing else "idle"),
            "playback_queued_ms": queue.queued_ms if queue is not None else 0,
            "marks_waiting": queue.marks_waiting if queue is not None else 0,
            "frames_played": self.control.frames_written + self.control.frames_replaced,
            "last_error": self.last_error,
        }

    # ---- API thread ------------------------------------------------------------------------------
    def attach(self, session):
        ok, reason = self.capture.attach(session)
        if not ok:
            return ok, reason
        ok, reason = self.control.attach(session)
        if not ok:
            self.be.core.bug_remove(session, self.capture.bug)
            self.capture.forget()
        elif self.dtmf_port is not None:
            why = self.dtmf_port.attach(session)
            if why:
                self.log("WARNING", "some digits will not reach the server: %s" % why)
        return ok, reason

    # ---- loop thread: the capture clock ------------------------------------------------------
    def poll(self):
        """Read what the core buffered since the last poll into the outbox (service's capture
        clock, once per tick; and before anything that must come after the audio so far)."""
        if self.media_ended:
            return
        data = self.capture.poll(self.uuid)
        if data is None:
            # The capture bug is gone: a hangup. The control bug's CLOSE is running or has run
            # (the core closes all of a call's bugs in one pass, and exec_all can miss them while
            # it does); its media_closed(tail) ends the media, after the tail. Should it never
            # come (nothing known does that), end the media a second later.
            now = time.monotonic()
            if self._gone_at is None:
                self._gone_at = now
            elif now - self._gone_at > 1.0 and not self.control.closed:
                self._end_media()
            return
        if data and not self.paused:
            self._feed(data)
        if self.outbox and self.link is not None:
            self.link.wake()
        self._overrun_events()

    def _feed(self, data):
        put = self.outbox.put_audio
        for chunk in self.uplink.feed(data):
            put(chunk)

    def _take_last(self):
        """Read what is left in the capture bug and remove it."""
        data = self.capture.poll(self.uuid, remove=True)
        if data and not self.paused:
            self._feed(data)

    def media_closed(self, tail, cause=0):
        """The control bug is gone (ControlPort, through the loop): hangup, or our own removal.
        `tail`: the frames no capture pass had read yet; `cause`: the call's hangup cause."""
        self.player.playback_closed()
        if self.media_ended:
            return
        metrics.end_reason(self, "shutdown" if cause in SHUTDOWN_CAUSES else "hangup")
        if tail and not self.paused:
            self._feed(tail)
        if cause in SHUTDOWN_CAUSES:
            self._end_media(code=1001, message=b"going away", drain_s=0.5)
        else:
            self._end_media()

    def _end_media(self, keep_playback=False, code=1000, message=b"", drain_s=CLOSE_TIMEOUT, linger_s=0.0):
        """The call's audio is over for this stream (once): flush, queue the stop text, and let
        the link send what is left and close. `keep_playback`: graceful-shutdown, the server's
        audio still plays until the link is done."""
        if self.media_ended:
            return
        self.media_ended = True
        if self.dtmf_port is not None:
            self.dtmf_port.detach()
        self.capture.forget()
        if not keep_playback:
            self._release()
        for chunk in self.uplink.flush():
            self.outbox.put_audio(chunk)
        stop_text = self.stop_text

        def last_words():
            texts = self.dialect.text(stop_text) if stop_text and self.dialect.is_open else \
                ([stop_text] if stop_text else [])
            return texts + self.dialect.closing() if self.dialect.is_open else texts

        if self.settings.protocol == "twilio":
            self.outbox.put_deferred(last_words)
        else:
            for text in last_words():
                self.outbox.put_text(text)
        if self.link is not None:
            self.link.finish(code, message, drain_s, linger_s)
        else:
            self._finish_args = (code, message, drain_s, linger_s)

    def _release(self):
        """Off the call (no more playback) and off the registry; idempotent. _end_media does it,
        except for graceful-shutdown, which keeps playing until the link is done."""
        self._detach_control()
        service.retire(self)

    def _detach_control(self):
        if not self.control.closed:
            session = self.be.core.force_locate(self.uuid)
            if session:
                try:
                    self.control.detach(session)
                finally:
                    self.be.core.unlock(session)
        self.player.playback_closed()

    # ---- loop thread: commands -------------------------------------------------------------------
    def stop(self, text=None):
        """`stop [text]`: everything captured so far, then the text, then close 1000."""
        metrics.end_reason(self, "stop")
        self.player.stop_requested = True
        if self.media_ended:          # a graceful-shutdown in progress: end it now
            if text:
                self.send_text(text)
            self._release()
            if self.link is not None:
                self.link.finish()
            return
        self.stop_text = text
        self._take_last()
        self._end_media()

    def graceful_shutdown(self, text=None):
        """Stop capturing; send what is buffered and the text; keep receiving (and playing) until
        the server closes or STREAM_GRACEFUL_TIMEOUT passes; then close 1000."""
        if self.media_ended:
            return
        metrics.end_reason(self, "graceful_shutdown")
        self.stop_text = text
        self._take_last()
        self._end_media(keep_playback=True, linger_s=self.settings.graceful_timeout)

    def set_paused(self, paused):
        self.poll()          # audio before the command is sent (or not) as it was
        if paused and not self.paused:
            self._paused_at = time.monotonic()
        elif not paused and self.paused:
            self.dialect.skip(int((time.monotonic() - self._paused_at) * 1000))   # Twilio's media clock
        self.paused = paused

    def send_text(self, text):
        """`send_text`: a text message after the audio captured so far. False if refused."""
        return self._queue(lambda: self.dialect.text(text) if self.dialect.is_open else [text])

    def send_mark(self, name, event):
        """The acknowledgement of a server's mark (played out, or cleared)."""
        if self.dialect.is_open:
            self._queue(lambda: self.dialect.mark_ack(name, event) if self.dialect.is_open else [])

    def dtmf(self, digit, duration_ms):
        """A digit the call received (switch/dtmf.py, on the loop thread): to the server after the
        audio captured before it, and the dtmf event. Not while paused (pause is how card numbers
        are kept out of a recording), nor once the media has ended."""
        if self.media_ended:
            return
        self.poll()
        if self.media_ended or self.paused:
            return
        if self.dialect.is_open:          # Twilio: not before its start frame
            self._queue(lambda: self.dialect.dtmf(digit, duration_ms) if self.dialect.is_open else [])
        self.fire("dtmf", protocol.dtmf_body(digit, duration_ms))

    def render_audio(self, chunk):
        return self.dialect.media(chunk)

    def wake_playback(self):
        if not self.control.wake(self.uuid):
            self.log("DEBUG", "playback bug gone: audio stays queued")

    # ---- loop thread: events and logs ------------------------------------------------------------
    def log(self, level, message):
        self.be.log(level, message, self.uuid if self.name == "default" else "%s/%s" % (self.uuid, self.name))

    def fire(self, name, body):
        if name in ("error", "disconnect"):
            self.last_error = body
        try:
            self.be.fire(self.uuid, PREFIX + name, body, {"Stream-Name": self.name})
        except Exception as e:  # an event must never take the stream down
            self.log("ERR", "cannot fire %s: %s" % (name, e))

    def bad(self, reason, kind="bad_message"):
        """A message from the server that cannot be used: error event, log, reply (all three
        rate-limited). A server that keeps sending them is closed with 1008."""
        now = time.monotonic()
        if self._bad_strikes.strike(now):
            self._garbage("closed: more than %d unusable messages from the server within %g s (last: %s)"
                          % (self._bad_strikes.limit, self._bad_strikes.window, reason))
            return
        if not self._bad_limit.allow(now):
            return
        missed = self._bad_limit.take_suppressed()
        if missed:
            reason = "%s (and %d more not reported)" % (reason, missed)
        self.log("ERR", reason)
        self.fire("error", protocol.error_body(protocol.ERR_PROTOCOL, reason))
        if self.dialect.is_open:
            self._queue(lambda: self.dialect.error_reply(kind, reason) if self.dialect.is_open else [])

    def _garbage(self, reason):
        if self.closing or self.link is None:
            return
        self.link.fail(1008, reason, protocol.ERR_PROTOCOL)

    def _overrun_events(self):
        for kind, ms, total in self.outbox.take_events():
            if kind == "overrun":
                self.log("WARNING", "the server does not keep up (or is not connected): dropping the oldest "
                         "audio, %d ms so far" % total)
                self.fire("buffer_overrun", protocol.dumps({"dropped_ms": ms, "total_dropped_ms": total}))
            else:
                self.log("NOTICE", "sending caught up after dropping %d ms of audio" % ms)
                self.fire("buffer_recovered", protocol.dumps({"dropped_ms": ms, "total_dropped_ms": total}))

    # ---- loop thread: the connection (link.py) -----------------------------------------------------
    async def run(self):
        self._task = asyncio.current_task()
        metrics.started(self)
        self.link = Link(self, self.url, self.settings, self.outbox, service.http)
        if self._finish_args is not None:
            self.link.finish(*self._finish_args)
        service.poll_add(self)
        try:
            await self.link.run()
        except connection.ConnectError as e:
            metrics.end_reason(self, "connect_failed")
            message = e.message
            lag = service.loop_lag_ms()
            if e.code == protocol.ERR_TIMEOUT and lag > 100:
                message += " (audio_stream's loop thread is overloaded: %d ms late)" % lag
            self.log("ERR", "%s (code %d)" % (message, e.code))
            self.fire("error", protocol.error_body(e.code, message))
            self._abandon()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            metrics.end_reason(self, "error")
            self.log("ERR", "stream failed: %r" % (e,))
            self.fire("error", protocol.error_body(protocol.ERR_IO, str(e) or repr(e)))
            self._abandon()
        finally:
            await self._cleanup()

    def _abandon(self):
        """The connection is gone for good: end the media, send nothing more."""
        self.closing = True
        if self.link is not None:
            self.link.abandon()
        self.capture.poll(self.uuid, remove=True)
        self._end_media()
        self._release()
        self.outbox.clear()

    # Link host
    def opening_texts(self):
        if self._connections:
            self.dialect = self._make_dialect()
        self._connections += 1
        return self.dialect.opening()

    def link_connected(self):
        metrics.connected(self)
        self.log("INFO", "connected to %s" % self.url)
        self.fire("connect", protocol.connect_body())

    def link_reconnecting(self, attempt, delay, reason):
        self.log("WARNING", "connection lost (%s): reconnecting in %d ms, attempt %d" % (reason, delay * 1000, attempt))
        self.fire("reconnecting", protocol.dumps({"attempt": attempt, "delay_ms": int(delay * 1000), "reason": reason}))

    def link_reconnected(self, attempt, dropped_ms):
        self.log("NOTICE", "reconnected to %s (attempt %d); %d ms of audio dropped meanwhile" % (self.url, attempt,
                                                                                                dropped_ms))
        self.fire("reconnected", protocol.dumps({"attempt": attempt, "dropped_ms": dropped_ms}))

    def link_lost(self, closed, code, reason, error_code):
        metrics.link_lost(self, closed, error_code)
        if closed:
            self.log("INFO", "server closed the connection: %s %s" % (code, reason))
            self.fire("disconnect", protocol.disconnect_body(code, reason))
        else:
            self.log("ERR", reason)
            self.fire("error", protocol.error_body(error_code, reason))
        self._abandon()

    def outbox_drained(self):
        self._overrun_events()

    def on_text(self, text):
        metrics.received("text", len(text))
        if len(text) > self.settings.max_message:
            self.bad("message of %d bytes is over STREAM_MAX_MESSAGE (%d), dropped"
                     % (len(text), self.settings.max_message), "message_too_large")
            return
        msg = self.dialect.parse(text)
        kind = type(msg)
        if kind is protocol.Passthrough:
            if not self._json_limit.allow(time.monotonic()):
                return
            missed = self._json_limit.take_suppressed()
            if missed:
                self.log("WARNING", "%d messages from the server were not fired as mod_audio_stream::json: more "
                         "than %d per second" % (missed, JSON_EVENTS_PER_S))
            if not self.settings.suppress_log:
                self.log("DEBUG", "response: %s" % text[:2000])
            self.fire("json", text)
        elif kind is protocol.BadMessage:
            self.bad(msg.reason)
        else:
            self.player.handle(msg)

    def on_binary(self, data):
        metrics.received("binary", len(data))
        if len(data) > self.settings.max_message:
            self.bad("binary message of %d bytes is over STREAM_MAX_MESSAGE (%d), dropped"
                     % (len(data), self.settings.max_message), "message_too_large")
            return
        if self.settings.protocol == "twilio":
            self.bad(self.dialect.parse_binary(data).reason)
            return
        self.player.binary(data)

    # ---- end ---------------------------------------------------------------------------------------
    async def shutdown(self, code=1001, timeout=1.0):
        """The switch or the module is going away: everything captured, then close with 1001."""
        metrics.end_reason(self, "shutdown")
        self.poll()
        self._end_media(code=code, message=b"going away", drain_s=timeout * 0.5)
        if self.link is not None:
            self.link.finish(code, b"going away", timeout * 0.5, 0.0, force=True)
        task = self._task
        if task is not None and not task.done() and task is not asyncio.current_task():
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout)
            except (asyncio.TimeoutError, Exception):
                task.cancel()
        else:
            await self._cleanup()

    async def _cleanup(self):
        if self._cleaned:
            return
        self._cleaned = True
        service.poll_remove(self)
        if not self.media_ended:
            self.capture.poll(self.uuid, remove=True)
            self._end_media()
        self._release()
        self.player.remove_files()
        if self.outbox.dropped_bytes:
            self.log("WARNING", "%d ms of the call's audio were dropped: the connection was not ready or the "
                     "server did not keep up" % self.outbox.dropped_ms)
        metrics.ended(self)
        service.finished(self)
