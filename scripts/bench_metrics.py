#!/usr/bin/env python3
"""What one scrape of the metrics endpoint costs the loop thread, with N live streams on the switch
simulator (default 300, 8 kHz mono, 100 ms per message, to scripts/bench_sink.py in its own process).

    python scripts/bench_metrics.py [--streams 300] [--scrapes 30]

Prints, for the text a scrape serves: its size, the loop thread's time to render it (median and
worst of --scrapes renders, taken on the loop thread between capture ticks), and a whole HTTP
scrape's round trip (one per second, as Prometheus with a 1 s interval), with the capture clock's
lateness during the scrapes. A short run: it is a micro-benchmark, not a load test.
"""
import argparse
import ctypes
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, default=300)
    p.add_argument("--scrapes", type=int, default=30)
    a = p.parse_args()

    from audio_stream import exporter, metrics, service, settings_xml, switch
    from audio_stream.switch import core
    from audio_stream.testing import fake_freeswitch
    from audio_stream.testing.sim import SimSwitch, wait_until

    sink = subprocess.Popen([sys.executable, os.path.join(HERE, "bench_sink.py"), "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    line = sink.stdout.readline().split()
    if line[:1] != ["READY"]:
        sys.exit("the sink did not start: %r" % line)
    url = "ws://127.0.0.1:%s/m/ours/" % line[1]
    sim = SimSwitch()
    fs = fake_freeswitch.bind(sim)
    switch.install(core.Core(ctypes.CDLL(sim.path)), fs)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    # 100 ms per message: a fifth of the sink's work at the default 20 ms (a scrape does not depend on it)
    sim.set_config(settings_xml.CONF_NAME, '<configuration name="audio_stream.conf"><settings><param '
                   'name="STREAM_BUFFER_SIZE" value="100"/></settings><metrics><param name="listen" '
                   'value="127.0.0.1:%d"/></metrics></configuration>' % port)

    import audio_stream

    def api(line):
        stream = fs.Stream()
        audio_stream.fsapi("na", stream, None, line)
        return stream.get_data().strip()
    print(api("reload"))
    chans = []
    try:
        for i in range(a.streams):
            ch = sim.channel(rate=8000, ptime_ms=20)
            ch.set_tones(440, 0, 8000)
            ch.start(1.0)
            chans.append(ch)
            reply = api("%s start %s%s mono 8k" % (ch.uuid, url, ch.uuid))
            assert reply == "+OK Success", reply
        if not wait_until(lambda: sum(s.state == "streaming" for s in service.all_streams()[0]) == a.streams, 30):
            sys.exit("not every stream connected")
        time.sleep(2.0)

        async def renders(n):
            import asyncio
            out, cpu = [], []
            for _ in range(n):
                t0, c0 = time.perf_counter(), time.thread_time()
                text = exporter.render()
                out.append(time.perf_counter() - t0)
                cpu.append(time.thread_time() - c0)
                await asyncio.sleep(0.02)
            return out, cpu, len(text.encode())
        times, cpu, size = service.call(renders(a.scrapes), 60)
        print("%d streams: /metrics text %d bytes; render on the loop thread: wall median %.2f ms (worst %.2f), "
              "CPU median %.2f ms (worst %.2f)" % (a.streams, size, statistics.median(times) * 1000, max(times) * 1000,
                                                  statistics.median(cpu) * 1000, max(cpu) * 1000))

        lat_before = metrics.TICK_LATENESS.samples()
        trips = []
        for _ in range(min(a.scrapes, 10)):
            t0 = time.perf_counter()
            with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as r:
                r.read()
            trips.append(time.perf_counter() - t0)
            time.sleep(1.0 - (time.perf_counter() - t0) % 1.0)
        lat_after = metrics.TICK_LATENESS.samples()
        n = lat_after[-1][2] - lat_before[-1][2]
        mean_late = (lat_after[-2][2] - lat_before[-2][2]) / n if n else 0.0
        print("HTTP scrape round trip, once a second: median %.2f ms, worst %.2f ms; capture ticks meanwhile: "
              "%d, mean lateness %.2f ms" % (statistics.median(trips) * 1000, max(trips) * 1000, n, mean_late * 1000))
    finally:
        for ch in chans:
            ch.hangup()
        wait_until(lambda: not service.busy(), 30)
        service.stop_loop()
        sink.terminate()
        sink.wait(5)


if __name__ == "__main__":
    main()
