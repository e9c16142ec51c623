#!/usr/bin/env python3
"""The WebSocket sink of scripts/bench: its own process, so its CPU is not the switch's.

    python scripts/bench_sink.py [--host 127.0.0.1] [--port 0]

Prints `READY <port>` on stdout once it listens. Every WebSocket connection on
ws://host:port/<phase>/<impl>/<uuid> gets one handler that records, per binary message, its
arrival time (time.monotonic(), taken right after the message is read) and its size, and keeps
the audio itself only when the phase asks for it. It can stream audio back into the call
(`streamAudio` JSON, raw L16 at 8 kHz): continuously (paced in real time, a little ahead) or in
short bursts (for `playback_started` latency).

The bench drives it with a small HTTP API on the same port (JSON in, JSON out):

    POST /ctl/phase   {"phase": "p3", "record_audio": false, "play": {...} or null}
                      options for connections that open on that phase from now on
    POST /ctl/play    {"phase": "p3", "mode": "continuous"|"bursts"|"off", ...}
                      start (or stop) playing on the phase's open connections
    GET  /ctl/status?phase=p3     counts of opened / open / closed connections, by implementation
    GET  /ctl/results?phase=p3[&audio_dir=DIR]   every connection's record (audio into DIR)
    POST /ctl/forget?phase=p3     drop the phase's records
    GET  /ctl/stalls?t0=T&t1=T    the sink's own stalls between two time.monotonic() instants
                                  (its event loop's lateness, its garbage collector's pauses): a
                                  round trip or a gap measured then may be the sink's, not the switch's
    POST /ctl/quit

play options: mode; chunk_ms (continuous: each message's audio, default 20); lead_ms
(continuous: how far ahead of real time to stay, default 200); burst_ms (bursts: audio per burst,
default 200); period_ms (bursts: one burst per period at a random phase, default 1000);
rounds (bursts, default 3).

Echo (full duplex): `POST /ctl/play {"phase": …, "mode": "echo", "rate": R, "channels": 1|2,
"format": "binary"|"json", "ears": {"right": R, "far": 8000}, "every_ms": 500, "impls": [...]}`
answers every binary message of the phase's connections (of those implementations), at once,
with the same duration of the probe signal (bench_tools.EchoProbe) at rate R: a binary L16
message, or a streamAudio JSON message (raw, base64). It notes when each reply carrying a marker
went out, and listens for the probe with each ear asked for: "right", the right channel of the
same (stereo) stream; "far", an observer stream of the call's far end (a second stream, on
ws://host:port/obs/obs/<uuid of the echoed call>, mono at that rate; only calls that have one
open get that ear). `POST /ctl/echo_stop
{"phase": …}` ends the echo and the analysis; the results are in each connection's record
("echo": bench_tools.EchoState.result()).
"""
import argparse
import asyncio
import base64
import gc
import json
import math
import os
import random
import signal
import sys
import time
from array import array

import numpy as np
from aiohttp import WSMsgType, web

import bench_tools as bt

RATE = 8000
OBSERVER_PHASE = "obs"


def audio_message(ms, hz=440.0, amplitude=3000):
    """One streamAudio message carrying `ms` of a quiet tone, raw L16 at 8 kHz."""
    n = RATE * ms // 1000
    pcm = array("h", (int(amplitude * math.sin(2 * math.pi * hz * i / RATE)) for i in range(n)))
    if sys.byteorder != "little":
        pcm.byteswap()
    return json.dumps({"type": "streamAudio", "data": {
        "audioDataType": "raw", "sampleRate": RATE,
        "audioData": base64.b64encode(pcm.tobytes()).decode()}})


class Rec:
    """One connection as the sink saw it."""
    __slots__ = ("path", "phase", "impl", "uuid", "t_open", "t_close", "code", "compress",
                 "times", "sizes", "audio", "texts", "sent", "player", "ws", "error",
                 "echo", "echo_opts", "echo_result", "bytes_in")

    def __init__(self, path, record_audio):
        parts = [p for p in path.split("/") if p]
        self.path = path
        self.phase = parts[0] if len(parts) > 0 else ""
        self.impl = parts[1] if len(parts) > 1 else ""
        self.uuid = parts[2] if len(parts) > 2 else ""
        self.t_open = time.monotonic()
        self.t_close = None
        self.code = None
        self.compress = None
        self.times = array("d")
        self.sizes = array("l")
        self.audio = bytearray() if record_audio else None
        self.texts = 0
        self.sent = 0
        self.player = None
        self.ws = None
        self.error = None
        self.echo = None            # bench_tools.EchoState while echoing
        self.echo_opts = None
        self.echo_result = None
        self.bytes_in = 0

    def as_dict(self):
        return {"path": self.path, "phase": self.phase, "impl": self.impl, "uuid": self.uuid,
                "t_open": self.t_open, "t_close": self.t_close, "code": self.code,
                "compress": self.compress, "n": len(self.sizes), "bytes": sum(self.sizes),
                "texts": self.texts, "sent": self.sent, "error": self.error,
                "times": self.times.tolist(), "sizes": self.sizes.tolist(),
                "bytes_in": self.bytes_in, "echo": self.echo_result}


