"""Limits that hold whatever the server does, against a real FreeSWITCH (skips without one):
control-frame floods, servers that accept and drop every connection, a stream that must let go
after the hangup with a big text queued, secrets in URLs, a blackholed connection, a command line
that is not UTF-8, and start/stop/status/graceful-shutdown racing from two event sockets."""
import json
import os
import random
import shutil
import socket
import subprocess
import threading
import time

import pytest

from ..support import CONTROL_FLOODS, WSServer, drain, flooding_server, raw_ws_server, worst_gap
from . import esl
from .conftest import api, HOST, MODULE, PASSWORD, PORT

SECRET = "ws://alice:s3cretpw@127.0.0.1:%d/s?token=t0psecret"




@pytest.fixture
def logs(fs):
    listener = esl.EventListener(None, HOST, PORT, PASSWORD, subscribe="log 7", content_type="log/data")
    yield listener
    listener.close()


def paced_originate(calls, n, app="&park()"):
    out = []
    for _ in range(n):
        time.sleep(0.1)                 # two sessions a call: stay under the stock 30 per second
        out.append(calls.originate("loopback/tone/fstest", app)[0])
    return out


# ---- 1. one server's control frames must not delay the other calls --------------------------------

@pytest.mark.parametrize("kind", list(CONTROL_FLOODS))
def test_a_control_frame_flood_does_not_delay_the_other_calls(fs, calls, kind):
    lsock, t, stop = flooding_server(CONTROL_FLOODS[kind])
    quiet = WSServer()
    try:
        noisy, *others = paced_originate(calls, 4)
        assert api(fs, "%s start ws://127.0.0.1:%d/ mono 8k" % (noisy, lsock.getsockname()[1])) == "+OK Success"
        for u in others:
            assert api(fs, "%s start %s mono 8k" % (u, quiet.url)) == "+OK Success"
        quiet.wait_conn(3)
        time.sleep(1.0)
        worst = worst_gap(quiet.conns[:3], 3)
        assert worst <= 0.100, "another call's audio was delayed %d ms" % (worst * 1000)
    finally:
        stop.set()
        calls.hangup_all()
        quiet.stop()
        lsock.close()
        t.join(5)


# ---- 2. accept-then-close: bounded by the limits --------------------------------------------------

def test_a_server_that_accepts_and_drops_every_connection_is_bounded(fs, calls, events):
    async def drop(conn, server):
        await conn.ws.close(code=1011, message=b"busy")

    server = WSServer(on_connect=drop)
    try:
        legs = paced_originate(calls, 5)
        for u in legs:
            fs.api("uuid_setvar %s STREAM_RECONNECT_ATTEMPTS 2" % u)
            assert api(fs, "%s start %s mono 8k" % (u, server.url)) == "+OK Success"
        for u in legs:
            ev = events.wait("mod_audio_stream::error", u, timeout=20)
            assert ev is not None, "stream on %s still reconnecting" % u
            assert "gave up after 2 attempts" in json.loads(ev["_body"])["message"]["error"]
        time.sleep(1.0)
        assert len(server.conns) <= 5 * 3
    finally:
        server.stop()


# ---- 3. after hangup a stream lets go within 5 s, whatever is queued ------------------------------

def test_hangup_lets_go_within_5_s_with_a_big_text_queued(fs, calls):
    """The server asks for a mark with a 400 KB name and stops reading: our answer (a 400 KB
    text) can never be sent. The hangup still ends the stream within 5 s."""
    held, closed = [], threading.Event()

    def stall(c):
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        msg = json.dumps({"type": "mark", "data": {"name": "m" * 400000}}).encode()
        c.sendall(bytes([0x81, 127]) + len(msg).to_bytes(8, "big") + msg)
        held.append(c)
        closed.wait(30)
        c.close()

    lsock, t = raw_ws_server(stall)
    try:
        (u,) = paced_originate(calls, 1)
        assert api(fs, "%s start ws://127.0.0.1:%d/ mono 8k" % (u, lsock.getsockname()[1])) == "+OK Success"
        time.sleep(2.0)
        t0 = time.monotonic()
        fs.api("uuid_kill %s" % u)
        deadline = t0 + 6
        while time.monotonic() < deadline:
            doc = json.loads(api(fs, "status"))
            if not doc["streams"]:
                break
            time.sleep(0.1)
        assert not doc["streams"], "still there %.1f s after the hangup: %r" % (time.monotonic() - t0, doc)
        assert time.monotonic() - t0 < 5.5
    finally:
        closed.set()
        lsock.close()
        t.join(5)


def test_graceful_shutdown_then_hangup_lets_go_and_fires_no_json(fs, calls, events):
    import asyncio

    async def chatter(conn, server):
        async def talk():
            while not conn.ws.closed:
                await conn.ws.send_str('{"type":"transcript"}')
                await asyncio.sleep(0.05)
        asyncio.ensure_future(talk())

    server = WSServer(on_connect=chatter)
    try:
        (u,) = paced_originate(calls, 1)
        fs.api("uuid_setvar %s STREAM_GRACEFUL_TIMEOUT 60" % u)
        assert api(fs, "%s start %s mono 8k" % (u, server.url)) == "+OK Success"
        conn = server.wait_conn()
        assert api(fs, "%s graceful-shutdown" % u) == "+OK Success"
        time.sleep(0.5)
        t0 = time.time()
        fs.api("uuid_kill %s" % u)
        assert conn.closed.wait(5) and conn.close_code == 1000
        time.sleep(0.5)
        late = [e for e in events.all("mod_audio_stream::json", u) if e["_received"] > t0 + 0.2]
        assert not late, "%d json events after the hangup" % len(late)
    finally:
        server.stop()


