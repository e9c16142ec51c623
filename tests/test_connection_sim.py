"""Connections that survive, on the switch simulator: reconnection, graceful-shutdown, the switch
going away, and servers that misbehave."""
import asyncio
import base64
import json
import socket
import threading
import time

import numpy as np
import pytest

from audio_stream import service
from audio_stream.testing.sim import wait_until

from .support import WSServer, free_port, raw_ws_server, tone, worst_gap




def body(e):
    return json.loads(e["_body"])


# ---- the handshake -------------------------------------------------------------------------------

@pytest.mark.parametrize("mix, rate, variables, expected", [
    ("mono", "16k", {}, ("L16", "16000", "1")),
    ("stereo", "8k", {}, ("L16", "8000", "2")),
    ("mixed", "24000", {}, ("L16", "24000", "1")),
    ("mono", "8k", {"STREAM_PROTOCOL": "twilio"}, ("PCMU", "8000", "1")),
    ("stereo", "8k", {"STREAM_PROTOCOL": "twilio"}, ("PCMU", "8000", "2")),
])
def test_the_upgrade_request_says_what_the_audio_is(h, mix, rate, variables, expected):
    server = h.server()
    ch = h.call(rate=16000, **variables)
    h.start(ch, server.url, mix=mix, rate=rate)
    conn = server.wait_conn()
    assert tuple(conn.headers["X-Audio-Stream-" + n] for n in ("Encoding", "Rate", "Channels")) == expected
    h.api("%s stop" % ch.uuid)
    assert conn.closed.wait(5)


# ---- reconnection -----------------------------------------------------------------------------------

@pytest.mark.parametrize("code", [1001, 1011, 1012, 1013])
def test_close_codes_that_say_come_back_reconnect(h, code):
    server = h.server()
    ch = h.call(rate=8000)
    h.start(ch, server.url, meta="hello")
    first = server.wait_conn()
    time.sleep(0.3)
    server.close_conn(first, code)
    rec = h.event("reconnecting")
    assert body(rec)["attempt"] == 1 and body(rec)["delay_ms"] <= 100
    (line,) = [m for _, m in h.fs.logs() if "reconnecting in" in m]
    assert line.rstrip().endswith("%s: reconnecting in %d ms, attempt 1" % (body(rec)["reason"], body(rec)["delay_ms"]))
    assert body(rec)["reason"] == "the server closed the connection with %d" % code      # not its empty text
    second = server.wait_conn(2)
    assert body(h.event("reconnected"))["attempt"] == 1
    assert len(h.events("connect")) == 1                       # ::connect stays the first connection only
    assert second.headers["X-Audio-Stream-Reconnect"] == "1"
    assert "X-Audio-Stream-Reconnect" not in first.headers
    assert second.headers["X-Audio-Stream-Id"] == first.headers["X-Audio-Stream-Id"]
    for name, value in (("Encoding", "L16"), ("Rate", "8000"), ("Channels", "1")):   # every connection
        assert first.headers["X-Audio-Stream-" + name] == second.headers["X-Audio-Stream-" + name] == value
    assert server.wait_for(lambda: len(second.messages) > 3, 3)
    assert second.messages[0] == ("text", "hello")            # the metadata first, again
    h.api("%s stop" % ch.uuid)
    assert second.closed.wait(5) and second.close_code == 1000


@pytest.mark.parametrize("code", [1000, 4000, 4999, 1008])
def test_a_deliberate_close_ends_the_stream(h, code):
    server = h.server()
    ch = h.call(rate=8000)
    h.start(ch, server.url)
    conn = server.wait_conn()
    server.close_conn(conn, code, b"bye")
    assert body(h.event("disconnect"))["message"] == {"code": code, "reason": "bye"}
    assert wait_until(lambda: service.get(ch.uuid) is None)
    time.sleep(0.3)
    assert len(server.conns) == 1 and not h.events("reconnecting")
    assert ch.bug_count == 0


