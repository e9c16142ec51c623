"""One call's stream: the call's bugs ↔ audio ↔ the WebSocket ↔ events.

Threads: `attach()` runs on the API thread (the caller holds the session's read lock); everything
else runs on the loop thread. No Python runs on a media thread for the audio going out: the
capture bug has no callback, and the service's capture clock calls `poll()` for every stream
once per tick. Python runs on a media thread only while the server's audio plays (playback.py).

Life: attach (bugs added, the core buffers frames) → run(): connect → outbox (metadata, then the
audio captured meanwhile, in order) → live. The media side ends exactly once, in `_end_media()`
(hangup seen by poll(), `stop`, or our own removal after a failed connect or a server close);
the WebSocket side then sends what is left, within a time limit, and closes 1000.
"""
import asyncio

from . import audio, connection, protocol, service
from .outbox import Outbox
from .playback import Player
from .switch import core as C
from .switch.media import CapturePort, ControlPort

PREFIX = "mod_audio_stream::"


class _NoWake:
    """Stands in for the stream's asyncio.Event until run() makes it on the loop thread."""

    @staticmethod
    def set():
        pass


CLOSE_TIMEOUT = 5.0        # s to send what is left and the close frame after the media ended
MAX_TEXT_BYTES = 1 << 20   # texts waiting for a server that does not read
SEND_BUFFER_MS = 500       # the kernel's send buffer: this much audio (doubled by Linux)