class Sink:
    def __init__(self):
        self.recs = []
        self.phase_opts = {}
        self._messages = {}
        self.echo_heard = {}        # uuid of an echoed call -> its EchoState (its far end's ear)
        self.observers = {}         # uuid of an observed call -> its open observer connection

    def message(self, ms):
        m = self._messages.get(ms)
        if m is None:
            m = self._messages[ms] = audio_message(ms)
        return m

    # ---- WebSocket side --------------------------------------------------------------------
    async def ws_handler(self, request):
        ws = web.WebSocketResponse(compress=True, max_msg_size=0, autoclose=True, autoping=True)
        await ws.prepare(request)
        opts = self.phase_opts.get(request.path.strip("/").split("/")[0], {})
        rec = Rec(request.path, opts.get("record_audio", False))
        rec.ws = ws
        rec.compress = bool(ws.compress)
        self.recs.append(rec)
        if rec.phase == OBSERVER_PHASE:
            return await self.observe(rec, ws)
        if opts.get("play"):
            self.start_player(rec, opts["play"])
        if opts.get("echo"):
            self.start_echo(rec, opts["echo"])
        times, sizes, audio = rec.times, rec.sizes, rec.audio
        mono = time.monotonic
        receive = ws.receive
        try:
            while True:
                msg = await receive()
                t = mono()
                kind = msg.type
                if kind == WSMsgType.BINARY:
                    times.append(t)
                    sizes.append(len(msg.data))
                    if audio is not None:
                        audio += msg.data
                    if rec.echo is not None:
                        await self.echo(rec, msg.data, t)
                elif kind == WSMsgType.TEXT:
                    rec.texts += 1
                else:
                    break
        except Exception as e:  # a broken connection is recorded, not fatal
            rec.error = repr(e)
        finally:
            rec.t_close = mono()
            rec.code = ws.close_code
            if rec.player is not None:
                rec.player.cancel()
                rec.player = None
            self.end_echo(rec)
            rec.ws = None
        return ws

    async def observe(self, rec, ws):
        """An observer stream (the far end of an echoed call): its audio goes to that call's
        EchoState while one is running; nothing else is kept."""
        self.observers[rec.uuid] = rec
        mono = time.monotonic
        try:
            while True:
                msg = await ws.receive()
                if msg.type == WSMsgType.BINARY:
                    t = mono()
                    rec.bytes_in += len(msg.data)
                    st = self.echo_heard.get(rec.uuid)
                    if st is not None:
                        n = len(msg.data) // 2
                        st.heard("far", np.frombuffer(msg.data, dtype="<i2", count=n), t)
                elif msg.type != WSMsgType.TEXT:
                    break
        except Exception as e:
            rec.error = repr(e)
        finally:
            rec.t_close = mono()
            rec.code = ws.close_code
            rec.ws = None
            if self.observers.get(rec.uuid) is rec:
                del self.observers[rec.uuid]
        return ws

    # ---- echo ----------------------------------------------------------------------------------
    def start_echo(self, rec, opts):
        impls = opts.get("impls")
        if rec.echo is not None or (impls and rec.impl not in impls):
            return False
        ears = {k: int(v) for k, v in (opts.get("ears") or {}).items() if k in ("right", "far") and v}
        if rec.uuid not in self.observers:      # only the calls whose far end is observed have that ear
            ears.pop("far", None)
        rec.echo_opts = dict(opts, ears=ears)
        rec.echo = bt.EchoState(int(opts["rate"]), int(opts.get("channels", 1)), ears,
                                every_ms=float(opts.get("every_ms", 500)))
        if "far" in ears:
            self.echo_heard[rec.uuid] = rec.echo
        return True

    def end_echo(self, rec):
        st = rec.echo
        if st is None:
            return
        rec.echo = None
        if self.echo_heard.get(rec.uuid) is st:
            del self.echo_heard[rec.uuid]
        rec.echo_result = dict(st.result(), format=rec.echo_opts.get("format", "binary"))

    async def echo(self, rec, data, t):
        """Answer one received message with as much probe audio, at once."""
        st = rec.echo
        opts = rec.echo_opts
        pcm, marker = st.reply(len(data))
        if opts.get("format") == "json":
            payload = json.dumps({"type": "streamAudio", "data": {
                "audioDataType": "raw", "sampleRate": st.rate,
                "audioData": base64.b64encode(pcm.tobytes()).decode()}})
        else:
            payload = pcm.tobytes()
        ws = rec.ws
        if ws is not None and not ws.closed:
            ts = time.monotonic()
            try:
                if isinstance(payload, str):
                    await ws.send_str(payload)
                else:
                    await ws.send_bytes(payload)
                rec.sent += 1
                st.sent(marker, ts)
            except (ConnectionError, RuntimeError):
                pass
        # the analysis after the answer: a batch of it (every 200 ms of audio) must not hold the
        # answer back, or the sink's own work is counted in the round trip
        if "right" in st.ears:
            n = len(data) // 4 * 2
            st.heard("right", np.frombuffer(data, dtype="<i2", count=n)[1::2], t)

    def start_player(self, rec, play):
        if rec.player is not None:
            rec.player.cancel()
            rec.player = None
        mode = play.get("mode", "off")
        if mode == "continuous":
            rec.player = asyncio.ensure_future(self.play_continuous(rec, play))
        elif mode == "bursts":
            rec.player = asyncio.ensure_future(self.play_bursts(rec, play))

    async def play_continuous(self, rec, play):
        chunk = int(play.get("chunk_ms", 20))
        lead = float(play.get("lead_ms", 200)) / 1000.0
        msg = self.message(chunk)
        t0 = time.monotonic()
        sent_s = 0.0
        try:
            while rec.ws is not None and not rec.ws.closed:
                # keep `lead` seconds of audio ahead of real time
                while sent_s < (time.monotonic() - t0) + lead:
                    await rec.ws.send_str(msg)
                    rec.sent += 1
                    sent_s += chunk / 1000.0
                await asyncio.sleep(max(0.001, t0 + sent_s - lead - time.monotonic()))
        except (asyncio.CancelledError, ConnectionError, RuntimeError):
            pass

    async def play_bursts(self, rec, play):
        burst = int(play.get("burst_ms", 200))
        period = float(play.get("period_ms", 1000)) / 1000.0
        rounds = int(play.get("rounds", 3))
        msg = self.message(burst)
        t0 = time.monotonic()
        try:
            for r in range(rounds):
                # a random instant in this round's period, after the previous burst has played out
                lo = burst / 1000.0 + 0.1
                at = t0 + r * period + lo + random.random() * max(0.0, period - lo - 0.05)
                await asyncio.sleep(max(0.0, at - time.monotonic()))
                if rec.ws is None or rec.ws.closed:
                    return
                await rec.ws.send_str(msg)
                rec.sent += 1
        except (asyncio.CancelledError, ConnectionError, RuntimeError):
            pass

    # ---- control side -------------------------------------------------------------------------
    def _phase(self, request):
        return request.query.get("phase", "")

    async def ctl_phase(self, request):
        body = await request.json()
        self.phase_opts[body["phase"]] = {"record_audio": bool(body.get("record_audio")),
                                          "play": body.get("play"), "echo": body.get("echo")}
        return web.json_response({"ok": True})

    async def ctl_play(self, request):
        body = await request.json()
        phase = body["phase"]
        n = 0
        echo = body.get("mode") == "echo"
        for rec in self.recs:
            if rec.phase == phase and rec.ws is not None and not rec.ws.closed:
                if echo:
                    n += self.start_echo(rec, body)
                else:
                    self.start_player(rec, body)
                    n += 1
        opts = self.phase_opts.setdefault(phase, {"record_audio": False})
        if echo:
            opts["echo"] = body
        else:
            opts["play"] = body if body.get("mode", "off") != "off" else None
        return web.json_response({"ok": True, "playing": n})

    async def ctl_echo_stop(self, request):
        body = await request.json()
        phase = body["phase"]
        n = 0
        for rec in self.recs:
            if rec.phase == phase and rec.echo is not None:
                self.end_echo(rec)
                n += 1
        self.phase_opts.get(phase, {}).pop("echo", None)
        return web.json_response({"ok": True, "stopped": n})

    async def ctl_status(self, request):
        phase = self._phase(request)
        out = {"opened": 0, "open": 0, "closed": 0, "by_impl": {}}
        for rec in self.recs:
            if rec.phase != phase:
                continue
            d = out["by_impl"].setdefault(rec.impl, {"opened": 0, "open": 0, "closed": 0})
            key = "closed" if rec.t_close is not None else "open"
            for o in (out, d):
                o["opened"] += 1
                o[key] += 1
        return web.json_response(out)

    async def ctl_results(self, request):
        phase = self._phase(request)
        audio_dir = request.query.get("audio_dir")
        out = []
        for i, rec in enumerate(self.recs):
            if rec.phase != phase:
                continue
            d = rec.as_dict()
            if audio_dir and rec.audio is not None:
                path = os.path.join(audio_dir, "%s-%s-%s-%d.raw" % (rec.phase, rec.impl, rec.uuid, i))
                with open(path, "wb") as f:
                    f.write(rec.audio)
                d["audio_file"] = path
            out.append(d)
        return web.json_response({"connections": out, "pid": os.getpid()})

    async def ctl_forget(self, request):
        phase = self._phase(request)
        self.recs = [r for r in self.recs if r.phase != phase or r.t_close is None]
        for r in self.recs:
            if r.phase == phase:       # still open: keep recording, but drop what is stored
                del r.times[:]
                del r.sizes[:]
        self.phase_opts.pop(phase, None)
        return web.json_response({"ok": True})

    async def ctl_quit(self, request):
        asyncio.get_event_loop().call_later(0.05, self.stop.set)
        return web.json_response({"ok": True})