def test_server_killed_and_restarted_gets_the_gap(h):
    """SIGKILL-like death (no close frame), a new server on the same port 1 s later: the stream
    reconnects and the new server receives the audio of the gap, in order, after the metadata."""
    port = free_port()
    a = WSServer(port=port)
    h.servers.append(a)
    ch = h.call(rate=8000, read_hz=0, start=False)
    ch.start(speed=1.0, ticks=0)
    h.start(ch, "ws://127.0.0.1:%d/s" % port, meta="m")
    conn = a.wait_conn()
    ch.set_tick_limit(None)
    time.sleep(0.5)
    a.kill()
    got_before = len(conn.audio())
    t_kill = time.monotonic()
    time.sleep(1.0)
    b = WSServer(port=port)
    h.servers.append(b)
    conn2 = b.wait_conn(timeout=10)
    assert conn2.messages[0] == ("text", "m") if conn2.messages else b.wait_for(lambda: conn2.messages, 2)
    time.sleep(0.5)
    h.api("%s stop" % ch.uuid)
    assert conn2.closed.wait(5)
    total = got_before + len(conn2.audio())
    expected = ch.ticks * 160
    # all of it, except what was in flight in the dead connection's buffers (≤ ~1 s of audio)
    assert total >= expected - 8000 - 320, (total, expected)
    assert len(conn2.audio()) >= (time.monotonic() - t_kill - 1.0) * 8000 * 0.5
    rec = h.events("reconnecting")
    assert rec and "reset" in body(rec[0])["reason"] or "lost" in body(rec[0])["reason"]


def test_no_reconnect_when_asked(h):
    server = h.server()
    ch = h.call(rate=8000, STREAM_NO_RECONNECT="true")
    h.start(ch, server.url)
    conn = server.wait_conn()
    server.close_conn(conn, 1012)
    assert body(h.event("disconnect"))["message"]["code"] == 1012
    assert wait_until(lambda: service.get(ch.uuid) is None)
    assert not h.events("reconnecting")


def test_gives_up_after_the_attempts(h):
    port = free_port()
    a = WSServer(port=port)
    h.servers.append(a)
    ch = h.call(rate=8000, STREAM_RECONNECT_ATTEMPTS="3")
    h.start(ch, "ws://127.0.0.1:%d/s" % port)
    a.wait_conn()
    a.kill()
    err = h.event("error", timeout=10)
    assert body(err)["message"]["code"] == 6
    assert "3 attempts" in body(err)["message"]["error"]
    assert [body(e)["attempt"] for e in h.events("reconnecting")] == [1, 2, 3]
    delays = [body(e)["delay_ms"] for e in h.events("reconnecting")]
    assert delays[0] <= 100 and delays[2] >= delays[0]
    assert wait_until(lambda: service.get(ch.uuid) is None)
    assert ch.bug_count == 0


