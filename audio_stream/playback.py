"""The server's audio into one call: decoding, the queue, marks, clear/pause, mod_audio_stream's
file mode. Runs on the loop thread; the frames themselves go into the call through the stream's
control port (switch/media.py's ControlPort, or switch/accel.py's in C: a contracts.ControlMedia) on
the media threads.

`host` is the stream (contracts.PlayerHost). Who owns what: the queue's `playing` changes only under
the queue's lock (the media thread starts and ends an episode as frames play; clear(), the pause
and the end end it); `_episode` is this object's, on the loop thread (an episode whose
playback_started was fired and whose end was not yet), so that exactly one playback_stopped follows
each playback_started.
"""
import os
import time

from . import audio, metrics, protocol
from .policy import LatencyPolicy

SINK_WAKE, SINK_REFUSED = 1, 2        # _accel.BinarySink.take_flags()

RAW_EXT = {8000: "r8", 16000: "r16", 24000: "r24", 32000: "r32", 48000: "r48", 64000: "r64"}


class Player:
    """`plays=False`: another stream of the call plays into it; this one only listens, and
    refuses the server's audio (with an error reply) instead of fighting over the call's frames."""

    def __init__(self, host, call_rate, queue, plays=True, make_resampler=None):
        """`queue`: the media path's playback queue (audio.PlaybackQueue or its C twin), None when
        this stream does not play (STREAM_PLAYBACK=false, or another stream of the call plays)."""
        self.host = host
        self.plays = plays
        self.queue = queue
        self.downlink = audio.Downlink(call_rate, make_resampler)
        self.port = None          # the control port (contracts.ControlMedia), set by the stream
        self.latency = LatencyPolicy(call_rate, queue.frame_bytes) if queue is not None else None
        self.recovered_ms = 0     # latency given back (audio dropped by latency recovery)
        self._came = 0            # bytes of audio queued since the last maintain()
        self._maintained_at = None
        self._episode = False     # playback_started fired, its end not yet (loop thread only)
        self.stop_requested = False
        self._files = []
        self._file_n = 0
        self._arrived = None
        # the accelerated path's _accel.BinarySink: binary L16 goes through it to the C queue (the
        # frames connection.take_binary takes, and the ones that come as messages: one carry, one
        # filter state), or None
        self.sink = None

    @property
    def playing(self):
        return self.queue is not None and self.queue.playing

    def _stop_playing(self, reason):
        if self._episode:
            self._episode = False
            self.host.fire("playback_stopped", protocol.dumps({"reason": reason}))

    # ---- messages from the server ---------------------------------------------------------------
    def handle(self, msg):
        """One parsed message (protocol.StreamAudio, BinaryAudio, KillAudio, Mark, ClearMarks,
        PausePlayback, ResumePlayback)."""
        kind = type(msg)
        if kind is protocol.StreamAudio:
            self._stream_audio(msg)
        elif kind is protocol.BinaryAudio:
            self.binary(msg.payload, msg.encoding)
        elif kind is protocol.KillAudio:
            self.clear()
        elif kind is protocol.Mark:
            self._mark(msg.name)
        elif kind is protocol.ClearMarks:
            if self.queue is not None:
                self._ack_marks(self.queue.clear_marks(), "cleared")
        elif kind is protocol.PausePlayback:
            self.pause(True)
        elif kind is protocol.ResumePlayback:
            self.pause(False)

    def _listen_only(self):
        if self.plays:
            return False
        self.host.bad("this stream does not play into the call: another stream of the call does "
                      "(only one stream per call plays)", "playback_not_available")
        return True

    def binary(self, data, encoding="L16"):
        """A binary message: mono L16 at STREAM_SAMPLE_RATE (default the stream's rate), an odd
        trailing byte carried to the next one; or G.711 (PCMU/PCMA) at 8000 Hz, a byte a sample."""
        if self._listen_only() or self.queue is None:
            return
        if encoding == "L16":
            if self.sink is not None:
                self.sink.push(data)
                self.sink_took()
                return
            rate = self.host.settings.sample_rate or self.host.rate
            self._enqueue(self.downlink.binary(data, rate))
        else:
            pcm, rate = audio.decode(encoding.lower(), data, None)
            self._enqueue(self.downlink.convert(pcm, rate))

    def _stream_audio(self, msg):
        if self._listen_only():
            return
        if self.queue is None or msg.audio_type in ("mp3", "ogg"):
            self._play_file(msg)
            return
        try:
            pcm, rate = audio.decode(msg.audio_type, msg.payload, msg.sample_rate)
        except audio.AudioFormatError as e:
            self.host.bad("streamAudio: %s" % e)
            return
        self._enqueue(self.downlink.convert(pcm, rate))

    def _enqueue(self, pcm):
        if not pcm:
            return
        self._came += len(pcm)
        queue = self.queue
        if not queue.queued:
            self._arrived = time.monotonic()     # audio arriving at an empty queue
        if not queue.push(pcm):
            self._refused(len(pcm))
            return
        if queue.take_wake():
            self.host.wake_playback()

    def _refused(self, nbytes):
        queue = self.queue
        ms, cap = nbytes * 1000 // (2 * queue.rate), self.host.settings.playback_buffer_ms
        if ms > cap:
            reason = "audio of %d ms in one message is longer than STREAM_PLAYBACK_BUFFER (%d ms): refused" % (ms, cap)
        else:
            reason = "playback queue full: %d ms queued, this message holds %d ms, STREAM_PLAYBACK_BUFFER is " \
                     "%d ms: audio refused" % (queue.queued_ms, ms, cap)
        self.host.bad(reason, "playback_buffer_full")

    def sink_took(self):
        """Audio went into the sink (frames connection.take_binary took, or binary()): wake the
        player, or say what was refused."""
        flags, refused_bytes = self.sink.take_flags()
        if flags & SINK_WAKE:
            self.host.wake_playback()
        if flags & SINK_REFUSED:
            self._refused(refused_bytes)

    def _play_file(self, msg):
        """mod_audio_stream's behaviour: write the payload to a file, fire ::play with its path."""
        if msg.audio_type == "raw":
            ext = RAW_EXT.get(msg.sample_rate)
            if ext is None:
                self.host.bad("streamAudio: unsupported sample rate %s for a raw file (one of %s)"
                              % (msg.sample_rate, ", ".join(str(r) for r in RAW_EXT)))
                return
        else:
            ext = msg.audio_type
        path = os.path.join(self.host.be.temp_dir(), "%s_%d.tmp.%s" % (self.host.uuid, self._file_n, ext))
        self._file_n += 1
        try:
            with open(path, "wb") as f:
                f.write(msg.payload)
        except OSError as e:
            self.host.bad("cannot write %s: %s" % (path, e), "io_error")
            return
        self._files.append(path)
        self.host.fire("play", protocol.play_body(msg.data, path))

    def _mark(self, name):
        if self.queue is None or self.queue.mark(name):
            self._ack_marks([name], "playout")

    def _ack_marks(self, names, event):
        for name in names:
            self.host.send_mark(name, event)
            self.host.fire("mark", protocol.dumps({"name": name, "event": event}))

    # ---- control (server messages and API commands) ---------------------------------------------
    def clear(self):
        if self.queue is None:
            return
        dropped, _ = self.queue.clear()
        self.downlink.reset()
        if self.sink is not None:
            self.sink.reset()
        self._stop_playing("cleared")
        self._ack_marks(dropped, "cleared")

    def pause(self, paused):
        if self.queue is None:
            return
        self.queue.set_paused(paused)
        if paused:
            self._stop_playing("paused")
        elif self.queue.take_wake():
            self.host.wake_playback()

    def maintain(self, now):
        """Latency recovery (policy.LatencyPolicy), every LatencyPolicy.every_s (the capture clock)."""
        if self.latency is None:
            return
        came, self._came = self._came, 0
        if self.sink is not None:
            came += self.sink.take_came()
        elapsed = now - self._maintained_at if self._maintained_at is not None else 0.0
        self._maintained_at = now
        low, debt = self.queue.take_stats()
        decision = self.latency.decide(low, debt, came, elapsed)
        if decision is None:
            return
        nbytes, sound = decision
        fb = self.queue.frame_bytes
        dropped, reached = self.queue.drop(nbytes, fb, LatencyPolicy.SILENT_PEAK)     # silent frames first
        rest = min(nbytes - dropped, sound)
        if rest > 0:                                                     # then sound, in one piece
            more, also = self.queue.drop(rest, rest)
            dropped += more
            reached = (reached or []) + (also or []) or None
        self.latency.dropped(dropped)
        if dropped:
            if not self.recovered_ms:
                self.host.log("NOTICE", "the server streams in real time and its audio plays %d ms later than it "
                              "needs to (the queue ran dry meanwhile): catching up, silence first"
                              % (debt * 1000 // (2 * self.queue.rate)))
            self.recovered_ms += dropped * 1000 // (2 * self.queue.rate)
        if reached:
            self.marks_played(reached)

    # ---- ControlPort listener (contracts.PlaybackListener; loop thread, call_soon_threadsafe) ----
    def playback_started(self, t):
        self._episode = True
        body = {"queued_ms": self.queue.queued_ms}
        arrived, self._arrived = self._arrived, None
        if self.sink is not None:
            took = self.sink.take_arrived()      # the latest audio to reach an empty queue wins
            if took is not None and (arrived is None or took > arrived):
                arrived = took
        if arrived is not None and t >= arrived:
            # from the server's audio reaching us (at an empty queue) to its first frame in the call
            body["latency_ms"] = round((t - arrived) * 1000, 1)
            metrics.playback_latency(t - arrived)
        self.host.fire("playback_started", protocol.dumps(body))

    def playback_done(self):
        if self._episode:
            self._episode = False
            self.host.fire("playback_stopped", protocol.dumps({"reason": "done"}))

    def marks_played(self, names):
        self._ack_marks(names, "playout")

    def playback_closed(self):
        """The playback bug is gone (hangup, stop, or the stream's own removal)."""
        if self.queue is not None:
            self.queue.stop_playing()
        if self.sink is not None:
            self.sink.enabled = False        # what still arrives comes as messages again
        self._stop_playing("stopped" if self.stop_requested else "hangup")

    # ---- end --------------------------------------------------------------------------------------
    def remove_files(self):
        for path in self._files:
            try:
                os.unlink(path)
            except OSError:
                pass
        self._files.clear()
