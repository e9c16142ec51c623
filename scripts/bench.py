#!/usr/bin/env python3
"""Benchmarks on the switch simulator: CPU per stream, memory, playback latency. Prints figures.

    python scripts/bench.py [--calls 20] [--seconds 5] [--latency-trials 20]

CPU: N simulated 8 kHz calls stream stereo at 16 kHz to a local sink for T seconds; the process
CPU time beyond the same calls without streams, per stream, in % of one core. Latency: a server
sends 1 s of audio into a parked call at a random phase of its 20 ms clock; the time until the
first of it is written to the call (the wait for the call's next frame is most of it).
"""
import argparse
import base64
import random
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import audio_stream  # noqa: E402
from audio_stream import service, switch  # noqa: E402
from audio_stream.switch import core  # noqa: E402
from audio_stream.testing import fake_freeswitch  # noqa: E402
from audio_stream.testing.sim import SimSwitch, wait_until  # noqa: E402
from tests.support import WSServer, tone  # noqa: E402


def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def api(fs, line):
    s = fs.Stream()
    audio_stream.fsapi("na", s, None, line)
    return s.get_data().strip()


def run_calls(sim, fs, server, n, seconds, stream, variables=()):
    chans = []
    for i in range(n):
        ch = sim.channel(rate=8000)
        for k, v in variables:
            ch.set_var(k, v)
        ch.set_tones(300 + 10 * i, 1000, 8000)
        ch.set_core_writing(1)
        ch.start(1.0)
        chans.append(ch)
    if stream:
        for ch in chans:
            assert api(fs, "%s start %s stereo 16k" % (ch.uuid, server.url)) == "+OK Success"
        server.wait_conn(n, timeout=20)
    time.sleep(0.5)
    c0, t0, m0 = cpu(), time.monotonic(), rss_mb()
    time.sleep(seconds)
    used, wall, m1 = cpu() - c0, time.monotonic() - t0, rss_mb()
    for ch in chans:
        ch.hangup()
    wait_until(lambda: not service.busy(), 10)
    return used / wall, m1 - m0


def latency(sim, fs, trials):
    out = []
    pcm = tone(700, 8000, 1.0).tobytes()
    msg = json.dumps({"type": "streamAudio", "data": {"audioDataType": "raw", "sampleRate": 8000,
                                                        "audioData": base64.b64encode(pcm).decode()}})
    for _ in range(trials):
        server = WSServer()
        ch = sim.channel(rate=8000)
        ch.set_tones(440, 0, 8000)
        ch.start(1.0)
        assert api(fs, "%s start %s mono 8k" % (ch.uuid, server.url)) == "+OK Success"
        conn = server.wait_conn()
        time.sleep(0.2 + random.random() * 0.02)   # any phase of the call's 20 ms clock
        t0 = time.perf_counter()
        server.send(conn, msg)
        while not np.any(ch.heard()):
            time.sleep(0.0002)
        out.append((time.perf_counter() - t0) * 1000)
        ch.hangup()
        wait_until(lambda: not service.busy(), 10)
        server.stop()
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--latency-trials", type=int, default=20)
    p.add_argument("--no-deflate", action="store_true", help="STREAM_MESSAGE_DEFLATE=true")
    p.add_argument("--no-playback", action="store_true", help="STREAM_PLAYBACK=false")
    a = p.parse_args()
    variables = []
    if a.no_deflate:
        variables.append(("STREAM_MESSAGE_DEFLATE", "true"))
    if a.no_playback:
        variables.append(("STREAM_PLAYBACK", "false"))
    sim = SimSwitch()
    fs = fake_freeswitch.bind(sim)
    switch.install(core.Core(sim.lib), fs)
    server = WSServer()
    base, _ = run_calls(sim, fs, server, a.calls, a.seconds, stream=False)
    load, mem = run_calls(sim, fs, server, a.calls, a.seconds, stream=True, variables=variables)
    per = (load - base) / a.calls * 100
    print("cpu: %d calls, stereo 16 kHz out of 8 kHz calls%s: %.2f %% of one core per stream, "
          "the in-process sink server included (%.1f %% total, simulator alone %.1f %%)" % (
              a.calls, "".join(" %s=%s" % kv for kv in variables), per, load * 100, base * 100))
    print("memory: +%.1f MB RSS while %d streams ran (%.0f KB per stream)" % (mem, a.calls, mem * 1024 / a.calls))
    server.stop()
    lat = latency(sim, fs, a.latency_trials)
    print("playback latency, server send -> first sample written to a parked 8 kHz call "
          "(%d trials): median %.1f ms, p90 %.1f ms, max %.1f ms" % (
              len(lat), np.median(lat), np.percentile(lat, 90), max(lat)))
    service.stop_loop()
    sim.reset()


if __name__ == "__main__":
    main()