def test_one_connection_per_attempt_when_the_server_hangs_up_at_once(h):
    """aiohttp retries a GET once when the server drops the connection; one attempt must be one
    connection."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(8)
    accepted = []

    def serve():
        lsock.settimeout(3)
        try:
            while True:
                c, _ = lsock.accept()
                accepted.append(time.monotonic())
                c.recv(4096)
                c.close()
        except OSError:
            pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    ch = h.call(rate=8000)
    h.start(ch, "ws://127.0.0.1:%d/x" % lsock.getsockname()[1])
    err = body(h.event("error"))["message"]
    assert err["code"] == 6 and "closed the connection during the handshake" in err["error"]
    time.sleep(0.3)
    assert len(accepted) == 1
    lsock.close()
    t.join(5)


# ---- graceful-shutdown ----------------------------------------------------------------------------

def test_graceful_shutdown_keeps_receiving_until_the_server_closes(h):
    async def on_message(conn, m, server):
        if m.type.name == "TEXT" and m.data == "that is all":
            await conn.ws.send_str('{"type":"transcript","text":"final words"}')
            await asyncio.sleep(0.3)
            await conn.ws.close(code=1000)

    server = h.server(on_message=on_message)
    ch = h.call(rate=8000)
    h.start(ch, server.url)
    conn = server.wait_conn()
    time.sleep(0.3)
    t0 = time.monotonic()
    assert h.api("%s graceful-shutdown that is all" % ch.uuid) == "+OK Success"
    assert body(h.event("json"))["text"] == "final words"
    assert conn.closed.wait(5) and time.monotonic() - t0 < 2
    assert conn.messages[-1] == ("text", "that is all")
    assert wait_until(lambda: service.get(ch.uuid) is None)
    assert ch.bug_count == 0


def test_graceful_shutdown_times_out_and_still_plays(h):
    async def on_message(conn, m, server):
        if m.type.name == "TEXT" and m.data == "bye":
            pcm = tone(700, 8000, 0.5).tobytes()
            await conn.ws.send_str(json.dumps({"type": "streamAudio", "data": {
                "audioDataType": "raw", "sampleRate": 8000, "audioData": base64.b64encode(pcm).decode()}}))

    server = h.server(on_message=on_message)
    ch = h.call(rate=8000, STREAM_GRACEFUL_TIMEOUT="1")
    h.start(ch, server.url)
    conn = server.wait_conn()
    time.sleep(0.2)
    n = len(ch.heard())
    t0 = time.monotonic()
    assert h.api("%s graceful-shutdown bye" % ch.uuid) == "+OK Success"
    assert conn.closed.wait(5)
    took = time.monotonic() - t0
    assert 0.9 < took < 2.5 and conn.close_code == 1000
    heard = ch.heard()[n:]
    assert np.count_nonzero(np.abs(heard.astype(int)) > 1000) > 3000       # the goodbye played
    assert h.events("playback_started")
    # nothing was captured after the command
    assert len(conn.audio()) <= (0.2 + 0.15) * 8000


def test_stop_ends_a_graceful_shutdown_at_once(h):
    server = h.server()
    ch = h.call(rate=8000, STREAM_GRACEFUL_TIMEOUT="30")
    h.start(ch, server.url)
    conn = server.wait_conn()
    assert h.api("%s graceful-shutdown" % ch.uuid) == "+OK Success"
    time.sleep(0.3)
    assert not conn.closed.is_set()
    assert h.api("%s stop" % ch.uuid) == "+OK Success"
    assert conn.closed.wait(3) and conn.close_code == 1000


# ---- the switch going away ------------------------------------------------------------------------

def test_switch_shutdown_hangup_closes_1001_at_once(h):
    server = h.server()
    chs = [h.call(rate=8000) for _ in range(3)]
    for ch in chs:
        h.start(ch, server.url)
    server.wait_conn(3)
    time.sleep(0.2)
    t0 = time.monotonic()
    for ch in chs:
        ch.hangup("SYSTEM_SHUTDOWN")
    assert server.wait_for(lambda: all(c.closed.is_set() for c in server.conns), 2)
    assert time.monotonic() - t0 < 1.0
    assert [c.close_code for c in server.conns] == [1001] * 3


def test_stop_loop_closes_whatever_is_left_with_1001(h):
    server = h.server()
    ch = h.call(rate=8000, STREAM_GRACEFUL_TIMEOUT="30")
    h.start(ch, server.url)
    conn = server.wait_conn()
    h.api("%s graceful-shutdown" % ch.uuid)
    t0 = time.monotonic()
    service.stop_loop(timeout=3)
    assert conn.closed.wait(2) and conn.close_code == 1001
    assert time.monotonic() - t0 < 1.5


# ---- servers that misbehave ----------------------------------------------------------------------

def test_flood_of_invalid_messages_is_closed_1008_and_rate_limited(h):
    async def flood(conn, server):
        for i in range(5000):
            await conn.ws.send_str('{"type":"streamAudio","data":{"audioDataType":"opus"}}')

    server = h.server(on_connect=flood)
    ch = h.call(rate=8000)
    h.start(ch, server.url)
    conn = server.wait_conn()
    assert conn.closed.wait(5) and conn.close_code == 1008
    h.event("error", predicate=lambda e: "unusable messages" in body(e)["message"]["error"])
    assert 1 <= len(h.events("error")) <= 25
    assert wait_until(lambda: service.get(ch.uuid) is None)
    assert not h.events("reconnecting")


def test_json_flood_does_not_stall_another_stream(h):
    async def flood(conn, server):
        for i in range(30000):
            await conn.ws.send_str('{"type":"transcript","n":%d}' % i)

    noisy = h.server(on_connect=flood)
    quiet = h.server()
    a = h.call(rate=8000)
    b = h.call(rate=8000)
    h.start(a, noisy.url)
    h.start(b, quiet.url)
    conn_b = quiet.wait_conn()
    gap = worst_gap([conn_b], 3)
    assert gap < 0.25, gap
    fired = len(h.events("json"))
    assert fired <= 200 * 4 + 400
    assert any("not fired as mod_audio_stream::json" in m for _, m in h.fs.logs())
    # the noisy server sends without reading: the stream lets go of it within the 5 s close limit
    a.hangup()
    b.hangup()
    assert h.settle(7)


def test_masked_frames_from_the_server_fail_the_connection(h):
    """RFC 6455 5.1: a client must fail the connection when a server masks a frame (code 3)."""
    def masked(c):
        payload = b'{"type":"x"}'
        mask = b"\x01\x02\x03\x04"
        c.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
        time.sleep(1)
        c.close()

    lsock, t = raw_ws_server(masked)
    ch = h.call(rate=8000)
    h.start(ch, "ws://127.0.0.1:%d/" % lsock.getsockname()[1])
    err = body(h.event("error"))["message"]
    assert err["code"] in (3, 11), err
    assert not h.events("json")
    assert wait_until(lambda: service.get(ch.uuid) is None)
    assert not h.events("reconnecting")
    lsock.close()
    t.join(3)


def test_a_bad_handshake_and_a_non_http_server_get_readable_reasons(h):
    def serve(lsock, answer):
        c, _ = lsock.accept()
        c.recv(4096)
        c.sendall(answer)
        time.sleep(0.5)
        c.close()

    cases = [
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         b"Sec-WebSocket-Accept: bm90IHRoZSByaWdodCBrZXk=\r\n\r\n", "invalid WebSocket handshake"),
        (b"\x00\x01\x02SSH-2.0-OpenSSH\xff\xfe\r\n\r\n", "not an HTTP/WebSocket server"),
    ]
    for answer, words in cases:
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        t = threading.Thread(target=serve, args=(lsock, answer), daemon=True)
        t.start()
        ch = h.call(rate=8000)
        h.fs.clear()
        h.start(ch, "ws://127.0.0.1:%d/" % lsock.getsockname()[1])
        err = body(h.event("error"))["message"]["error"]
        assert words in err, err
        assert err.isprintable() and "\\x" not in err
        t.join(3)
        lsock.close()
        ch.hangup()


def test_settings_a_hostile_config_cannot_use(h):
    server = h.server()
    ch = h.call(rate=8000)
    for name in ("Host", "Upgrade", "Connection", "Sec-WebSocket-Key", "sec-websocket-protocol"):
        ch.set_var("STREAM_EXTRA_HEADERS", json.dumps({name: "x"}))
        reply = h.api("%s start %s mono 8k" % (ch.uuid, server.url))
        assert reply.startswith("-ERR STREAM_EXTRA_HEADERS: '%s' is part of the WebSocket handshake" % name), reply
    ch.set_var("STREAM_EXTRA_HEADERS", "")
    ch.set_var("STREAM_HEART_BEAT", "0.001")
    assert "too short" in h.api("%s start %s mono 8k" % (ch.uuid, server.url))
    ch.set_var("STREAM_HEART_BEAT", "")
    assert h.api("%s start %s mono \u0668\u0660\u0660\u0660" % (ch.uuid, server.url)).startswith("-ERR invalid sample rate")
    ch.set_var("STREAM_BUFFER_SIZE", "\u0662\u0660")
    assert "not an integer" in h.api("%s start %s mono 8k" % (ch.uuid, server.url))
    assert ch.bug_count == 0


def test_a_server_that_never_reads_cannot_grow_memory_with_mark_replies(h):
    """Marks with big names, no reading: the replies wait in a bounded outbox, the rest is refused
    with a log line, and the call ends cleanly even though the server never reads."""
    held = []

    def marks(c):
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        name = "m" * 60000
        msg = json.dumps({"type": "mark", "data": {"name": name}}).encode()
        frame = bytes([0x81, 127]) + len(msg).to_bytes(8, "big") + msg
        for i in range(100):
            c.sendall(frame)
        held.append(c)

    lsock, t = raw_ws_server(marks)
    ch = h.call(rate=8000)
    h.start(ch, "ws://127.0.0.1:%d/" % lsock.getsockname()[1])
    t.join(10)
    time.sleep(1.0)
    stream = service.get(ch.uuid)
    assert stream is not None
    assert stream.outbox.text_bytes <= (1 << 20) + stream.settings.max_message
    t0 = time.monotonic()
    ch.hangup()
    assert wait_until(lambda: not service.busy(), 12)
    assert time.monotonic() - t0 < 11          # the drain (5 s) and the close (5 s) are bounded
    for c in held:
        c.close()
    lsock.close()
