"""The simulated switch for the product tests: the project's real ctypes binding drives the switch
simulator (audio_stream/testing/fssim.c, built with the machine's cc) from native threads, events go
through a stand-in `freeswitch` module, and the WebSocket servers are real aiohttp servers."""
import os
import threading
import time

import pytest

import audio_stream
from audio_stream import service, switch
from audio_stream.switch import core, dtmf, media
from audio_stream.testing import fake_freeswitch
from audio_stream.testing.sim import SimSwitch, wait_until

from . import support
from .support import WSServer


def _fds():
    """Open file descriptors of this process, by target (sockets, pipes, files)."""
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.add((fd, os.readlink("/proc/self/fd/" + fd)))
        except OSError:
            pass
    return out


def pytest_keyboard_interrupt(excinfo):
    support.interrupted.set()


@pytest.fixture(scope="session")
def sim():
    return SimSwitch()


class Harness:
    def __init__(self, sim):
        self.sim = sim
        self.fs = fake_freeswitch.bind(sim)
        self.be = switch.install(core.Core(sim.lib), self.fs)
        self.channels = []
        self.servers = []

    def call(self, rate=8000, ptime=20, read_hz=440, write_hz=1000, core_writing=0, speed=1.0, ticks=None,
             start=True, **variables):
        ch = self.sim.channel(rate=rate, ptime_ms=ptime)
        ch.set_tones(read_hz, write_hz, 8000)
        ch.set_core_writing(core_writing)
        for k, v in variables.items():
            ch.set_var(k, str(v))
        if start:
            ch.start(speed=speed, ticks=ticks)
        self.channels.append(ch)
        return ch

    def server(self, **kw):
        s = WSServer(**kw)
        self.servers.append(s)
        return s

    def api(self, line):
        stream = self.fs.Stream()
        audio_stream.fsapi("na", stream, None, line)
        return stream.get_data().strip()

    def start(self, ch, target, mix="mono", rate="8k", meta=None):
        """`start` on the call (it must answer +OK). `target`: a URL, or a server: then its first
        connection is returned."""
        line = "%s start %s %s %s" % (ch.uuid, getattr(target, "url", target), mix, rate)
        if meta:
            line += " " + meta
        assert self.api(line) == "+OK Success"
        return target.wait_conn() if hasattr(target, "wait_conn") else None

    def app(self, ch, args):
        audio_stream.handler(self.fs.Session(ch.uuid), args)

    def event(self, name, timeout=5.0, predicate=None):
        return self.fs.wait_for("mod_audio_stream::" + name, timeout=timeout, predicate=predicate)

    def events(self, name):
        return self.fs.fired("mod_audio_stream::" + name)

    def settle(self, timeout=5.0):
        """Wait until no stream is live or finishing."""
        return wait_until(lambda: not service.busy(), timeout)


def _abandon(harness):
    """After Ctrl-C: hang up, stop the loop and the servers, check nothing."""
    for step in [ch.hangup for ch in harness.channels if ch.state != 2] + [
            lambda: harness.settle(2.0), service.stop_loop] + [s.stop for s in harness.servers]:
        try:
            step()
        except Exception:
            pass


@pytest.fixture
def h(sim):
    threads_before = {t.ident for t in threading.enumerate()}
    fds_before = _fds()
    sim.set_strict_locking(True)     # the product reads its bugs only under the session's bug lock
    harness = Harness(sim)
    yield harness
    if support.interrupted.is_set():
        _abandon(harness)
        return
    for ch in harness.channels:
        if ch.state != 2:
            ch.hangup()
    assert harness.settle(), "streams still alive after every call hung up: %r" % (service.streams,)
    service.stop_loop()
    for s in harness.servers:
        s.stop()
    assert media.live_ports() == 0
    assert dtmf.live_ports() == 0, "DTMF ports left attached"
    assert sim.event_bindings() == 0, "event bindings left in place"
    assert sim.locks_outstanding() == 0, "session read locks leaked"
    assert sim.violations() == 0, sim.last_violation()
    sim.reset()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        extra = [t for t in threading.enumerate() if t.ident not in threads_before and t.is_alive()]
        if not extra:
            break
        time.sleep(0.05)
    assert not extra, "threads left running: %r" % extra
    leaked = _fds() - fds_before
    assert not leaked, "file descriptors left open: %r" % sorted(leaked)
