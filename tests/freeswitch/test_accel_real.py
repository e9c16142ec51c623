"""What a hostile or buggy server and a busy switch do to the media path, against a real FreeSWITCH
(skips without one, like every real-switch test). Written for the accelerated path (the default);
the same tests run on the pure-Python one after `global_setvar audio_stream_accel=false`.

After each test the switch must be as it was: the same process (no crash), no segfault in its log,
no stream left in `status`, no bug left on a call, the process's open file descriptors back to
where they were, and its memory not growing without bound."""
import asyncio
import base64
import collections
import contextlib
import glob
import json
import os
import random
import socket
import struct
import threading
import time

import numpy as np
import pytest

from ..support import WSServer, accept_ws_handshake, dominant_hz, drain, tone, ws_frame
from . import esl
from .conftest import api, HOST, MODULE, PASSWORD, PORT
from .test_playback_real import read_wav, record_b, segments, tmpwav  # noqa: F401 (a fixture)


def paced_originate(calls, n, app="&park()", dest="loopback/park/fstest", variables=""):
    out = []
    for _ in range(n):
        time.sleep(0.08)                # two sessions a call: stay under the stock 30 per second
        out.append(calls.originate(dest, app, variables))
    return out


def binary_tone(hz, rate, seconds):
    return tone(hz, rate, seconds).tobytes()


def stream_audio(x, rate):
    return json.dumps({"type": "streamAudio", "data": {"audioDataType": "raw", "sampleRate": rate,
                                                         "audioData": base64.b64encode(x).decode()}})


@contextlib.contextmanager
def serving(calls, server, until=None):
    """A scenario against `server`: whatever happens in it, the server's handlers are let go
    (`until`), the test's calls hung up, then the server stopped."""
    try:
        yield server
    finally:
        if until is not None:
            until.set()
        calls.hangup_all()
        server.stop()


# ---- the switch's health --------------------------------------------------------------------------

def _fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def _rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Health:
    """The switch process as a test found it, and the checks that it is so again afterwards."""

    BAD_LOG = ("segfault", "Segmentation fault", "SIGSEGV", "SIGABRT", "double free", "corrupted",
               "Traceback (most recent call last)")

    def __init__(self, fs):
        self.fs = fs
        run_dir = fs.api("global_getvar run_dir").strip()
        log_dir = fs.api("global_getvar log_dir").strip()
        try:
            with open(os.path.join(run_dir, "freeswitch.pid")) as f:
                self.pid = int(f.read().strip())
            _fd_count(self.pid)
        except (OSError, ValueError) as e:
            pytest.skip("cannot see the switch's process from here (%s): run inside its host" % e)
        self.log = os.path.join(log_dir, "freeswitch.log")
        self.log_at = os.path.getsize(self.log) if os.path.exists(self.log) else 0
        self.fds = _fd_count(self.pid)
        self.rss = _rss_kb(self.pid)

    def streams(self):
        return json.loads(api(self.fs, "status"))["streams"]

    def settle(self, timeout=15.0):
        """Wait until no stream is left and the descriptors are back; returns (streams, fds)."""
        deadline = time.monotonic() + timeout
        while True:
            streams = self.streams()
            fds = _fd_count(self.pid)
            if (not streams and fds <= self.fds) or time.monotonic() > deadline:
                return streams, fds
            time.sleep(0.2)

    def log_since(self):
        try:
            with open(self.log, "rb") as f:
                f.seek(self.log_at)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def check(self, calls, timeout=15.0):
        """The test's calls that are still up carry no bug of ours; once they are hung up, the
        switch is as the test found it. Returns how much its RSS grew (KB)."""
        assert os.path.exists("/proc/%d" % self.pid), "the switch (pid %d) is gone" % self.pid
        assert "is ready" in self.fs.api("status")
        deadline = time.monotonic() + timeout
        while self.streams() and time.monotonic() < deadline:
            time.sleep(0.2)
        for u in calls.uuids:
            if calls.exists(u):
                assert "audio_stream" not in self.fs.api("uuid_buglist %s" % u), "a bug was left on %s" % u
        calls.hangup_all()
        while any(calls.exists(u) for u in calls.uuids) and time.monotonic() < deadline:
            time.sleep(0.1)
        streams, fds = self.settle(max(1.0, deadline - time.monotonic()))
        assert not streams, "streams left: %r" % streams
        assert fds <= self.fds, "the switch holds %d descriptors, %d before the test:\n%s" % (
            fds, self.fds, "\n".join(sorted(_fd_links(self.pid))))
        log = self.log_since()
        bad = [ln for ln in log.splitlines() if any(b in ln for b in self.BAD_LOG)]
        assert not bad, "the switch's log says:\n%s" % "\n".join(bad[:20])
        return _rss_kb(self.pid) - self.rss