# ---- 4. no secret in the log or the events ---------------------------------------------------------

def test_no_secret_in_log_or_events(fs, calls, events, logs):
    server = WSServer()
    try:
        a, b = paced_originate(calls, 2)
        free = socket.socket()
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
        free.close()
        assert api(fs, "%s start %s mono 8k" % (a, SECRET % port)) == "+OK Success"       # cannot connect
        assert events.wait("mod_audio_stream::error", a) is not None
        assert api(fs, "%s start %s mono 8k" % (b, SECRET % server.port)) == "+OK Success"
        conn = server.wait_conn()
        server.close_conn(conn, 1012)                                                     # reconnected
        assert events.wait("mod_audio_stream::reconnected", b, timeout=10) is not None
        time.sleep(0.5)
        texts = logs.bodies + [e.get("_body") or "" for e in events.all()]
        assert any("***@127.0.0.1" in t for t in logs.bodies)
        leaks = [t for t in texts if "s3cretpw" in t or "t0psecret" in t]
        assert not leaks, leaks
    finally:
        server.stop()


# ---- 5. a blackholed connection is noticed with the defaults ---------------------------------------

def _ip(*args):
    return subprocess.run(["ip", *args], capture_output=True, text=True)


@pytest.mark.skipif(shutil.which("ip") is None or os.geteuid() != 0,
                    reason="needs ip and root in the switch's network namespace (fsinst.sh exec)")
def test_a_blackholed_connection_is_noticed_with_the_defaults(fs, calls, events):
    """The server at 127.0.0.2 vanishes (a blackhole route: our packets go nowhere, no FIN, no
    RST) while the call streams with the defaults (no heartbeat)."""
    done = threading.Event()

    def sink(c):
        drain(c, done, every_s=1)
        c.close()

    lsock, t = raw_ws_server(sink, host="127.0.0.2")
    blackholed = False
    try:
        (u,) = paced_originate(calls, 1)
        assert api(fs, "%s start ws://127.0.0.2:%d/ mono 16k" % (u, lsock.getsockname()[1])) == "+OK Success"
        time.sleep(1.5)
        r = _ip("route", "add", "blackhole", "127.0.0.2/32", "table", "local")
        if r.returncode:
            pytest.skip("cannot add a blackhole route here: %s" % r.stderr.strip())
        blackholed = True
        t0 = time.monotonic()
        ev = events.wait("mod_audio_stream::reconnecting", u, timeout=30) or \
            events.wait("mod_audio_stream::error", u, timeout=1)
        assert ev is not None, "the blackhole went unnoticed for 30 s"
        noticed = time.monotonic() - t0
        print("blackhole noticed after %.1f s" % noticed)
        assert noticed < 20, noticed
        doc = json.loads(api(fs, "%s status" % u))
        assert doc["streams"] and doc["streams"][0]["dropped_ms"] > 0, doc
    finally:
        if blackholed:
            _ip("route", "del", "blackhole", "127.0.0.2/32", "table", "local")
        done.set()
        lsock.close()
        t.join(5)


# ---- item 6: a command line that is not UTF-8 ------------------------------------------------------

def test_a_command_line_that_is_not_utf8_is_answered_and_leaves_no_error(fs, logs):
    c = esl.Connection(HOST, PORT, PASSWORD)
    try:
        c.sock.sendall(b"api python " + MODULE.encode() + b" \xff\xfe bad\n\n")
        h, body = esl._read_message(c.f)
        assert body.startswith("-ERR")
    finally:
        c.close()
    time.sleep(0.3)
    assert not [ln for ln in logs.bodies if "SystemError" in ln or "exception set" in ln]
    assert any("not valid UTF-8" in ln for ln in logs.bodies)
    assert api(fs, "").startswith("-USAGE")


# ---- the race: start, stop, status, graceful-shutdown from two event sockets ----------------------

def test_start_and_stop_race_from_two_event_sockets(fs, calls):
    other = esl.Connection(HOST, PORT, PASSWORD)
    server = WSServer()
    rng = random.Random(19)
    try:
        legs = paced_originate(calls, 12)
        for rnd in range(4):
            for u in legs:
                second = rng.choice(["stop", "graceful-shutdown", "status", "stop"])
                t = threading.Thread(target=other.api, args=("python %s %s %s" % (MODULE, u, second),))
                t.start()
                reply = api(fs, "%s start %s mono 8k" % (u, server.url))
                t.join(10)
                assert reply == "+OK Success" or reply.startswith("-ERR already streaming"), reply
                time.sleep(rng.uniform(0, 0.02))
                api(fs, "%s stop" % u)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and json.loads(api(fs, "status"))["streams"]:
                time.sleep(0.1)
            assert not json.loads(api(fs, "status"))["streams"], "streams left after every stop"
            for u in legs:
                assert "audio_stream" not in fs.api("uuid_buglist %s" % u), "a bug was left on %s" % u
    finally:
        calls.hangup_all()
        server.stop()
        other.close()
    assert fs.api("status").find("is ready") >= 0
