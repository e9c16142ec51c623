"""What the example servers share: the command-line options, serving an aiohttp app with clear
errors, the stream's format (from the X-Audio-Stream-* headers of the upgrade request, else the
start metadata, else the options; never guessed; L16, or G.711 PCMU/PCMA decoded to L16), and the
messages a server sends."""
import asyncio
import base64
import errno
import json
import os
import signal
import socket

import numpy as np
from aiohttp import web

from .. import audio, protocol
from ..tools import cli


def add_server_options(p, port=8080):
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=cli.port, default=port, help="TCP port to listen on (0: any free port)")


def add_format_options(p):
    p.add_argument("--rate", type=cli.stream_rate,
                   help="the stream's sample rate for a client that says it neither in the X-Audio-Stream-Rate "
                   "header (audio_stream always sends it) nor in its start metadata (its \"rate\")")
    p.add_argument("--channels", type=int, choices=(1, 2),
                   help="1 (mono, mixed) or 2 (stereo), for a client that says it neither in the "
                   "X-Audio-Stream-Channels header nor in its start metadata (its \"channels\")")


class StreamFormat:
    """What the audio of one connection is, and who said so."""

    def __init__(self, encoding, rate, channels, said_by):
        self.encoding, self.rate, self.channels, self.said_by = encoding, rate, channels, said_by

    def __repr__(self):
        return "%s %d Hz, %d channel%s (%s)" % (self.encoding, self.rate, self.channels,
                                               "s" if self.channels > 1 else "", self.said_by)


UNKNOWN_FORMAT = ("no X-Audio-Stream-Encoding/-Rate/-Channels headers, no \"rate\" and \"channels\" in the "
                  "start metadata, and no --rate and --channels")


def format_from_headers(headers):
    """The format the upgrade request's X-Audio-Stream-* headers say (audio_stream sends them on
    every connection), or None."""
    found = protocol.audio_format(headers)
    return StreamFormat(*found, "the X-Audio-Stream-* headers") if found else None


def format_from_metadata(metadata, rate=None, channels=None):
    """The format the start metadata says ({"rate":16000,"channels":2}, also "sampleRate"), with
    --rate/--channels for what it leaves out; None when rate or channels stays unknown."""
    try:
        meta = json.loads(metadata)
    except (TypeError, ValueError):
        meta = None
    said = []
    if isinstance(meta, dict):
        r, c = meta.get("rate", meta.get("sampleRate")), meta.get("channels")
        if isinstance(r, int) and not isinstance(r, bool) and 8000 <= r <= 192000:
            rate, said = r, said + ["rate"]
        if c in (1, 2) and not isinstance(c, bool):
            channels, said = c, said + ["channels"]
    if rate is None or channels is None:
        return None
    by = ("the start metadata" if len(said) == 2 else
          "the start metadata's %s and the options" % said[0] if said else "--rate and --channels")
    return StreamFormat("L16", rate, channels, by)


def chime(rate=8000):
    """Three short tones, like a chime: 0.6 s of L16 (int16 numpy) at `rate`."""
    parts = []
    for hz in (660, 880, 990):
        t = np.arange(int(rate * 0.2)) / rate
        env = np.minimum(1, np.minimum(t, t[::-1]) * 40)
        parts.append((6000 * env * np.sin(2 * np.pi * hz * t)).astype("<i2"))
    return np.concatenate(parts)


def to_l16(fmt, data):
    """A binary message of a stream in `fmt` → L16 bytes: G.711 (PCMU, PCMA) decoded, one sample per
    byte (stereo stays interleaved); L16 as it is."""
    if fmt.encoding == "L16":
        return data
    return audio.decode(fmt.encoding.lower(), data, None)[0]


def stream_audio(pcm, rate):
    """The streamAudio message that plays raw L16 mono `pcm` (bytes) at `rate`."""
    return json.dumps({"type": "streamAudio", "data": {
        "audioDataType": "raw", "sampleRate": rate, "audioData": base64.b64encode(pcm).decode()}})


def stream_audio_like(pcm, fmt):
    """The streamAudio message that plays L16 mono `pcm` (bytes at fmt.rate) in the stream's own
    format: G.711 (audioDataType pcmu/pcma) for a PCMU/PCMA stream at 8000 Hz, a bot answering in
    the format it receives; raw L16 otherwise."""
    encode = audio.ENCODERS.get(fmt.encoding)
    if encode is None or fmt.rate != protocol.G711_RATE:
        return stream_audio(pcm, fmt.rate)
    return json.dumps({"type": "streamAudio", "data": {
        "audioDataType": fmt.encoding.lower(), "audioData": base64.b64encode(encode(pcm)).decode()}})


def mark(name):
    return json.dumps({"type": "mark", "data": {"name": name}})


def websocket_app(handler):
    """An aiohttp app that hands every WebSocket upgrade, on any path, to `handler(request)`."""
    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    return app


def serve(app, host, port, name):
    """Serve `app` until Ctrl-C or SIGTERM. Prints where it listens (the real port for --port 0)."""
    async def run():
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as e:
            await runner.cleanup()
            if isinstance(e, socket.gaierror) or not e.errno or e.errno < 0:
                why = "%s (--host must be an address or a name of this machine)" % (e.strerror or e)
            else:
                why = os.strerror(e.errno)
            if e.errno == errno.EADDRINUSE:
                why += " (another server is listening there: stop it or choose another --port)"
            raise cli.CLIError("%s cannot listen on %s:%d: %s" % (name, host, port, why)) from None
        bound = [s.getsockname() for s in site._server.sockets]
        shown = "[%s]" % host if ":" in host else host
        print("%s listening on ws://%s:%d/ (Ctrl-C to stop)" % (name, shown, bound[0][1]), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):
                pass
        try:
            await stop.wait()
        finally:
            await runner.cleanup()
        print("%s stopped" % name, flush=True)

    asyncio.run(run())
    return 0