def _fd_links(pid):
    out = []
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            out.append("%s -> %s" % (fd, os.readlink("/proc/%d/fd/%s" % (pid, fd))))
        except OSError:
            pass
    return out


_warm = {}


@pytest.fixture
def health(fs, calls):
    """The switch before the test (after one stream has run: the loop, its pipes and the pass workers
    exist for good from the first stream on), checked again by the test."""
    if "done" not in _warm:
        server = WSServer()
        try:
            ((a, _),) = paced_originate(calls, 1)
            assert api(fs, "%s start %s mono 16k" % (a, server.url)) == "+OK Success"
            server.wait_conn()
            time.sleep(0.3)
            _warm["path"] = _path_of(fs, a)
            api(fs, "%s stop" % a)
            fs.api("uuid_kill %s" % a)
            time.sleep(0.5)
        finally:
            server.stop()
        _warm["done"] = True
    h = Health(fs)
    print("media path of new streams: %s" % _warm["path"])
    return h


def _path_of(fs, u):
    doc = json.loads(api(fs, "%s status" % u))
    return doc["streams"][0]["path"] if doc.get("streams") else None


def _start_all(fs, legs, url, mix):
    for a, _ in legs:
        assert api(fs, "%s start %s %s" % (a, url, mix)) == "+OK Success"


def _hang_up_and_check(fs, calls, health, legs):
    for a, _ in legs:
        fs.api("uuid_kill %s" % a)
    return health.check(calls)


# ---- a raw WebSocket server (frames by hand), any number of connections ------------------------------

class RawServer:
    """Completes the WebSocket handshake of each connection by hand and hands the socket to
    `serve(sock, n)` on its own thread (n: 0 for the first connection)."""

    def __init__(self, serve):
        self.serve = serve
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.port = self.lsock.getsockname()[1]
        self.done = threading.Event()
        self.threads = []
        self.socks = []
        self.received = []          # bytes read per connection (when serve reads through read_frames)
        self.t = threading.Thread(target=self._accept, daemon=True)
        self.t.start()

    @property
    def url(self):
        return "ws://127.0.0.1:%d/raw" % self.port

    def _accept(self):
        n = 0
        while not self.done.is_set():
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            self.socks.append(c)
            t = threading.Thread(target=self._one, args=(c, n), daemon=True)
            n += 1
            t.start()
            self.threads.append(t)

    def _one(self, c, n):
        try:
            c.settimeout(10)
            if accept_ws_handshake(c):
                self.serve(c, n)
        except OSError:
            pass
        finally:
            try:
                c.close()
            except OSError:
                pass

    def stop(self):
        self.done.set()
        self.lsock.close()
        for c in self.socks:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self.threads:
            t.join(5)


# ---- 1. start/stop storms ----------------------------------------------------------------------------

STORM_REPLIES = ("+OK Success",)


def _chatty(seconds=0.2):
    """A server that plays `seconds` of audio every `seconds`, with a mark, while connected."""
    audio = stream_audio(binary_tone(700, 8000, seconds), 8000)

    async def talk(conn, server):
        async def go():
            try:
                while not conn.ws.closed:
                    await conn.ws.send_str(audio)
                    await conn.ws.send_str('{"type":"mark","data":{"name":"m"}}')
                    await asyncio.sleep(seconds)
            except Exception:
                pass
        asyncio.ensure_future(go())
    return talk


@pytest.fixture
def chatty(calls):
    """A server that plays 100 ms of audio and a mark every 100 ms while connected; the test's calls
    are hung up and the server stopped afterwards."""
    with serving(calls, WSServer(on_connect=_chatty(0.1))) as server:
        yield server


def test_start_stop_storm_on_one_call(fs, calls, chatty, health):
    server = chatty
    rng = random.Random(3)
    ((a, b),) = paced_originate(calls, 1)
    for i in range(40):
        mix = rng.choice(["mono 16k", "mono 8k", "mixed 8k", "stereo 16k"])
        reply = api(fs, "%s start %s %s" % (a, server.url, mix))
        assert reply == "+OK Success", (i, reply)
        time.sleep(rng.uniform(0, 0.06))
        assert api(fs, "%s stop" % a) == "+OK Success"
    assert server.wait_for(lambda: len(server.conns) >= 30, 10), len(server.conns)
    assert server.wait_for(lambda: all(c.closed.is_set() for c in server.conns), 10)
    health.check(calls)


