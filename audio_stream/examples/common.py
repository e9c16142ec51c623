"""What the example servers share: the command-line options, serving an aiohttp app with clear
errors, the stream format from the start metadata, and the messages a server sends."""
import asyncio
import base64
import errno
import json
import os
import signal

import numpy as np
from aiohttp import web

from ..tools import cli


def add_server_options(p, port=8080):
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=cli.port, default=port, help="TCP port to listen on (0: any free port)")


def add_format_options(p):
    p.add_argument("--rate", type=cli.stream_rate, default=8000,
                   help="the stream's sample rate when the start metadata does not say (its \"rate\")")
    p.add_argument("--channels", type=int, choices=(1, 2), default=1,
                   help="1 (mono, mixed) or 2 (stereo) when the start metadata does not say (its \"channels\")")


def stream_format(metadata, rate, channels):
    """(rate, channels) from start metadata such as {"rate":16000,"channels":2}, else the defaults.
    audio_stream sends the stream's format nowhere but in the metadata you choose to send."""
    try:
        meta = json.loads(metadata)
    except (TypeError, ValueError):
        return rate, channels
    if not isinstance(meta, dict):
        return rate, channels
    r = meta.get("rate", meta.get("sampleRate"))
    c = meta.get("channels")
    if isinstance(r, int) and 8000 <= r <= 192000:
        rate = r
    if c in (1, 2):
        channels = c
    return rate, channels


def chime(rate=8000):
    """Three short tones, like a chime: 0.6 s of L16 (int16 numpy) at `rate`."""
    parts = []
    for hz in (660, 880, 990):
        t = np.arange(int(rate * 0.2)) / rate
        env = np.minimum(1, np.minimum(t, t[::-1]) * 40)
        parts.append((6000 * env * np.sin(2 * np.pi * hz * t)).astype("<i2"))
    return np.concatenate(parts)


def stream_audio(pcm, rate):
    """The streamAudio message that plays raw L16 mono `pcm` (bytes) at `rate`."""
    return json.dumps({"type": "streamAudio", "data": {
        "audioDataType": "raw", "sampleRate": rate, "audioData": base64.b64encode(pcm).decode()}})


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
            why = os.strerror(e.errno) if e.errno else str(e)
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
