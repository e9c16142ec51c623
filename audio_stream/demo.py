"""The demo: a simulated call streams through the real stack to the example server.

    python -m audio_stream demo [--seconds 3] [--out demo-out] [--mix stereo] [--rate 16k]

No FreeSWITCH needed: the switch simulator (a small C library built with the machine's `cc`)
stands in for the core and runs the call on a native media thread; everything above it is the
code that runs inside FreeSWITCH: the ctypes media bug, the loop thread, aiohttp, resampling,
events. The caller says 440 Hz; the example server answers with a short greeting, which the
call plays back (you see it in the right channel of the WAV), and acknowledges its mark.
"""
import asyncio
import os
import socket
import sys
import threading
import time

import numpy as np


def _serve(server, ready):
    from aiohttp import web

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    runner = web.AppRunner(server.app())
    loop.run_until_complete(runner.setup())
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    site = web.SockSite(runner, sock)
    loop.run_until_complete(site.start())
    ready.append((loop, runner, sock.getsockname()[1]))
    loop.run_forever()


CALL_RATES = (8000, 16000, 32000, 48000)


def main(argv=None, prog="python -m audio_stream demo"):
    from .tools import cli

    p = cli.parser(prog, __doc__)
    p.add_argument("--seconds", type=cli.seconds, default=3.0, help="how long the simulated call lasts")
    p.add_argument("--out", default="demo-out", help="directory for the WAV file the example server writes")
    p.add_argument("--mix", default="stereo", choices=("mono", "mixed", "stereo"),
                   help="what to stream: the caller (mono), both sides summed (mixed), or the caller "
                   "left and what the caller hears right (stereo)")
    p.add_argument("--rate", default="16k", type=cli.stream_rate,
                   help="the stream's rate: 8k, 16k or an integer from 8000 to 48000")
    p.add_argument("--call-rate", type=cli.rate_choice(*CALL_RATES), default=8000,
                   help="the simulated call's own rate (%s)" % ", ".join(str(r) for r in CALL_RATES))
    a = p.parse_args(argv)
    cli.output_dir(a.out)
    rate = a.rate

    from . import accelerator, fsapi, service
    from .examples.record_server import RecordServer
    from .switch import core, install
    from .testing import fake_freeswitch
    from .testing.sim import SimBuildError, SimSwitch

    try:
        with cli.progress("building the switch simulator with cc (once; it is cached)"):
            sim = SimSwitch()
    except (SimBuildError, OSError) as e:
        raise cli.CLIError("cannot build the switch simulator: %s. The demo needs a C compiler "
                           "(Debian: apt-get install gcc)" % str(e).strip().splitlines()[0]) from None
    fs = fake_freeswitch.bind(sim)
    install(core.Core(sim.lib), fs)

    server = RecordServer(a.out, greet=True, log=lambda s: print("  " + s, flush=True))
    ready = []
    threading.Thread(target=_serve, args=(server, ready), daemon=True).start()
    while not ready:
        time.sleep(0.01)
    srv_loop, runner, port = ready[0]

    ch = sim.channel(rate=a.call_rate)
    ch.set_tones(440, 0, 8000)
    ch.set_core_writing(0)          # a parked call: playback goes in through our own writes
    ch.start(speed=1.0)
    channels = 2 if a.mix == "stereo" else 1
    # the recorder learns the rate and channels from the X-Audio-Stream-* headers of the upgrade
    line = '%s start ws://127.0.0.1:%d/demo %s %d {"demo":true}' % (ch.uuid, port, a.mix, rate)
    print(accelerator.media_path())
    print("> python audio_stream %s" % line)
    stream = fs.Stream()
    fsapi("na", stream, None, line)
    print("< %s" % stream.get_data().strip(), flush=True)
    time.sleep(a.seconds)
    print("hanging up the simulated call", flush=True)
    ch.hangup()
    deadline = time.monotonic() + 5
    while service.busy() and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)
    service.stop_loop()
    asyncio.run_coroutine_threadsafe(runner.cleanup(), srv_loop).result(5)
    srv_loop.call_soon_threadsafe(srv_loop.stop)

    print("events fired:")
    for ev in fs.fired():
        print("  %-36s %s" % (ev.get("Event-Subclass"), ev.get("_body")))
    heard = ch.heard()
    print("the caller heard %.2f s of audio from the server" % (np.count_nonzero(heard) / a.call_rate))
    sim.reset()
    if not server.files:
        print("FAILED: the server received no audio", file=sys.stderr)
        return 1
    print("WAV written: %s" % os.path.abspath(server.files[0]))
    return 0


if __name__ == "__main__":
    from .tools import cli
    cli.run(main)