def test_start_stop_storm_across_20_calls(fs, calls, chatty, health):
    server = chatty
    legs = [a for a, _ in paced_originate(calls, 20)]
    errors = []

    def storm(mine, seed):
        rng = random.Random(seed)
        c = esl.Connection(HOST, PORT, PASSWORD)
        try:
            for _ in range(5):
                for u in mine:
                    r = c.api("python %s %s start %s %s" % (MODULE, u, server.url, rng.choice(["mono 16k", "stereo 8k"])))
                    if r != "+OK Success":
                        errors.append(("start", u, r))
                time.sleep(rng.uniform(0, 0.1))
                for u in mine:
                    r = c.api("python %s %s stop" % (MODULE, u))
                    if r != "+OK Success":
                        errors.append(("stop", u, r))
        finally:
            c.close()

    threads = [threading.Thread(target=storm, args=(legs[i::4], i)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:5]
    health.check(calls)


# ---- 2. hangup in the middle of playback, of a clear, of a mark --------------------------------------


def _hangup_while(fs, calls, health, kind, mix):
    pcm = binary_tone(700, 8000, 0.1)

    async def act(conn, server):
        async def go():
            try:
                if kind == "playback":
                    await conn.ws.send_bytes(binary_tone(700, 8000, 3.0))
                while not conn.ws.closed:
                    if kind == "clear":
                        await conn.ws.send_bytes(pcm)
                        await conn.ws.send_str('{"type":"killAudio"}')
                    elif kind == "mark":
                        await conn.ws.send_bytes(pcm)
                        await conn.ws.send_str('{"type":"mark","data":{"name":"m"}}')
                    await asyncio.sleep(0.005)
            except Exception:
                pass
        asyncio.ensure_future(go())

    server = WSServer(on_connect=act)
    rng = random.Random(kind)
    with serving(calls, server):
        legs = paced_originate(calls, 6)
        for a, _ in legs:
            assert api(fs, "%s start %s %s 8k" % (a, server.url, mix)) == "+OK Success"
        server.wait_conn(6)
        time.sleep(0.3)
        for i, (a, b) in enumerate(legs):
            time.sleep(rng.uniform(0, 0.1))
            fs.api("uuid_kill %s" % (a if i % 2 else b))
        assert server.wait_for(lambda: all(c.closed.is_set() for c in server.conns), 10)
        health.check(calls)


@pytest.mark.parametrize("kind", ["playback", "clear", "mark"])
@pytest.mark.parametrize("mix", ["mono", "stereo"])
def test_hangup_in_the_middle_of(fs, calls, health, kind, mix):
    _hangup_while(fs, calls, health, kind, mix)


# ---- 3. what the server sends: huge, fragmented, too fast, odd, interleaved -------------------------

def test_huge_binary_frames(fs, calls, events, health):
    """Just under STREAM_MAX_MESSAGE (longer than the playback buffer: refused), over it (dropped),
    then over four times it: the connection is closed with 1009, for good (docs/protocol.md)."""
    sizes = [3 * 1024 * 1024, 5 * 1024 * 1024, 17 * 1024 * 1024]

    async def big(conn, server):
        for n in sizes:
            try:
                await conn.ws.send_bytes(b"\x01\x02" * (n // 2))
            except Exception:
                return

    def body_has(text):
        return lambda e: text in (e.get("_body") or "")

    server = WSServer(on_connect=big)
    with serving(calls, server):
        ((a, b),) = paced_originate(calls, 1, variables="STREAM_PLAYBACK_BUFFER=10000")
        assert api(fs, "%s start %s mono 16k" % (a, server.url)) == "+OK Success"
        conn = server.wait_conn()
        assert events.wait("mod_audio_stream::error", a, 15, body_has("longer than STREAM_PLAYBACK_BUFFER")), \
            [e.get("_body") for e in events.all(uuid=a)]
        assert events.wait("mod_audio_stream::error", a, 15, body_has("over STREAM_MAX_MESSAGE")), \
            [e.get("_body") for e in events.all(uuid=a)]
        assert conn.closed.wait(15) and conn.close_code == 1009, conn.close_code
        time.sleep(0.5)
        assert len(server.conns) == 1, "reconnected after a close with 1009"
        grew = health.check(calls)
        assert grew < 64 * 1024, "the switch grew %d KB" % grew


def test_fragmented_and_odd_length_binary_frames_play_intact(fs, calls, events, health, tmpwav):  # noqa: F811
    """2 s of 600 Hz, sent as binary messages of odd lengths, each in fragments with a ping between
    them: what B hears is the tone, not noise (an odd byte misplaced would turn it into noise)."""
    pcm = binary_tone(600, 8000, 2.0)
    until = threading.Event()

    def serve(c, n):
        rng = random.Random(5)
        time.sleep(0.3)
        i = 0
        out = bytearray()
        while i < len(pcm):
            m = rng.choice([1, 3, 161, 321, 999])
            msg = pcm[i:i + m]
            i += m
            parts = [msg[k:k + 50] for k in range(0, len(msg), 50)] or [b""]
            for k, part in enumerate(parts):
                first, last = k == 0, k == len(parts) - 1
                out += ws_frame(part, 0x2 if first else 0x0, fin=last)
                if not last and k == 1:
                    out += ws_frame(b"p", 0x9)            # a control frame between fragments
            out += ws_frame(b"", 0x2)                     # an empty message now and then
        c.sendall(bytes(out))
        drain(c, until)

    server = RawServer(serve)
    with serving(calls, server, until):
        ((a, b),) = paced_originate(calls, 1)
        record_b(fs, b, tmpwav)
        assert api(fs, "%s start %s mono 8k" % (a, server.url)) == "+OK Success"
        assert events.wait("mod_audio_stream::playback_started", a, timeout=5) is not None
        assert events.wait("mod_audio_stream::playback_stopped", a, timeout=8) is not None
        time.sleep(0.3)
        api(fs, "%s stop" % a)
        fs.api("uuid_record %s stop %s" % (b, tmpwav))
        time.sleep(0.3)
        x, rate = read_wav(tmpwav)
        heard = segments(x, rate, 600)
        assert 1.7 <= heard <= 2.3, heard
        fs.api("uuid_kill %s" % a)
        until.set()
        health.check(calls)


def test_a_text_frame_inside_a_fragmented_binary_message_fails_the_connection(fs, calls, events, health):
    until = threading.Event()

    def serve(c, n):
        time.sleep(0.2)
        c.sendall(ws_frame(b"\x00\x01" * 50, 0x2, fin=False) + ws_frame(b'{"type":"x"}', 0x1) +
                  ws_frame(b"\x00\x01" * 50, 0x0))
        drain(c, until)

    server = RawServer(serve)
    with serving(calls, server, until):
        ((a, b),) = paced_originate(calls, 1, variables="STREAM_RECONNECT_ATTEMPTS=1")
        assert api(fs, "%s start %s mono 16k" % (a, server.url)) == "+OK Success"
        ev = events.wait("mod_audio_stream::reconnecting", a, timeout=10) or \
            events.wait("mod_audio_stream::disconnect", a, timeout=1) or events.wait("mod_audio_stream::error", a, 1)
        assert ev is not None, [e.get("_body") for e in events.all(uuid=a)]
        fs.api("uuid_kill %s" % a)
        until.set()
        health.check(calls)


def test_binary_at_ten_times_real_time_stays_bounded(fs, calls, events, health):
    """200 ms of audio every 20 ms into a 2 s playback buffer: the queue never holds more than the
    buffer, what does not fit is refused, and a server that keeps at it is closed with 1008 (more
    than 100 unusable messages within 10 s, docs/protocol.md)."""
    chunk = binary_tone(700, 16000, 0.2)

    async def fast(conn, server):
        async def go():
            try:
                for _ in range(300):
                    if conn.ws.closed:
                        return
                    await conn.ws.send_bytes(chunk)
                    await asyncio.sleep(0.02)
            except Exception:
                pass
        asyncio.ensure_future(go())

    server = WSServer(on_connect=fast)
    with serving(calls, server):
        legs = paced_originate(calls, 3, variables="STREAM_PLAYBACK_BUFFER=2000")
        _start_all(fs, legs, server.url, "mono 16k")
        worst, played = 0, 0
        t_end = time.monotonic() + 8
        while time.monotonic() < t_end:
            docs = [json.loads(api(fs, "%s status" % a))["streams"] for a, _ in legs]
            if not any(docs):
                break
            for d in docs:
                if d:
                    worst = max(worst, d[0]["playback_queued_ms"])
                    played = max(played, d[0]["frames_played"])
            time.sleep(0.05)
        assert 1000 <= worst <= 2000, worst
        assert played > 0
        for a, _ in legs:
            assert events.wait("mod_audio_stream::error", a, timeout=2,
                               predicate=lambda e: "playback queue full" in (e.get("_body") or "")) is not None
        assert server.wait_for(lambda: all(c.closed.is_set() for c in server.conns), 5)
        assert [c.close_code for c in server.conns] == [1008] * 3
        health.check(calls)


def test_interleaved_text_and_binary_keep_their_order(fs, calls, health):
    """Binary audio, a mark, a text the switch does not know, in turns: every mark is acknowledged,
    in order, and the unknown texts become json events (counted by the status)."""
    pcm = binary_tone(700, 8000, 0.04)

    async def mix(conn, server):
        for i in range(50):
            await conn.ws.send_bytes(pcm)
            await conn.ws.send_str('{"type":"mark","data":{"name":"m%d"}}' % i)
            await conn.ws.send_str('{"type":"transcript","n":%d}' % i)

    server = WSServer(on_connect=mix)
    with serving(calls, server):
        ((a, b),) = paced_originate(calls, 1)
        assert api(fs, "%s start %s mono 8k" % (a, server.url)) == "+OK Success"
        conn = server.wait_conn()
        assert server.wait_for(lambda: sum('"mark"' in t for t in conn.texts) >= 50, 10), conn.texts[-3:]
        names = [json.loads(t)["data"]["name"] for t in conn.texts if '"mark"' in t]
        assert names == ["m%d" % i for i in range(50)], names
        fs.api("uuid_kill %s" % a)
        health.check(calls)


# ---- 4. the server goes away or stops reading while the direct path sends -----------------------------

def test_server_resets_while_the_direct_path_sends(fs, calls, events, health):
    """mono 16k on plain ws:// is the direct path (C writes to a dup of the socket): the server
    resets the connection again and again while audio flows. Every dup is closed in the end."""
    async def reset_soon(conn, server):
        async def go():
            await asyncio.sleep(random.uniform(0.2, 0.5))
            t = conn.request.transport
            if t is not None:
                t.abort()
        asyncio.ensure_future(go())

    server = WSServer(on_connect=reset_soon)
    with serving(calls, server):
        legs = paced_originate(calls, 4, variables="STREAM_RECONNECT_ATTEMPTS=50")
        for a, _ in legs:
            assert api(fs, "%s start %s mono 16k" % (a, server.url)) == "+OK Success"
            assert _path_of(fs, a) in ("accel", "python")
        assert server.wait_for(lambda: len(server.conns) >= 12, 20), len(server.conns)
        _hang_up_and_check(fs, calls, health, legs)


def test_server_closes_while_the_direct_path_sends(fs, calls, health):
    """The same with a clean close (1000 from the server) and with a half-close (FIN, no close
    frame) while the audio flows."""
    def serve(c, n):
        c.settimeout(5)
        t_end = time.monotonic() + random.uniform(0.2, 0.5)
        while time.monotonic() < t_end:
            try:
                c.recv(65536)
            except OSError:
                return
        if n % 2:
            c.sendall(ws_frame(struct.pack(">H", 1000), 0x8))
        c.shutdown(socket.SHUT_WR)
        t_end = time.monotonic() + 1
        while time.monotonic() < t_end:
            try:
                if not c.recv(65536):
                    return
            except OSError:
                return

    server = RawServer(serve)
    with serving(calls, server):
        legs = paced_originate(calls, 4, variables="STREAM_RECONNECT_ATTEMPTS=50")
        _start_all(fs, legs, server.url, "mono 16k")
        time.sleep(4)
        _hang_up_and_check(fs, calls, health, legs)


def test_server_that_stops_reading_while_playback_runs(fs, calls, health):
    """The server sends 5 s of audio to play and never reads again (its TCP window fills): the
    call plays, the capture's bounded buffers hold, the hangup lets go within 5 s."""
    until = threading.Event()
    audio = stream_audio(binary_tone(700, 16000, 5.0), 16000).encode()

    def serve(c, n):
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        c.sendall(ws_frame(audio, 0x1))
        until.wait(30)

    server = RawServer(serve)
    with serving(calls, server, until):
        legs = paced_originate(calls, 2)
        _start_all(fs, legs, server.url, "mono 16k")
        time.sleep(4)
        for a, _ in legs:
            doc = json.loads(api(fs, "%s status" % a))["streams"][0]
            assert doc["frames_played"] > 0 or doc["playback"] != "idle", doc
        t0 = time.monotonic()
        for a, _ in legs:
            fs.api("uuid_kill %s" % a)
        deadline = t0 + 6
        while time.monotonic() < deadline and health.streams():
            time.sleep(0.1)
        assert not health.streams(), "still there %.1f s after the hangup" % (time.monotonic() - t0)
        until.set()
        health.check(calls)


# ---- 5. churn -------------------------------------------------------------------------------------------

def _churn(fs, calls, server, n, rng):
    for i in range(n):
        time.sleep(0.07)
        a, b = calls.originate("loopback/park/fstest", "&park()")
        reply = api(fs, "%s start %s %s" % (a, server.url, rng.choice(["mono 16k", "mono 8k", "stereo 16k"])))
        assert reply == "+OK Success", reply
        time.sleep(rng.uniform(0, 0.05))
        fs.api("uuid_kill %s" % (a if i % 2 else b))
    calls.uuids.clear()


def test_200_quick_calls_churn(fs, calls, chatty, health):
    server = chatty
    rng = random.Random(200)
    _churn(fs, calls, server, 100, rng)
    health.settle(20)
    mid = _rss_kb(health.pid)
    _churn(fs, calls, server, 100, rng)
    grew = health.check(calls, timeout=20)
    second = _rss_kb(health.pid) - mid
    print("RSS: +%d KB over 200 calls, +%d KB over the second 100" % (grew, second))
    assert second < 16 * 1024, "the switch grew %d KB over the second 100 calls" % second


# ---- 6. more of a busy switch: named streams, commands, bridges, other bugs, rates, many calls ------------


def test_handshake_that_never_completes_then_stop_and_hangup(fs, calls, health):
    held = []
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(64)
    done = threading.Event()

    def accept():
        while not done.is_set():
            try:
                c, _ = lsock.accept()
            except OSError:
                return
            held.append(c)
    t = threading.Thread(target=accept, daemon=True)
    t.start()
    url = "ws://127.0.0.1:%d/never" % lsock.getsockname()[1]
    try:
        legs = paced_originate(calls, 6)
        _start_all(fs, legs, url, "mono 16k")
        time.sleep(1.0)
        for i, (a, b) in enumerate(legs):
            if i % 2:
                assert api(fs, "%s stop" % a) == "+OK Success"
            else:
                fs.api("uuid_kill %s" % a)
        health.check(calls)
    finally:
        done.set()
        lsock.close()
        for c in held:
            c.close()


def test_three_named_streams_on_one_call_hangup_while_playing(fs, calls, chatty, health):
    server = chatty
    for rnd in range(5):
        ((a, b),) = paced_originate(calls, 1)
        for i, mix in enumerate(["mono 16k", "stereo 8k", "mixed 16k"]):
            r = api(fs, "%s start name=s%d %s %s" % (a, i, server.url, mix))
            assert r == "+OK Success", r
        time.sleep(random.uniform(0.3, 0.8))
        fs.api("uuid_kill %s" % (a if rnd % 2 else b))
    health.check(calls)


def test_pause_resume_storm_while_playing(fs, calls, chatty, health):
    server = chatty
    rng = random.Random(7)
    legs = paced_originate(calls, 4)
    _start_all(fs, legs, server.url, "stereo 16k")
    server.wait_conn(4)
    for _ in range(60):
        a, _ = rng.choice(legs)
        cmd = rng.choice(["pause", "resume", "playback_pause", "playback_resume", "playback_clear"])
        r = api(fs, "%s %s" % (a, cmd))
        assert r.startswith("+OK"), (cmd, r)
        time.sleep(rng.uniform(0, 0.03))
    for a, b in legs:
        fs.api("uuid_kill %s" % a)
    health.check(calls)


def test_bridge_and_unbridge_while_playing(fs, calls, chatty, health):
    server = chatty
    for rnd in range(3):
        (a, b), (c, d) = paced_originate(calls, 2)
        assert api(fs, "%s start %s stereo 8k" % (a, server.url)) == "+OK Success"
        time.sleep(0.5)
        assert fs.api("uuid_bridge %s %s" % (a, c)).startswith("+OK")
        time.sleep(0.5)
        fs.api("uuid_transfer %s park inline" % a)
        time.sleep(0.5)
        assert _path_of(fs, a) in ("accel", "python")
        fs.api("uuid_kill %s" % a)
        fs.api("uuid_kill %s" % c)
    health.check(calls)


def test_other_bugs_on_the_call_while_playing(fs, calls, chatty, health):
    server = chatty
    try:
        for rnd in range(3):
            ((a, b),) = paced_originate(calls, 1, app="&endless_playback(tone_stream://%(60000,0,300))",
                                        dest="loopback/park/fstest")
            assert api(fs, "%s start %s mono 16k" % (a, server.url)) == "+OK Success"
            fs.api("uuid_record %s start /tmp/accel-real-other-%s.wav" % (a, a))
            fs.api("uuid_displace %s start tone_stream://%%(60000,0,500) 0 mux" % a)
            time.sleep(0.7)
            fs.api("uuid_break %s" % a)
            time.sleep(0.5)
            fs.api("uuid_displace %s stop" % a)
            time.sleep(0.3)
            fs.api("uuid_kill %s" % a)
        health.check(calls)
    finally:
        for f in glob.glob("/tmp/accel-real-other-*.wav"):
            os.unlink(f)


def test_stop_while_the_server_does_not_read_direct_path(fs, calls, health):
    until = threading.Event()

    def serve(c, n):
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        until.wait(30)

    server = RawServer(serve)
    with serving(calls, server, until):
        legs = paced_originate(calls, 3)
        _start_all(fs, legs, server.url, "mono 16k")
        time.sleep(4)
        t0 = time.monotonic()
        for a, _ in legs:
            assert api(fs, "%s stop" % a) == "+OK Success"
        while time.monotonic() - t0 < 6 and health.streams():
            time.sleep(0.1)
        assert not health.streams(), time.monotonic() - t0
        until.set()
        health.check(calls)


@pytest.mark.parametrize("codec", ["L16@16000h@20i", "PCMU@8000h@30i", "L16@16000h@10i", "L16@48000h@20i", "L16@32000h@40i"])
def test_other_call_rates_and_ptimes(fs, calls, chatty, health, codec):
    server = chatty
    fs.api("global_setvar loopback_initial_codec=%s" % codec)     # a channel variable comes too late
    try:
        legs = paced_originate(calls, 2)
        fs.api("global_setvar loopback_initial_codec=")
        for (a, _), mix in zip(legs, ["stereo 16k", "mixed 8k"]):
            assert api(fs, "%s start %s %s" % (a, server.url, mix)) == "+OK Success"
        server.wait_conn(2)
        time.sleep(1.5)
        for (a, _) in legs:
            doc = json.loads(api(fs, "%s status" % a))["streams"][0]
            print(codec, doc["call_rate"], doc["frames_captured"], doc["frames_played"], doc["bytes_sent"])
        for (a, _) in legs:
            fs.api("uuid_kill %s" % a)
        health.check(calls)
    finally:
        fs.api("global_setvar loopback_initial_codec=")


def test_twelve_busy_calls_each_get_all_their_audio(fs, calls, chatty, health):
    """12 calls at once (a capture pass then shares the work with its worker threads): each
    server gets the caller's 440 Hz on the left, as many seconds as the stream lasted, while
    the server's audio plays into the call."""
    server = chatty
    legs = paced_originate(calls, 12, dest="loopback/tone/fstest")
    t_start = {}
    for a, _ in legs:
        t_start[a] = time.monotonic()             # no audio can be older than this
        assert api(fs, "%s start %s stereo 16k" % (a, server.url)) == "+OK Success"
    server.wait_conn(12)
    time.sleep(4)
    lasted = {}
    for a, _ in legs:
        assert api(fs, "%s stop" % a) == "+OK Success"
        lasted[a] = time.monotonic() - t_start[a]
    assert server.wait_for(lambda: all(c.closed.is_set() for c in server.conns), 10)
    shortest, longest = min(lasted.values()), max(lasted.values())
    for conn in server.conns:            # (in the order they connected, not necessarily started)
        x = conn.audio().reshape(-1, 2)
        secs = len(x) / 16000.0
        left = x[:, 0]
        hits = sum(abs(dominant_hz(left[i:i + 1600], 16000) - 440) < 15 for i in range(0, len(left) - 1600, 1600))
        print("%.2f s of audio for %.2f-%.2f s of stream; 440 Hz in %d of %d blocks"
              % (secs, shortest, longest, hits, len(left) // 1600))
        assert shortest - 0.4 <= secs <= longest + 0.03, (secs, shortest, longest)
        assert hits >= 0.7 * (len(left) // 1600)
    health.check(calls)


def test_rolling_churn_with_playback(fs, calls, chatty, health):
    server = chatty
    rng = random.Random(9)
    window = collections.deque()
    rss = []
    for i in range(240):
        time.sleep(0.07)
        a, b = calls.originate("loopback/tone/fstest" if i % 2 else "loopback/park/fstest", "&park()")
        r = api(fs, "%s start %s %s" % (a, server.url, rng.choice(["mono 16k", "stereo 16k", "mixed 8k"])))
        assert r == "+OK Success", r
        window.append((a, b))
        if len(window) > 10:
            x, y = window.popleft()
            if rng.random() < 0.3:
                api(fs, "%s stop" % x)
            fs.api("uuid_kill %s" % (x if rng.random() < 0.5 else y))
        if i % 80 == 79:
            rss.append(_rss_kb(health.pid))
    print("RSS after each 80 calls: %r KB" % rss)
    for x, _ in window:
        fs.api("uuid_kill %s" % x)
    health.check(calls, timeout=20)
    assert rss[-1] - rss[-2] < 8 * 1024, rss


def parse_client_frames(buf):
    """Complete masked client frames at the start of buf: ([(opcode, fin, payload)], rest). Raises on
    anything a client must not send."""
    out = []
    i = 0
    while True:
        if len(buf) - i < 2:
            break
        b0, b1 = buf[i], buf[i + 1]
        fin, op, masked, n = b0 >> 7, b0 & 0x0F, b1 >> 7, b1 & 0x7F
        assert b0 & 0x70 == 0, "RSV bits set: %r" % buf[i:i + 16]
        assert op in (0, 1, 2, 8, 9, 10), "opcode %d at %d" % (op, i)
        assert masked, "unmasked client frame"
        j = i + 2
        if n == 126:
            if len(buf) - j < 2:
                break
            n = struct.unpack(">H", buf[j:j + 2])[0]
            j += 2
        elif n == 127:
            if len(buf) - j < 8:
                break
            n = struct.unpack(">Q", buf[j:j + 8])[0]
            j += 8
        if len(buf) - j < 4 + n:
            break
        key = buf[j:j + 4]
        j += 4
        payload = bytes(b ^ key[k & 3] for k, b in enumerate(buf[j:j + n])) if op != 2 else \
            (np.frombuffer(buf[j:j + n], np.uint8) ^ np.resize(np.frombuffer(key, np.uint8), n)).tobytes()
        out.append((op, fin, payload))
        i = j + n
    return out, buf[i:]


def test_a_slow_reader_gets_whole_frames_in_order(fs, calls, health):
    """The server reads slower than the stream for 3 s, then catches up for 1 s, again and again:
    the direct path turns off (a short send, the outbox) and on again; every frame the server gets
    is a whole, valid frame, the metadata first, no chunk twice."""
    until = threading.Event()
    got = {}

    def serve(c, n):
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        c.settimeout(0.5)
        buf = b""
        frames = got.setdefault(n, [])
        try:
            while not until.is_set():
                try:
                    slow = int(time.monotonic()) % 4      # 3 s at ~10 KB/s, then 1 s at full speed
                    d = c.recv(512 if slow else 65536)
                except socket.timeout:
                    continue
                if not d:
                    break
                buf += d
                fr, buf = parse_client_frames(buf)
                frames.extend(fr)
                if any(op == 8 for op, _, _ in fr):
                    c.sendall(ws_frame(struct.pack(">H", 1000), 0x8))
                    break
                time.sleep(0.05 if slow else 0)
        except AssertionError as e:
            frames.append(("bad", str(e), b""))

    server = RawServer(serve)
    with serving(calls, server, until):
        legs = paced_originate(calls, 3, dest="loopback/tone/fstest")
        t0 = time.monotonic()
        for a, _ in legs:
            assert api(fs, "%s start %s mono 16k {\"call\":\"%s\"}" % (a, server.url, a)) == "+OK Success"
        time.sleep(7)
        for a, _ in legs:
            doc = json.loads(api(fs, "%s status" % a))["streams"][0]
            print("sent %d bytes, %d ms dropped, %d messages" % (doc["bytes_sent"], doc["dropped_ms"], doc["messages_sent"]))
            fs.api("uuid_kill %s" % a)
        lasted = time.monotonic() - t0
        time.sleep(1)
        until.set()
        for n, frames in got.items():
            bad = [f for f in frames if f[0] == "bad"]
            assert not bad, bad
            assert frames and frames[0][0] == 1, frames[:1]
            assert json.loads(frames[0][2].decode())["call"] in dict(legs)       # the metadata first
            sizes = [len(p) for op, _, p in frames if op == 2]
            print("got %d frames, %d bytes of audio" % (len(frames), sum(sizes)))
            assert set(sizes) == {640}, set(sizes)
            assert sum(sizes) <= 32000 * (lasted + 0.1), (sum(sizes), lasted)   # (the hangup is not instant)
            audio = [p for op, _, p in frames if op == 2]
            twice = [i for i in range(1, len(audio)) if audio[i] == audio[i - 1]
                     and np.abs(np.frombuffer(audio[i], "<i2")).max() > 100]
            assert not twice, "the same chunk twice in a row at %r" % twice[:5]
        health.check(calls)
