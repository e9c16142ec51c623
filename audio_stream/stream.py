"""One call's stream: media bug ↔ audio ↔ WebSocket ↔ events.

Threads: `attach()` and `request_stop()` run on the API thread (the caller holds the session's
read lock); `_on_frame()` runs on the media thread; everything else runs on the loop thread.
The media thread hands frames over through a deque and one call_soon_threadsafe per batch.

Life: attach (bug added, frames buffer) → run(): connect → metadata → buffered audio → live.
The media side ends exactly once, in `bug_closed()` (hangup, `stop`, or our own removal after a
failed connect or a server close); the WebSocket side then sends what is left and closes 1000.
"""
import asyncio
import os
import time
from collections import deque

from . import audio, connection, protocol, service
from .switch import core as C
from .switch.media import MediaPort

PREFIX = "mod_audio_stream::"
RAW_EXT = {8000: "r8", 16000: "r16", 24000: "r24", 32000: "r32", 48000: "r48", 64000: "r64"}


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
        self.frames = deque()
        # frames held while connecting (and, later, while the server is slow): bounded
        held_s = max(settings.connect_timeout + 1.0, 2.0)
        self.max_frames = int(held_s * 1000 / ptime_ms) + 1
        self.frames_dropped = 0
        self.texts = deque()
        self.final_text = None
        self.stop_requested = False
        self.queue = audio.PlaybackQueue(call_rate, settings.playback_buffer_ms) if settings.playback else None
        self.downlink = audio.Downlink(call_rate)
        flags = C.SMBF_READ_STREAM
        if cmd.mix in ("mixed", "stereo"):
            flags |= C.SMBF_WRITE_STREAM
        if cmd.mix == "stereo":
            flags |= C.SMBF_STEREO
        if self.queue is not None:
            flags |= C.SMBF_WRITE_REPLACE | C.SMBF_READ_PING
        self.port = MediaPort(be.core, flags, call_rate, ptime_ms, self._on_frame, self.queue, self,
                              self.loop.call_soon_threadsafe)
        self.ws = None
        self.media_ended = False
        self.closing = False
        self.finished = False     # the WebSocket side is done: set by service.finished(), under its lock
        self._wake = asyncio.Event()
        self._kick_pending = False
        self._files = []
        self._file_n = 0
        self._receiver = None
        self._arrived = None

    # ---- API thread ------------------------------------------------------------------------------
    def attach(self, session):
        return self.port.attach(session)

    def request_stop(self, session, text):
        self.final_text = text
        self.stop_requested = True
        self.port.detach(session)

    def set_paused(self, paused):
        self.port.paused = paused

    # ---- media thread ----------------------------------------------------------------------------
    def _on_frame(self, data):
        frames = self.frames
        frames.append(data)
        if len(frames) > self.max_frames:
            frames.popleft()
            self.frames_dropped += 1
        if not self._kick_pending:
            self._kick_pending = True
            self.loop.call_soon_threadsafe(self._kick)

    # ---- loop thread -----------------------------------------------------------------------------
    def _kick(self):
        self._kick_pending = False
        self._wake.set()

    def log(self, level, message):
        self.be.log(level, message, self.uuid)

    def fire(self, name, body):
        try:
            self.be.fire(self.uuid, PREFIX + name, body)
        except Exception as e:  # an event must never take the stream down
            self.log("ERR", "cannot fire %s: %s" % (name, e))

    def detached(self):
        """On the thread that closed the bug: from now on commands see no stream on the call,
        and the stream counts as finishing until its WebSocket side is done."""
        service.retire(self.uuid, self)

    def bug_closed(self):
        """The media bug is gone (hangup, stop, or our own removal)."""
        if self.media_ended:
            return
        self.media_ended = True
        if self.port.playing:
            self.port.playing = False
            reason = "stopped" if self.stop_requested else "hangup"
            self.fire("playback_stopped", protocol.dumps({"reason": reason}))
        self._wake.set()

    def end_media(self):
        """Remove our bug from the loop thread (after a failed connect or a server close)."""
        if self.media_ended or self.port.closed:
            return
        session = self.be.core.locate(self.uuid)
        if session:
            try:
                self.port.detach(session)
            finally:
                self.be.core.unlock(session)

    async def run(self):
        try:
            try:
                self.ws = await connection.connect(service.http(), self.url, self.settings)
            except connection.ConnectError as e:
                self.log("ERR", "%s (code %d)" % (e.message, e.code))
                self.fire("error", protocol.error_body(e.code, e.message))
                self.end_media()
                return
            if self.metadata:
                await self.ws.send_str(self.metadata)
            self.log("INFO", "connected to %s" % self.url)
            self.fire("connect", protocol.connect_body())
            self._receiver = asyncio.ensure_future(self._receive())
            await self._send_loop()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.log("ERR", "stream failed: %r" % (e,))
            self.fire("error", protocol.error_body(protocol.ERR_IO, str(e) or repr(e)))
            self.end_media()
        finally:
            await self._cleanup()

    async def _send_loop(self):
        ws = self.ws
        while True:
            await self._wake.wait()
            self._wake.clear()
            if ws.closed:
                break
            await self._pump()
            if self.media_ended:
                for chunk in self.uplink.flush():
                    await ws.send_bytes(chunk)
                if self.final_text:
                    await ws.send_str(self.final_text)
                self.closing = True
                await ws.close(code=1000, message=b"")
                break

    async def _pump(self):
        frames = self.frames
        while frames:
            for chunk in self.uplink.feed(frames.popleft()):
                await self.ws.send_bytes(chunk)
        while self.texts:
            await self.ws.send_str(self.texts.popleft())

    def send_text(self, text):
        self.texts.append(text)
        self._wake.set()

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
        self.end_media()
        self._wake.set()

    # ---- downlink --------------------------------------------------------------------------------
    def _bad(self, reason, reply_error="bad_message"):
        self.log("ERR", reason)
        self.fire("error", protocol.error_body(protocol.ERR_PROTOCOL, reason))
        self.send_text(protocol.error_reply(reply_error, reason))

    def _on_text(self, text):
        if len(text) > self.settings.max_message:
            self._bad("message of %d bytes is over STREAM_MAX_MESSAGE (%d), dropped"
                      % (len(text), self.settings.max_message), "message_too_large")
            return
        msg = protocol.parse_text(text)
        kind = type(msg)
        if kind is protocol.Passthrough:
            if not self.settings.suppress_log:
                self.log("DEBUG", "response: %s" % text[:2000])
            self.fire("json", text)
        elif kind is protocol.StreamAudio:
            self._stream_audio(msg)
        elif kind is protocol.BadMessage:
            self._bad(msg.reason)
        elif kind is protocol.KillAudio:
            self.clear_playback()
        elif kind is protocol.Mark:
            self._mark(msg.name)
        elif kind is protocol.ClearMarks:
            if self.queue is not None:
                self._ack_marks(self.queue.clear_marks(), "cleared")
        elif kind is protocol.PausePlayback:
            self.pause_playback(True)
        elif kind is protocol.ResumePlayback:
            self.pause_playback(False)

    def _on_binary(self, data):
        if len(data) > self.settings.max_message:
            self._bad("binary message of %d bytes is over STREAM_MAX_MESSAGE (%d), dropped"
                      % (len(data), self.settings.max_message), "message_too_large")
            return
        if self.queue is None:
            return
        rate = self.settings.sample_rate or self.rate
        self._enqueue(self.downlink.binary(data, rate))

    def _stream_audio(self, msg):
        if self.queue is None or msg.audio_type in ("mp3", "ogg"):
            self._play_file(msg)
            return
        try:
            pcm, rate = audio.decode(msg.audio_type, msg.payload, msg.sample_rate)
        except audio.AudioFormatError as e:
            self._bad("streamAudio: %s" % e)
            return
        self._enqueue(self.downlink.convert(pcm, rate))

    def _enqueue(self, pcm):
        if not self.queue.queued:
            self._arrived = time.monotonic()     # audio arriving at an empty queue
        if not self.queue.push(pcm):
            self._bad("playback queue full (%d ms queued, STREAM_PLAYBACK_BUFFER %d ms): audio refused"
                      % (self.queue.queued_ms, self.settings.playback_buffer_ms), "playback_buffer_full")

    def _play_file(self, msg):
        """mod_audio_stream's behaviour: write the payload to a file, fire ::play with its path."""
        if msg.audio_type == "raw":
            ext = RAW_EXT.get(msg.sample_rate)
            if ext is None:
                self._bad("streamAudio: unsupported sample rate %s for a raw file (one of %s)"
                          % (msg.sample_rate, ", ".join(str(r) for r in RAW_EXT)))
                return
        else:
            ext = msg.audio_type
        path = os.path.join(self.be.temp_dir(), "%s_%d.tmp.%s" % (self.uuid, self._file_n, ext))
        self._file_n += 1
        try:
            with open(path, "wb") as f:
                f.write(msg.payload)
        except OSError as e:
            self._bad("cannot write %s: %s" % (path, e), "io_error")
            return
        self._files.append(path)
        self.fire("play", protocol.play_body(msg.data, path))

    def _mark(self, name):
        if self.queue is None or self.queue.mark(name):
            self._ack_marks([name], "playout")

    def _ack_marks(self, names, event):
        for name in names:
            self.send_text(protocol.mark_ack(name, event))
            self.fire("mark", protocol.dumps({"name": name, "event": event}))

    # ---- playback control (server messages and API commands) -------------------------------------
    def clear_playback(self):
        if self.queue is None:
            return
        dropped = self.queue.clear()
        self.downlink.reset()
        if self.port.playing:
            self.port.playing = False
            self.fire("playback_stopped", protocol.dumps({"reason": "cleared"}))
        self._ack_marks(dropped, "cleared")

    def pause_playback(self, paused):
        if self.queue is None:
            return
        self.queue.paused = paused
        if paused and self.port.playing:
            self.port.playing = False
            self.fire("playback_stopped", protocol.dumps({"reason": "paused"}))

    # MediaPort listener (called on the loop thread through call_soon_threadsafe)
    def playback_started(self, t):
        body = {"queued_ms": self.queue.queued_ms}
        arrived, self._arrived = self._arrived, None
        if arrived is not None and t >= arrived:
            # from the server's audio reaching us (at an empty queue) to its first frame in the call
            body["latency_ms"] = round((t - arrived) * 1000, 1)
        self.fire("playback_started", protocol.dumps(body))

    def playback_done(self):
        self.fire("playback_stopped", protocol.dumps({"reason": "done"}))

    def marks_played(self, names):
        self._ack_marks(names, "playout")

    # ---- end -------------------------------------------------------------------------------------
    async def shutdown(self, code=1001):
        """Switch or module going away: end media, close with 1001."""
        self.end_media()
        if self.ws is not None and not self.ws.closed:
            self.closing = True
            await self.ws.close(code=code, message=b"going away")
        await self._cleanup()

    async def _cleanup(self):
        if self._receiver is not None and not self._receiver.done():
            self._receiver.cancel()
            try:
                await self._receiver
            except (asyncio.CancelledError, Exception):
                pass
        if self.ws is not None and not self.ws.closed:
            self.closing = True
            try:
                await self.ws.close(code=1000, message=b"")
            except Exception:
                pass
        for path in self._files:
            try:
                os.unlink(path)
            except OSError:
                pass
        self._files.clear()
        if self.frames_dropped:
            self.log("WARNING", "%d frames (%d ms) of the call's audio were dropped: the connection "
                     "was not ready or the server did not keep up" % (
                         self.frames_dropped, self.frames_dropped * self.ptime_ms))
        service.finished(self)