class Stalls:
    """The sink's own stalls, with when they ended (time.monotonic(), the same clock as the bench's
    in another process): how late its event loop ran a 5 ms timer, and its garbage collector's
    pauses (each of at least 1 ms)."""

    EVERY_S = 0.005

    def __init__(self, keep=200000):
        from collections import deque
        self.late = deque(maxlen=keep)      # (t, ms) lateness of at least 2 ms
        self.gc = deque(maxlen=keep)        # (t, ms)
        self._gc_t0 = None

    def gc_callback(self, phase, info):
        if phase == "start":
            self._gc_t0 = time.monotonic()
        elif self._gc_t0 is not None:
            t = time.monotonic()
            ms = (t - self._gc_t0) * 1000.0
            self._gc_t0 = None
            if ms >= 1.0:
                self.gc.append((t, ms))

    async def watch(self):
        mono = time.monotonic
        while True:
            t0 = mono()
            await asyncio.sleep(self.EVERY_S)
            t = mono()
            late = (t - t0 - self.EVERY_S) * 1000.0
            if late >= 2.0:
                self.late.append((t, late))

    def between(self, t0, t1):
        late = [ms for t, ms in self.late if t0 <= t <= t1]
        pauses = [ms for t, ms in self.gc if t0 <= t <= t1]
        return {"loop_late_ms_max": max(late) if late else 0.0,
                "loop_late_over_20ms": sum(1 for ms in late if ms > 20),
                "gc_pause_ms_max": max(pauses) if pauses else 0.0, "gc_pauses": len(pauses)}


