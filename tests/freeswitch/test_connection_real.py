"""Connections that survive, against a real FreeSWITCH (skips without one): a server killed and
restarted mid-call, a server that stops reading, graceful-shutdown (a deliberate close, never
retried, is in test_stream_real.py).
`test_switch_shutdown_closes_1001` restarts the switch: it runs only with
AUDIO_STREAM_ESL_RESTART=1."""
import asyncio
import json
import os
import time

import pytest

from ..support import WSServer, free_port
from .conftest import ASKED, api




def test_server_killed_and_restarted_reconnects_with_the_gap(fs, calls, events):
    port = free_port()
    a = WSServer(port=port)
    b = None
    try:
        call, _ = calls.originate("loopback/tone/fstest")
        assert api(fs, "%s start ws://127.0.0.1:%d/s mono 8k meta" % (call, port)) == "+OK Success"
        conn = a.wait_conn()
        time.sleep(1.0)
        a.kill()                                   # no close frame, connection reset
        before = len(conn.audio())
        time.sleep(1.0)
        b = WSServer(port=port)
        conn2 = b.wait_conn(timeout=10)
        assert b.wait_for(lambda: conn2.messages, 3)
        assert conn2.messages[0] == ("text", "meta")
        assert conn2.headers.get("X-Audio-Stream-Reconnect", "0") != "0"
        assert conn2.headers["X-Audio-Stream-Id"] == conn.headers["X-Audio-Stream-Id"]
        time.sleep(1.0)
        assert api(fs, "%s stop" % call) == "+OK Success"
        assert conn2.closed.wait(5)
        total = (before + len(conn2.audio())) / 8000.0
        # 3 s of call; what was in flight in the dead socket's buffers (≤ ~1 s) may be lost
        assert total >= 3.0 - 1.1, total
        rec = events.wait("mod_audio_stream::reconnected", call)
        assert rec is not None and json.loads(rec["_body"])["attempt"] >= 1
    finally:
        a.stop()
        if b is not None:
            b.stop()


def test_graceful_shutdown_waits_for_the_server(fs, calls, events):
    async def on_message(conn, m, server):
        if m.type.name == "TEXT" and m.data == "done":
            await conn.ws.send_str('{"type":"transcript","final":true}')
            await asyncio.sleep(0.3)
            await conn.ws.close(code=1000)

    server = WSServer(on_message=on_message)
    try:
        call, _ = calls.originate("loopback/tone/fstest")
        assert api(fs, "%s start %s mono 8k" % (call, server.url)) == "+OK Success"
        conn = server.wait_conn()
        time.sleep(0.5)
        assert api(fs, "%s graceful-shutdown done" % call) == "+OK Success"
        ev = events.wait("mod_audio_stream::json", call)
        assert ev is not None and json.loads(ev["_body"]) == {"type": "transcript", "final": True}
        assert conn.closed.wait(5) and conn.close_code == 1000
        assert conn.messages[-1] == ("text", "done")
        # the stream lets go of the call once its link is done, just after the server's close
        deadline = time.monotonic() + 2
        while "audio_stream" in fs.api("uuid_buglist %s" % call) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "audio_stream" not in fs.api("uuid_buglist %s" % call)
    finally:
        server.stop()


@pytest.mark.skipif(bool(ASKED) and os.environ.get("AUDIO_STREAM_ESL_RESTART") != "1",   # not asked: NOT_ASKED
                    reason="restarts the switch (fsctl shutdown restart): set AUDIO_STREAM_ESL_RESTART=1")
def test_switch_shutdown_closes_1001(fs, calls):
    server = WSServer()
    try:
        for _ in range(3):
            call, _ = calls.originate("loopback/tone/fstest")
            assert api(fs, "%s start %s mono 16k" % (call, server.url)) == "+OK Success"
        server.wait_conn(3)
        # one in graceful-shutdown, waiting for the server: the hangup at shutdown ends it with 1001 too
        assert api(fs, "%s graceful-shutdown" % call) == "+OK Success"
        time.sleep(0.5)
        t0 = time.monotonic()
        try:
            fs.api("fsctl shutdown restart", timeout=5)
        except Exception:
            pass                                   # the switch goes away under the command
        assert server.wait_for(lambda: all(c.closed.is_set() for c in server.conns), 10)
        took = time.monotonic() - t0
        assert [c.close_code for c in server.conns] == [1001] * 3, [c.close_code for c in server.conns]
        assert took < 1.5, took
    finally:
        server.stop()
        calls.uuids.clear()


def test_server_that_stops_reading_overruns_then_recovers(fs, calls, events):
    """The server stops reading for 8 s: within seconds a buffer_overrun event (the oldest audio
    is dropped, memory stays bounded), and buffer_recovered once it reads again."""
    paused = {}

    async def stall(conn, server):
        await asyncio.sleep(0.5)
        conn.request.transport.pause_reading()
        paused["t"] = time.monotonic()
        await asyncio.sleep(8)
        conn.request.transport.resume_reading()

    server = WSServer(on_connect=stall)
    try:
        call, _ = calls.originate("loopback/tone/fstest")
        fs.api("uuid_setvar %s STREAM_RECONNECT_BUFFER 2000" % call)
        assert api(fs, "%s start %s stereo 16k" % (call, server.url)) == "+OK Success"
        over = events.wait("mod_audio_stream::buffer_overrun", call, timeout=10)
        assert over is not None
        assert time.monotonic() - paused["t"] < 7.5         # seconds, not megabytes
        rec = events.wait("mod_audio_stream::buffer_recovered", call, timeout=15)
        assert rec is not None and json.loads(rec["_body"])["dropped_ms"] > 0
        doc = json.loads(api(fs, "%s status" % call))
        assert doc["streams"][0]["state"] == "streaming" and doc["streams"][0]["queued_ms"] < 500
        assert api(fs, "%s stop" % call) == "+OK Success"
    finally:
        server.stop()
