"""The echo bot: an example voice bot for audio_stream. It listens to the caller, and when the
caller pauses it plays what they said back into the call, then sends a mark and prints the
mark's acknowledgement when the audio has been played. If the caller speaks over the playback
(barge-in), it sends killAudio: the module stops the playback within a frame and acknowledges
the mark as "cleared".

    python -m audio_stream.examples.echo_bot --port 8080
    fs_cli -x 'python audio_stream <uuid> start ws://127.0.0.1:8080/ mono 16k'

Speech is told from silence by energy alone (20 ms frames louder than --threshold dBFS), which
is enough on a clean line. The stream's format comes from the upgrade request's
X-Audio-Stream-* headers (audio_stream sends them), else the start metadata ("rate",
"channels"), else --rate/--channels; a stream whose format is none of these is not echoed (the
log says why). A G.711 stream (STREAM_ENCODING=PCMU or PCMA) is answered in G.711 too
(streamAudio with audioDataType pcmu or pcma). Stream mono or stereo (the caller is the left
channel); mixed also carries the bot's own playback, which would barge in on itself.
"""
import itertools
import json

import numpy as np
from aiohttp import WSMsgType, web

from ..tools import cli
from . import common

NAME = "echo_bot"
FRAME_MS = 20


def level_dbfs(frame):
    """RMS level of int16 samples in dB relative to full scale (-inf for digital silence)."""
    if not len(frame):
        return float("-inf")
    rms = np.sqrt(np.mean(np.square(frame.astype(np.float64))))
    return 20 * np.log10(rms / 32768) if rms > 0 else float("-inf")


class Echo:
    """The bot's decisions, without any I/O. Feed it the caller's audio (int16 mono at `rate`);
    it returns what to do: ("play", int16 array) when an utterance ended, ("barge_in",) when the
    caller has been speaking over our playback for `barge_in` seconds."""

    def __init__(self, rate, pause=0.7, threshold=-40.0, min_speech=0.2, max_utterance=10.0,
                 barge_in=0.25, preroll=0.2):
        self.rate = rate
        self.n = rate * FRAME_MS // 1000
        self.threshold = threshold
        self.pause_frames = max(1, round(pause * 1000 / FRAME_MS))
        self.min_speech_frames = max(1, round(min_speech * 1000 / FRAME_MS))
        self.max_frames = max(1, round(max_utterance * 1000 / FRAME_MS))
        self.barge_frames = max(1, round(barge_in * 1000 / FRAME_MS))
        self.preroll_frames = round(preroll * 1000 / FRAME_MS)
        self.pending = np.zeros(0, dtype=np.int16)
        self.before = []          # the last frames before speech began (so the first syllable is kept)
        self.utterance = None     # frames of the utterance being heard, or None
        self.speech = 0           # speech frames in it
        self.silence = 0          # silent frames since the last speech frame
        self.playing = False      # audio sent and not yet acknowledged
        self.talking_over = 0     # consecutive speech frames while playing

    def feed(self, pcm):
        self.pending = np.concatenate([self.pending, np.asarray(pcm, dtype=np.int16)])
        actions = []
        while len(self.pending) >= self.n:
            frame, self.pending = self.pending[:self.n], self.pending[self.n:]
            actions += self._frame(frame, level_dbfs(frame) > self.threshold)
        return actions

    def _frame(self, frame, speaking):
        actions = []
        if self.playing:
            self.talking_over = self.talking_over + 1 if speaking else 0
            if self.talking_over >= self.barge_frames:
                self.playing = False
                self.talking_over = 0
                actions.append(("barge_in",))
        if self.utterance is None:
            if speaking:
                self.utterance, self.speech, self.silence = self.before + [frame], 1, 0
            else:
                self.before = (self.before + [frame])[-self.preroll_frames:] if self.preroll_frames else []
            return actions
        self.utterance.append(frame)
        if speaking:
            self.speech += 1
            self.silence = 0
        else:
            self.silence += 1
        if self.silence >= self.pause_frames or len(self.utterance) >= self.max_frames:
            keep = len(self.utterance) - max(0, self.silence - 5)   # keep 100 ms of the trailing pause
            heard, enough = self.utterance[:keep], self.speech >= self.min_speech_frames
            self.utterance, self.before = None, []
            if enough:
                self.playing = True
                actions.append(("play", np.concatenate(heard)))
        return actions

    def acknowledged(self):
        """The module acknowledged our last mark: the playback is over (played or cleared)."""
        self.playing = False
        self.talking_over = 0