async def main_async(host, port):
    sink = Sink()
    stalls = Stalls()
    gc.callbacks.append(stalls.gc_callback)
    watcher = asyncio.ensure_future(stalls.watch())

    async def ctl_stalls(request):
        q = request.query
        return web.json_response(stalls.between(float(q.get("t0", 0)), float(q.get("t1", 1e18))))
    sink.stop = asyncio.Event()
    app = web.Application(client_max_size=1 << 20)
    app.router.add_post("/ctl/phase", sink.ctl_phase)
    app.router.add_post("/ctl/play", sink.ctl_play)
    app.router.add_get("/ctl/status", sink.ctl_status)
    app.router.add_get("/ctl/results", sink.ctl_results)
    app.router.add_post("/ctl/forget", sink.ctl_forget)
    app.router.add_post("/ctl/echo_stop", sink.ctl_echo_stop)
    app.router.add_post("/ctl/quit", sink.ctl_quit)
    app.router.add_get("/ctl/stalls", ctl_stalls)
    app.router.add_get("/{tail:.*}", sink.ws_handler)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024, reuse_address=True)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    print("READY %d" % port, flush=True)
    loop = asyncio.get_event_loop()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, sink.stop.set)
    await sink.stop.wait()
    watcher.cancel()
    for rec in sink.recs:
        if rec.player is not None:
            rec.player.cancel()
    await runner.cleanup()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    a = p.parse_args()
    try:
        asyncio.run(main_async(a.host, a.port))
    except OSError as e:
        print("bench_sink: cannot listen on %s:%d: %s" % (a.host, a.port, e.strerror or e), file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