class Stream:
    def __init__(self, be, uuid, cmd, settings, call_rate, ptime_ms):
        self.be = be
        self.uuid = uuid
        self.url = cmd.url
        self.mix = cmd.mix
        self.rate = cmd.rate
        self.metadata = cmd.text
        self.settings = settings
        self.call_rate = call_rate
        self.ptime_ms = ptime_ms
        self.channels = 2 if cmd.mix == "stereo" else 1
        self.loop = service.loop()
        self.uplink = audio.Uplink(call_rate, cmd.rate, self.channels, settings.buffer_ms)
        # audio held while connecting (and while the server is slow): bounded, oldest dropped
        bytes_per_ms = cmd.rate * 2 * self.channels // 1000
        self.outbox = Outbox(settings.backlog_ms * bytes_per_ms, MAX_TEXT_BYTES + settings.max_message,
                             bytes_per_ms)
        if self.metadata:
            self.outbox.put_text(self.metadata)
        flags = C.SMBF_READ_STREAM
        if cmd.mix in ("mixed", "stereo"):
            flags |= C.SMBF_WRITE_STREAM
        if cmd.mix == "stereo":
            flags |= C.SMBF_STEREO
        self.capture = CapturePort(be.core, flags)
        self.player = Player(self, call_rate)
        self.control = ControlPort(be.core, call_rate, ptime_ms, self.player.queue, self.capture, self,
                                   self.player, self.loop.call_soon_threadsafe)
        self.player.port = self.control
        self.paused = False
        self.stop_text = None
        self.ws = None
        self.media_ended = False
        self.closing = False      # we are closing the WebSocket: what comes in no longer matters
        self.finished = False     # the WebSocket side is done: set by service.finished(), under its lock
        self._wake = _NoWake      # an asyncio.Event once run() starts (made on the loop thread)
        self._receiver = None

    # ---- API thread ------------------------------------------------------------------------------
    def attach(self, session):
        ok, reason = self.capture.attach(session)
        if not ok:
            return ok, reason
        ok, reason = self.control.attach(session)
        if not ok:
            self.be.core.bug_remove(session, self.capture.bug)
            self.capture.forget()
        return ok, reason

    # ---- loop thread: the capture clock ------------------------------------------------------
    def poll(self, remove=False):
        """Read what the core buffered since the last poll into the outbox (service's capture
        clock, once per tick; and before anything that must come after the audio so far)."""
        if self.media_ended:
            return
        data = self.capture.poll(self.uuid, remove)
        if data is None:
            # the capture bug is gone. At a hangup the control bug's CLOSE has already run and
            # its media_closed(tail) is waiting on this loop: it ends the media, after the tail
            if not self.control.closed:
                self._end_media()
            return
        if data and not self.paused:
            self._feed(data)
        if remove:
            self._end_media()
        elif self.outbox:
            self._wake.set()
        self._overrun_events()

    def _feed(self, data):
        put = self.outbox.put_audio
        for chunk in self.uplink.feed(data):
            put(chunk)

    def media_closed(self, tail):
        """The control bug is gone (ControlPort, through the loop): hangup, or our own removal.
        `tail`: the frames no capture pass had read yet."""
        if self.media_ended:
            return
        if tail and not self.paused:
            self._feed(tail)
        self.player.playback_closed()
        self._end_media()

    def _end_media(self):
        """The call's media is over for this stream (once): flush, queue the stop text, close."""
        if self.media_ended:
            return
        self.media_ended = True
        service.retire(self)
        self.capture.forget()
        if not self.control.closed:
            session = self.be.core.force_locate(self.uuid)
            if session:
                try:
                    self.control.detach(session)
                finally:
                    self.be.core.unlock(session)
            self.player.playback_closed()
        for chunk in self.uplink.flush():
            self.outbox.put_audio(chunk)
        if self.stop_text:
            self.outbox.put_text(self.stop_text)
        self._wake.set()

    # ---- loop thread: commands -------------------------------------------------------------------
    def stop(self, text=None):
        """`stop [text]`: everything captured so far, then the text, then close 1000."""
        self.stop_text = text
        self.player.stop_requested = True
        self.poll(remove=True)
        self._end_media()

    def set_paused(self, paused):
        self.poll()          # audio before the command is sent (or not) as it was
        self.paused = paused

    def send_text(self, text):
        """A text message after the audio captured so far. False if the outbox refused it."""
        self.poll()
        if not self.outbox.put_text(text):
            self.log("ERR", "%d bytes of text already wait for the server: text of %d bytes dropped"
                     % (self.outbox.text_bytes, len(text)))
            return False
        self._wake.set()
        return True

    def wake_playback(self):
        if not self.control.wake(self.uuid):
            self.log("DEBUG", "playback bug gone: audio stays queued")

    # ---- loop thread: events and logs ------------------------------------------------------------
    def log(self, level, message):
        self.be.log(level, message, self.uuid)

    def fire(self, name, body):
        try:
            self.be.fire(self.uuid, PREFIX + name, body)
        except Exception as e:  # an event must never take the stream down
            self.log("ERR", "cannot fire %s: %s" % (name, e))

    def bad(self, reason, kind="bad_message"):
        """A message from the server that cannot be used: error event, log, reply."""
        self.log("ERR", reason)
        self.fire("error", protocol.error_body(protocol.ERR_PROTOCOL, reason))
        self.send_text(protocol.error_reply(kind, reason))

    def _overrun_events(self):
        for kind, ms, total in self.outbox.take_events():
            if kind == "overrun":
                self.log("WARNING", "the server does not keep up (or is not connected): dropping the oldest "
                         "audio, %d ms so far" % total)
                self.fire("buffer_overrun", protocol.dumps({"dropped_ms": ms, "total_dropped_ms": total}))
            else:
                self.log("NOTICE", "sending caught up after dropping %d ms of audio" % ms)
                self.fire("buffer_recovered", protocol.dumps({"dropped_ms": ms, "total_dropped_ms": total}))

    # ---- loop thread: the connection ---------------------------------------------------------------
    async def run(self):
        self._wake = asyncio.Event()
        if self.media_ended or self.outbox:
            self._wake.set()
        service.poll_add(self)
        try:
            try:
                self.ws = await connection.connect(service.http(), self.url, self.settings)
                connection.bound_send_buffer(self.ws, max(16384, self.outbox.bytes_per_ms * SEND_BUFFER_MS))
            except connection.ConnectError as e:
                message = e.message
                lag = service.loop_lag_ms()
                if e.code == protocol.ERR_TIMEOUT and lag > 100:
                    message += " (audio_stream's loop thread is overloaded: %d ms late)" % lag
                self.log("ERR", "%s (code %d)" % (message, e.code))
                self.fire("error", protocol.error_body(e.code, message))
                self._abandon()
                return
            self.log("INFO", "connected to %s" % self.url)
            self.fire("connect", protocol.connect_body())
            self._receiver = asyncio.ensure_future(self._receive())
            await self._send_loop()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.log("ERR", "stream failed: %r" % (e,))
            self.fire("error", protocol.error_body(protocol.ERR_IO, str(e) or repr(e)))
            self._abandon()
        finally:
            await self._cleanup()

    def _abandon(self):
        """The connection is gone for good: end the media without sending anything more."""
        self.closing = True
        self.poll(remove=True)
        self._end_media()
        self.outbox.clear()

    async def _send_loop(self):
        ws = self.ws
        outbox = self.outbox
        while True:
            await self._wake.wait()
            self._wake.clear()
            if ws.closed or self.closing:
                break
            if self.media_ended:
                try:
                    await asyncio.wait_for(self._drain(ws, outbox), CLOSE_TIMEOUT)
                except asyncio.TimeoutError:
                    self.log("WARNING", "the server did not take the last %d ms of audio within %g s: closing"
                             % (outbox.queued_ms, CLOSE_TIMEOUT))
                self.closing = True
                await self._close(ws, 1000)
                break
            await self._drain(ws, outbox)

    async def _drain(self, ws, outbox):
        while outbox:
            item = outbox.pop()
            if item.__class__ is bytes:
                await ws.send_bytes(item)
            else:
                await ws.send_str(item)
        self._overrun_events()

    async def _close(self, ws, code, message=b""):
        try:
            await asyncio.wait_for(ws.close(code=code, message=message), CLOSE_TIMEOUT)
        except (asyncio.TimeoutError, Exception):
            pass

    async def _receive(self):
        event = None
        try:
            while True:
                event = await connection.receive(self.ws)
                if event[0] == connection.TEXT:
                    self._on_text(event[1])
                elif event[0] == connection.BINARY:
                    self._on_binary(event[1])
                else:
                    break
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a handler bug must not kill the receiver silently
            self.log("ERR", "receive failed: %r" % (e,))
            event = (connection.LOST, protocol.ERR_IO, "receive failed: %r" % (e,))
        if self.closing:
            return
        kind, code, text = event
        if kind == connection.CLOSED:
            self.log("INFO", "server closed the connection: %s %s" % (code, text))
            self.fire("disconnect", protocol.disconnect_body(code, text))
        else:
            self.log("ERR", text)
            self.fire("error", protocol.error_body(code, text))
        self._abandon()
        self._wake.set()

    def _on_text(self, text):
        if len(text) > self.settings.max_message:
            self.bad("message of %d bytes is over STREAM_MAX_MESSAGE (%d), dropped"
                     % (len(text), self.settings.max_message), "message_too_large")
            return
        msg = protocol.parse_text(text)
        kind = type(msg)
        if kind is protocol.Passthrough:
            if not self.settings.suppress_log:
                self.log("DEBUG", "response: %s" % text[:2000])
            self.fire("json", text)
        elif kind is protocol.BadMessage:
            self.bad(msg.reason)
        else:
            self.player.handle(msg)

    def _on_binary(self, data):
        if len(data) > self.settings.max_message:
            self.bad("binary message of %d bytes is over STREAM_MAX_MESSAGE (%d), dropped"
                     % (len(data), self.settings.max_message), "message_too_large")
            return
        self.player.binary(data)

    # ---- end ---------------------------------------------------------------------------------------
    async def shutdown(self, code=1001):
        """Switch or module going away: end media, close with 1001."""
        self.closing = True
        self.poll(remove=True)
        self._end_media()
        if self.ws is not None and not self.ws.closed:
            await self._close(self.ws, code, b"going away")
        await self._cleanup()

    async def _cleanup(self):
        service.poll_remove(self)
        if self._receiver is not None and not self._receiver.done():
            self._receiver.cancel()
            try:
                await self._receiver
            except (asyncio.CancelledError, Exception):
                pass
        if self.ws is not None and not self.ws.closed:
            self.closing = True
            await self._close(self.ws, 1000)
        self.player.remove_files()
        if self.outbox.dropped_bytes:
            self.log("WARNING", "%d ms of the call's audio were dropped: the connection was not ready or the "
                     "server did not keep up" % self.outbox.dropped_ms)
        service.finished(self)
