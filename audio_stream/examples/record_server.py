"""The recorder: an example WebSocket server for audio_stream that writes each stream to its own
WAV file (stereo streams stay stereo: left the caller, right what the caller hears) and prints
every text message it receives. With --greet it answers each stream with a short chime and a
mark, so you hear the server in the call and see the mark come back.

    python -m audio_stream.examples.record_server --port 8080 --dir recordings --greet
    fs_cli -x 'python audio_stream <uuid> start ws://127.0.0.1:8080/ stereo 16k'

The WAV's rate and channels are what the upgrade request's X-Audio-Stream-Rate and
X-Audio-Stream-Channels headers say (audio_stream sends them on every connection); for another
client, what its start metadata says ({"rate":16000,"channels":2}), else --rate and --channels.
A stream whose format is none of these is not written (the log says why): a WAV with the wrong
rate plays at the wrong speed. G.711 audio (X-Audio-Stream-Encoding PCMU or PCMA, which
audio_stream sends with STREAM_ENCODING) is decoded to 16-bit PCM. Files are named
call-<date>-<time>-<n>.wav and are never overwritten.
"""
import itertools
import os
import time
import wave

from aiohttp import WSMsgType, web

from ..tools import cli
from . import common

NAME = "record_server"


def greeting(rate=8000):
    """Three short tones, like a chime: 0.6 s of L16 at `rate`."""
    return common.chime(rate)


class RecordServer:
    def __init__(self, out_dir=".", rate=None, channels=None, greet=False, log=print):
        self.out_dir = out_dir
        self.rate = rate
        self.channels = channels
        self.greet = greet
        self.log = log
        self.files = []
        self._n = itertools.count(1)

    def app(self):
        return common.websocket_app(self.handle)

    def _new_path(self):
        """A file name no other stream of this or an earlier run has taken."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        while True:
            path = os.path.join(self.out_dir, "call-%s-%d.wav" % (stamp, next(self._n)))
            try:
                return path, open(path, "xb")
            except FileExistsError:
                continue

    async def handle(self, request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        fmt = common.format_from_headers(request.headers)
        w = f = path = None
        nbytes = 0          # bytes of audio received
        written = 0         # bytes of 16-bit PCM written
        first = True
        refused = None
        self.log("server: connection from %s %s%s" % (request.remote, request.path, ": %r" % fmt if fmt else ""))
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self.log("server: text %s" % msg.data[:200])
                    if first:
                        if fmt is None:
                            fmt = common.format_from_metadata(msg.data, self.rate, self.channels)
                        if self.greet:
                            await ws.send_str(common.stream_audio(greeting(8000).tobytes(), 8000))
                            await ws.send_str(common.mark("greeting"))
                            self.log("server: sent a 0.6 s greeting and the mark 'greeting'")
                elif msg.type == WSMsgType.BINARY:
                    if w is None and refused is None:
                        fmt = fmt or common.format_from_metadata(None, self.rate, self.channels)
                        refused = self._refuse(fmt)
                        if refused:
                            self.log("server: not recording this stream: %s" % refused)
                        else:
                            path, f = self._new_path()
                            w = wave.open(f, "wb")
                            w.setnchannels(fmt.channels)
                            w.setsampwidth(2)
                            w.setframerate(fmt.rate)
                    if w is not None:
                        pcm = common.to_l16(fmt, msg.data)
                        w.writeframes(pcm)
                        written += len(pcm)
                    nbytes += len(msg.data)
                first = False
        finally:
            if w is not None:
                w.close()
                f.close()      # wave does not close a file it was handed
                self.files.append(path)
                self.log("server: wrote %s (%.2f s, %d Hz, %d channel%s%s); closed with %s" % (
                    path, written / (2 * fmt.channels * fmt.rate), fmt.rate, fmt.channels,
                    "s" if fmt.channels > 1 else "", "" if fmt.encoding == "L16" else ", from " + fmt.encoding,
                    ws.close_code))
            elif refused:
                self.log("server: %d bytes of audio not written (%s); closed with %s" % (nbytes, refused, ws.close_code))
        return ws

    @staticmethod
    def _refuse(fmt):
        """Why this stream's audio cannot go into a WAV, or None."""
        if fmt is None:
            return "its format is unknown (%s)" % common.UNKNOWN_FORMAT
        return None


def main(argv=None, prog="python -m audio_stream.examples.record_server"):
    p = cli.parser(prog, __doc__)
    common.add_server_options(p)
    p.add_argument("--dir", default=".", help="directory for the WAV files (created if missing)")
    common.add_format_options(p)
    p.add_argument("--greet", action="store_true", help="play a short chime and send a mark into each call")
    a = p.parse_args(argv)
    cli.output_dir(a.dir)
    server = RecordServer(a.dir, a.rate, a.channels, a.greet, log=lambda s: print(s, flush=True))
    return common.serve(server.app(), a.host, a.port, NAME)


if __name__ == "__main__":
    cli.run(main)
