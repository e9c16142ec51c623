"""An example WebSocket server for audio_stream: writes each call's audio to a WAV file, prints
what it receives, and (with --greet) answers with a short spoken-like tone and a mark, so the
caller hears the server.

    python -m audio_stream.examples.record_server --port 8080 --dir /tmp/calls --greet

The audio format comes from the start metadata when it is a JSON object with "rate" and
"channels" (as the demo sends), otherwise from --rate/--channels.
"""
import argparse
import asyncio
import base64
import json
import os
import time
import wave

import numpy as np
from aiohttp import WSMsgType, web


def greeting(rate=8000):
    """Three short tones, like a chime: 0.6 s of L16 at `rate`."""
    parts = []
    for hz in (660, 880, 990):
        t = np.arange(int(rate * 0.2)) / rate
        env = np.minimum(1, np.minimum(t, t[::-1]) * 40)
        parts.append((6000 * env * np.sin(2 * np.pi * hz * t)).astype("<i2"))
    return np.concatenate(parts)


class RecordServer:
    def __init__(self, out_dir=".", rate=8000, channels=1, greet=False, log=print):
        self.out_dir = out_dir
        self.rate = rate
        self.channels = channels
        self.greet = greet
        self.log = log
        self.files = []

    def app(self):
        app = web.Application()
        app.router.add_get("/{tail:.*}", self.handle)
        return app

    async def handle(self, request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        rate, channels = self.rate, self.channels
        path = os.path.join(self.out_dir, "call-%d-%s.wav" % (int(time.time()), id(ws) & 0xFFFF))
        w = None
        nbytes = 0
        first = True
        self.log("server: connection from %s %s" % (request.remote, request.path))
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                self.log("server: text %s" % msg.data[:200])
                if first:
                    try:
                        meta = json.loads(msg.data)
                        rate = int(meta.get("rate", rate))
                        channels = int(meta.get("channels", channels))
                    except (ValueError, TypeError, AttributeError):
                        pass
                    if self.greet:
                        pcm = greeting(8000).tobytes()
                        await ws.send_str(json.dumps({"type": "streamAudio", "data": {
                            "audioDataType": "raw", "sampleRate": 8000,
                            "audioData": base64.b64encode(pcm).decode()}}))
                        await ws.send_str(json.dumps({"type": "mark", "data": {"name": "greeting"}}))
                        self.log("server: sent a 0.6 s greeting and the mark 'greeting'")
            elif msg.type == WSMsgType.BINARY:
                if w is None:
                    w = wave.open(path, "wb")
                    w.setnchannels(channels)
                    w.setsampwidth(2)
                    w.setframerate(rate)
                w.writeframes(msg.data)
                nbytes += len(msg.data)
            first = False
        if w is not None:
            w.close()
            self.files.append(path)
            self.log("server: wrote %s (%.2f s, %d Hz, %d channel%s); closed with %s" % (
                path, nbytes / (2 * channels * rate), rate, channels, "s" if channels > 1 else "",
                ws.close_code))
        return ws


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--dir", default=".")
    p.add_argument("--rate", type=int, default=8000, help="when the metadata does not say")
    p.add_argument("--channels", type=int, default=1, help="when the metadata does not say")
    p.add_argument("--greet", action="store_true", help="play a short greeting into each call")
    a = p.parse_args()
    server = RecordServer(a.dir, a.rate, a.channels, a.greet)
    web.run_app(server.app(), host=a.host, port=a.port)


if __name__ == "__main__":
    main()