class EchoBot:
    def __init__(self, rate=None, channels=None, log=print, **tuning):
        self.rate = rate
        self.channels = channels
        self.log = log
        self.tuning = tuning
        self._n = itertools.count(1)

    def app(self):
        return common.websocket_app(self.handle)

    async def handle(self, request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        call = next(self._n)
        fmt, echo, first, refused = common.format_from_headers(request.headers), None, True, False
        marks = {}                 # mark name -> what it follows, until acknowledged
        last_mark = None
        replies = itertools.count(1)
        say = lambda text: self.log("call %d: %s" % (call, text))   # noqa: E731
        say("connected from %s %s%s" % (request.remote, request.path, ": %r" % fmt if fmt else ""))
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                if first:
                    fmt = fmt or common.format_from_metadata(msg.data, self.rate, self.channels)
                    say("start metadata %s%s" % (msg.data[:200], ": %r" % fmt if fmt else ""))
                else:
                    ack = _mark_ack(msg.data)
                    if ack is None:
                        say("text %s" % msg.data[:200])
                    else:
                        name, event = ack
                        what = marks.pop(name, None)
                        if what and event == "playout":
                            what = " (its %s played)" % what
                        elif what:
                            what = " (its %s cut short or never played)" % what
                        say("mark %s %s%s" % (name, event, what or ""))
                        if echo is not None and name == last_mark:
                            echo.acknowledged()
            elif msg.type == WSMsgType.BINARY and not refused:
                if echo is None:
                    fmt = fmt or common.format_from_metadata(None, self.rate, self.channels)
                    if fmt is None:
                        refused = True
                        say("not echoing this stream: its format is unknown (%s)" % common.UNKNOWN_FORMAT)
                        continue
                    echo = Echo(fmt.rate, **self.tuning)
                rate = fmt.rate
                data = common.to_l16(fmt, msg.data)
                pcm = np.frombuffer(data[:len(data) // 2 * 2], dtype="<i2")
                if fmt.channels == 2:
                    pcm = pcm[0::2]          # left: the caller
                for action in echo.feed(pcm):
                    if action[0] == "play":
                        last_mark = "echo-%d" % next(replies)
                        seconds = len(action[1]) / rate
                        marks[last_mark] = "%.2f s" % seconds
                        await ws.send_str(common.stream_audio_like(action[1].astype("<i2").tobytes(), fmt))
                        await ws.send_str(common.mark(last_mark))
                        say("heard %.2f s: playing it back, then mark %s" % (seconds, last_mark))
                    else:
                        await ws.send_str('{"type":"killAudio"}')
                        say("barge-in: the caller speaks over %s, sent killAudio" % last_mark)
            first = False
        say("closed with %s" % ws.close_code)
        return ws


def _mark_ack(text):
    """(name, event) of an audio_stream mark acknowledgement, else None."""
    try:
        msg = json.loads(text)
        data = msg["data"] if msg.get("type") == "mark" else None
        return (data["name"], data["event"]) if isinstance(data, dict) and "event" in data else None
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def main(argv=None, prog="python -m audio_stream.examples.echo_bot"):
    p = cli.parser(prog, __doc__)
    common.add_server_options(p)
    common.add_format_options(p)
    p.add_argument("--pause", type=cli.seconds, default=0.7,
                   help="seconds of silence that end what the caller says (then the bot plays it back)")
    p.add_argument("--threshold", type=float, default=-40.0,
                   help="dBFS above which a 20 ms frame counts as speech")
    p.add_argument("--barge-in", type=cli.seconds, default=0.25,
                   help="seconds of the caller's speech over the playback that stop it (killAudio)")
    p.add_argument("--max-utterance", type=cli.seconds, default=10.0,
                   help="longest stretch of speech played back at once")
    a = p.parse_args(argv)
    bot = EchoBot(a.rate, a.channels, log=lambda s: print(s, flush=True), pause=a.pause,
                  threshold=a.threshold, barge_in=a.barge_in, max_utterance=a.max_utterance)
    return common.serve(bot.app(), a.host, a.port, NAME)


if __name__ == "__main__":
    cli.run(main)
