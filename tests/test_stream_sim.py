"""Streaming out through the real stack on the switch simulator: the project's ctypes binding,
media-bug callbacks on native threads, the loop thread, aiohttp, a real WebSocket server."""
import json
import threading
import time

import numpy as np
import pytest

from audio_stream import service
from audio_stream.testing.sim import wait_until

from .support import dominant_hz, free_port

RATES = {"8k": 8000, "16k": 16000, "24000": 24000, "48000": 48000}


def run_stream(h, server, ch, mix, rate, ticks, metadata=None):
    line = "%s start %s %s %s" % (ch.uuid, server.url, mix, rate)
    if metadata:
        line += " " + metadata
    assert h.api(line) == "+OK Success"
    conn = server.wait_conn()
    ch.run_ticks(ticks)
    assert h.api("%s stop" % ch.uuid) == "+OK Success"
    assert conn.closed.wait(5), "not closed after stop"
    return conn


@pytest.mark.parametrize("rate", list(RATES))
@pytest.mark.parametrize("mix", ["mono", "mixed", "stereo"])
@pytest.mark.parametrize("call_rate", [8000, 16000])
def test_wire_counts_and_tones(h, mix, rate, call_rate):
    out_rate = RATES[rate]
    server = h.server()
    ch = h.call(rate=call_rate, read_hz=440, write_hz=1000, core_writing=1, start=False)
    ch.start(speed=4.0, ticks=0)
    conn = run_stream(h, server, ch, mix, rate, 50, '{"mix":"%s"}' % mix)
    channels = 2 if mix == "stereo" else 1
    x = conn.audio()
    # 50 frames of 20 ms = 1 s of the call, resampled: exactly 1 s at the stream's rate
    assert len(x) == out_rate * channels, (len(x), out_rate * channels)
    assert conn.messages[0] == ("text", '{"mix":"%s"}' % mix)
    sizes = [len(b) for b in conn.binaries]
    assert set(sizes) == {out_rate // 50 * 2 * channels}
    if mix == "mono":
        assert abs(dominant_hz(x, out_rate, 0.5) - 440) < 4
    elif mix == "stereo":
        assert abs(dominant_hz(x[0::2], out_rate, 0.5) - 440) < 4    # left: the caller (read)
        assert abs(dominant_hz(x[1::2], out_rate, 0.5) - 1000) < 4   # right: what the caller hears
    else:
        seg = x[-out_rate // 2:].astype(float)
        spec = np.abs(np.fft.rfft(seg * np.hanning(len(seg))))
        f = np.fft.rfftfreq(len(seg), 1.0 / out_rate)
        floor = np.median(spec)
        assert spec[np.abs(f - 440) < 4].max() > 50 * floor
        assert spec[np.abs(f - 1000) < 4].max() > 50 * floor


@pytest.mark.parametrize("mix", ["mixed", "stereo"])
def test_parked_call_streams_with_silent_write_side(h, mix):
    server = h.server()
    ch = h.call(rate=8000, core_writing=0, start=False)
    ch.start(speed=4.0, ticks=0)
    conn = run_stream(h, server, ch, mix, "8k", 25)
    x = conn.audio()
    assert len(x) == 4000 * (2 if mix == "stereo" else 1)
    left = x[0::2] if mix == "stereo" else x
    assert abs(dominant_hz(left, 8000) - 440) < 10
    if mix == "stereo":
        assert np.abs(x[1::2].astype(int)).max() <= 1


@pytest.mark.parametrize("ptime,ms", [(20, 20), (20, 60), (20, 100), (30, 30), (30, 60), (30, 90)])
def test_buffer_sizes(h, ptime, ms):
    server = h.server()
    ch = h.call(rate=8000, ptime=ptime, start=False, STREAM_BUFFER_SIZE=ms)
    ch.start(speed=4.0, ticks=0)
    n = 1000 // ptime + 1
    conn = run_stream(h, server, ch, "mono", "16k", n)
    sizes = [len(b) for b in conn.binaries]
    full = 16000 * ms // 1000 * 2
    assert set(sizes[:-1]) == {full}
    assert 0 < sizes[-1] <= full
    assert sum(sizes) == n * ptime * 16 * 2   # the partial last chunk is flushed, nothing lost


def test_buffer_size_not_multiple_of_ptime_is_refused(h):
    ch = h.call(rate=8000, ptime=30, STREAM_BUFFER_SIZE=40)
    server = h.server()
    reply = h.api("%s start %s mono 8k" % (ch.uuid, server.url))
    assert reply == "-ERR STREAM_BUFFER_SIZE=40 is not a multiple of the call's 30 ms ptime"
    assert ch.bug_count == 0


def test_metadata_before_audio_even_when_audio_waits_for_connect(h):
    """Audio captured while the connection is being set up is kept and sent after the metadata."""
    server = h.server(handshake_delay=0.3)
    ch = h.call(rate=8000, start=False)
    ch.start(speed=1.0, ticks=0)
    assert h.api("%s start %s mono 8k first words" % (ch.uuid, server.url)) == "+OK Success"
    ch.run_ticks(10)
    assert not server.conns                     # still in the handshake
    conn = server.wait_conn()
    ch.run_ticks(10)
    h.api("%s stop" % ch.uuid)
    assert conn.closed.wait(5)
    assert conn.messages[0] == ("text", "first words")
    assert all(k == "binary" for k, _ in conn.messages[1:])
    assert len(conn.audio()) == 20 * 160


def test_send_text_and_stop_text(h):
    server = h.server()
    ch = h.call(rate=8000)
    assert h.api("%s start %s mono 8k" % (ch.uuid, server.url)) == "+OK Success"
    conn = server.wait_conn()
    assert h.api("%s send_text {\"event\": \"dtmf\", \"digit\": \"1\"}" % ch.uuid) == "+OK Success"
    assert server.wait_for(lambda: '{"event": "dtmf", "digit": "1"}' in conn.texts)
    assert h.api("%s stop the end" % ch.uuid) == "+OK Success"
    assert conn.closed.wait(5)
    assert conn.messages[-1] == ("text", "the end")
    assert conn.close_code == 1000
    assert ch.bug_count == 0
    assert h.api("%s stop" % ch.uuid).startswith("-ERR not streaming")


def test_pause_resume_drops_frames(h):
    server = h.server()
    ch = h.call(rate=8000, start=False)
    ch.start(speed=2.0, ticks=0)
    assert h.api("%s start %s mono 8k" % (ch.uuid, server.url)) == "+OK Success"
    server.wait_conn()
    ch.run_ticks(10)
    assert h.api("%s pause" % ch.uuid) == "+OK Success"
    ch.run_ticks(15)
    assert h.api("%s resume" % ch.uuid) == "+OK Success"
    ch.run_ticks(10)
    conn = server.conns[0]
    h.api("%s stop" % ch.uuid)
    assert conn.closed.wait(5)
    assert len(conn.audio()) == 20 * 160


def test_hangup_mid_stream(h):
    server = h.server()
    ch = h.call(rate=16000, start=False)
    ch.start(speed=2.0, ticks=0)
    assert h.api("%s start %s stereo 16k" % (ch.uuid, server.url)) == "+OK Success"
    conn = server.wait_conn()
    ch.run_ticks(25)
    ch.hangup()
    assert conn.closed.wait(5)
    assert conn.close_code == 1000
    assert len(conn.audio()) == 25 * 320 * 2       # every frame captured before the hangup
    assert h.settle()
    assert service.get(ch.uuid) is None


def test_hangup_while_connecting_still_delivers(h):
    """The call ends before the handshake completes: metadata and audio still arrive, then 1000."""
    server = h.server(handshake_delay=0.5)
    ch = h.call(rate=8000, start=False)
    ch.start(speed=2.0, ticks=0)
    assert h.api("%s start %s mono 8k meta" % (ch.uuid, server.url)) == "+OK Success"
    ch.run_ticks(5)
    ch.hangup()
    assert not server.conns
    conn = server.wait_conn()
    assert conn.closed.wait(5)
    assert conn.messages[0] == ("text", "meta")
    assert len(conn.audio()) == 5 * 160


def test_server_close_fires_disconnect_and_removes_bug(h):
    async def bye(conn, server):
        await conn.ws.close(code=4001, message=b"done here")
    server = h.server(on_connect=bye)
    ch = h.call(rate=8000)
    assert h.api("%s start %s mono 8k" % (ch.uuid, server.url)) == "+OK Success"
    ev = h.event("disconnect")
    assert json.loads(ev["_body"]) == {"status": "disconnected", "message": {"code": 4001, "reason": "done here"}}
    assert ev["Unique-ID"] == ch.uuid and ev.get("Channel-Name")
    assert wait_until(lambda: service.get(ch.uuid) is None)
    assert ch.bug_count == 0
    assert h.api("%s send_text x" % ch.uuid).startswith("-ERR not streaming")
    assert h.api("%s start %s mono 8k" % (ch.uuid, server.url)) == "+OK Success"   # can start again


def test_unreachable_server_fires_error_and_leaves_no_bug(h):
    ch = h.call(rate=8000)
    assert h.api("%s start ws://127.0.0.1:%d/x mono 8k" % (ch.uuid, free_port())) == "+OK Success"
    ev = h.event("error")
    body = json.loads(ev["_body"])
    assert body["status"] == "error" and body["message"]["code"] == 6
    assert "Connection refused" in body["message"]["error"]
    assert wait_until(lambda: ch.bug_count == 0)
    assert h.settle()


def test_unresolvable_host_and_rejected_handshake(h):
    ch = h.call(rate=8000)
    assert h.api("%s start ws://no-such-host.invalid/x mono 8k" % ch.uuid) == "+OK Success"
    body = json.loads(h.event("error")["_body"])
    assert body["message"]["code"] == 6 and "resolve" in body["message"]["error"]
    assert wait_until(lambda: ch.bug_count == 0)
    h.fs.clear()
    server = h.server(reject=403)
    assert h.api("%s start %s mono 8k" % (ch.uuid, server.url)) == "+OK Success"
    body = json.loads(h.event("error")["_body"])
    assert body["message"] == {"code": 6, "error": "WebSocket handshake rejected: HTTP 403 Forbidden"}


def test_connect_timeout_is_code_10(h):
    import socket
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)   # accepts TCP (backlog) but never answers the HTTP upgrade
    try:
        ch = h.call(rate=8000, STREAM_CONNECT_TIMEOUT="0.5")
        t0 = time.monotonic()
        assert h.api("%s start ws://127.0.0.1:%d/ mono 8k" % (ch.uuid, lsock.getsockname()[1])) == "+OK Success"
        body = json.loads(h.event("error")["_body"])
        assert body["message"]["code"] == 10 and "timed out" in body["message"]["error"]
        assert time.monotonic() - t0 < 3
        assert wait_until(lambda: ch.bug_count == 0)
    finally:
        lsock.close()


def test_connect_event_has_channel_headers(h):
    server = h.server()
    ch = h.call(rate=8000)
    assert h.api("%s start %s mono 8k" % (ch.uuid, server.url)) == "+OK Success"
    ev = h.event("connect")
    assert json.loads(ev["_body"]) == {"status": "connected"}
    assert ev["Event-Name"] == "CUSTOM" and ev["Unique-ID"] == ch.uuid
    assert ev.get("Channel-Name") and ev.get("Channel-State")


def test_json_event_for_every_text_frame(h):
    async def talk(conn, server):
        await conn.ws.send_str('{"type":"transcript","text":"hello"}')
        await conn.ws.send_str("plain words")
    server = h.server(on_connect=talk)
    ch = h.call(rate=8000)
    assert h.api("%s start %s mono 8k" % (ch.uuid, server.url)) == "+OK Success"
    h.event("json", predicate=lambda e: e["_body"] == "plain words")
    bodies = [e["_body"] for e in h.events("json")]
    assert bodies == ['{"type":"transcript","text":"hello"}', "plain words"]


def test_headers_deflate_and_heartbeat(h):
    server = h.server()
    ch = h.call(rate=8000, STREAM_EXTRA_HEADERS='{"Authorization":"Bearer abc","X-Call":"1"}',
                STREAM_MESSAGE_DEFLATE="true", STREAM_HEART_BEAT="1")
    assert h.api("%s start %s mono 8k" % (ch.uuid, server.url)) == "+OK Success"
    conn = server.wait_conn()
    assert conn.headers["Authorization"] == "Bearer abc" and conn.headers["X-Call"] == "1"
    assert "permessage-deflate" not in conn.headers.get("Sec-WebSocket-Extensions", "")
    ch2 = h.call(rate=8000, STREAM_MESSAGE_DEFLATE="false")     # mod_audio_stream's default, made explicit
    assert h.api("%s start %s mono 8k" % (ch2.uuid, server.url)) == "+OK Success"
    conn2 = server.wait_conn(2)
    assert "permessage-deflate" in conn2.headers.get("Sec-WebSocket-Extensions", "")
    ch3 = h.call(rate=8000)                                     # ours: off unless asked for
    assert h.api("%s start %s mono 8k" % (ch3.uuid, server.url)) == "+OK Success"
    conn3 = server.wait_conn(3)
    assert "permessage-deflate" not in conn3.headers.get("Sec-WebSocket-Extensions", "")


def test_heartbeat_pings(h):
    server = h.server(autoping=False)
    ch = h.call(rate=8000, STREAM_HEART_BEAT="1")
    assert h.api("%s start %s mono 8k" % (ch.uuid, server.url)) == "+OK Success"
    conn = server.wait_conn()
    assert server.wait_for(lambda: len(conn.pings) >= 3, 5)
    gaps = np.diff(conn.pings)
    assert 0.8 < gaps.mean() < 1.3
    ch2 = h.call(rate=8000)
    assert h.api("%s start %s mono 8k" % (ch2.uuid, server.url)) == "+OK Success"
    conn2 = server.wait_conn(2)
    time.sleep(0.8)
    assert conn2.pings == []        # off by default


def test_missing_pong_is_error_5_and_ends_the_stream(h):
    server = h.server(autoping=False, pong=False)
    ch = h.call(rate=8000, STREAM_HEART_BEAT="1", STREAM_NO_RECONNECT="true")
    assert h.api("%s start %s mono 8k" % (ch.uuid, server.url)) == "+OK Success"
    body = json.loads(h.event("error", timeout=5)["_body"])
    assert body["message"]["code"] == 5 and "pong" in body["message"]["error"]
    assert wait_until(lambda: service.get(ch.uuid) is None)
    assert ch.bug_count == 0


def test_suppress_log(h):
    async def talk(conn, server):
        await conn.ws.send_str('{"type":"transcript","text":"secret words"}')
    server = h.server(on_connect=talk)
    ch = h.call(rate=8000, STREAM_SUPPRESS_LOG="true")
    assert h.api("%s start %s mono 8k" % (ch.uuid, server.url)) == "+OK Success"
    h.event("json")
    assert not any("secret words" in m for _, m in h.fs.logs())
    ch2 = h.call(rate=8000)
    assert h.api("%s start %s mono 8k" % (ch2.uuid, server.url)) == "+OK Success"
    h.event("json", predicate=lambda e: e["Unique-ID"] == ch2.uuid)
    assert any("secret words" in m for _, m in h.fs.logs())


def test_every_error_reply(h):
    server = h.server()
    ch = h.call(rate=8000)
    u = ch.uuid
    assert h.api("").startswith("-USAGE:")
    assert h.api("4a4f4d1e-0000-0000-0000-000000000000 start %s mono" % server.url) == \
        "-ERR no such channel '4a4f4d1e-0000-0000-0000-000000000000'"
    assert h.api("%s start http://x mono 8k" % u).startswith("-ERR invalid websocket url")
    assert h.api("%s start %s surround 8k" % (u, server.url)).startswith("-ERR unknown mix")
    assert h.api("%s start %s mono 4k" % (u, server.url)).startswith("-ERR invalid sample rate")
    assert h.api("%s start %s" % (u, server.url)).startswith("-ERR start needs")
    assert h.api("%s jump" % u).startswith("-ERR unknown command")
    assert h.api("%s stop" % u) == "-ERR not streaming on %s" % u
    assert h.api("%s pause" % u).startswith("-ERR not streaming")
    assert h.api("%s send_text" % u).startswith("-ERR send_text needs")
    ch.set_var("STREAM_EXTRA_HEADERS", "not json")
    assert h.api("%s start %s mono 8k" % (u, server.url)).startswith("-ERR STREAM_EXTRA_HEADERS is not valid JSON")
    ch.set_var("STREAM_EXTRA_HEADERS", "")
    ch.set_var("STREAM_HEART_BEAT", "often")
    assert h.api("%s start %s mono 8k" % (u, server.url)) == "-ERR STREAM_HEART_BEAT='often' is not a number"
    ch.set_var("STREAM_HEART_BEAT", "")
    assert ch.bug_count == 0
    assert h.api("%s start %s mono 8k" % (u, server.url)) == "+OK Success"
    assert h.api("%s start %s mono 8k" % (u, server.url)) == "-ERR already streaming on %s (stop it first)" % u
    assert ch.bug_count == 2      # the capture bug and the control bug
    assert h.api("%s send_text bad \udcff" % u) == "-ERR the command line is not valid UTF-8"


def test_dialplan_app(h):
    server = h.server()
    ch = h.call(rate=16000)
    h.app(ch, "start %s mono 16k from the dialplan" % server.url)
    conn = server.wait_conn()
    assert server.wait_for(lambda: len(conn.binaries) >= 5)
    assert conn.messages[0] == ("text", "from the dialplan")
    h.app(ch, "stop")
    assert conn.closed.wait(5)
    h.app(ch, "stop")
    assert any("not streaming" in msg for _, msg in h.fs.logs())


def test_several_calls_at_once(h):
    server = h.server()
    calls = [h.call(rate=8000, read_hz=300 + 100 * i) for i in range(6)]
    for ch in calls:
        assert h.api("%s start %s mono 8k %s" % (ch.uuid, server.url, ch.uuid)) == "+OK Success"
    server.wait_conn(6)
    time.sleep(1.0)
    for ch in calls:
        ch.hangup()
    for conn in server.conns:
        assert conn.closed.wait(5)
        i = [c.uuid for c in calls].index(conn.texts[0])
        assert abs(dominant_hz(conn.audio(), 8000) - (300 + 100 * i)) < 10


def test_a_hangup_while_the_loop_is_busy_still_ends_the_stream(h):
    """The call ends before the loop thread has run anything for the new stream (an overloaded loop):
    the media thread's end-of-call notice must still reach it (CI once lost it: the accelerated
    path's wake-up pipe did not exist yet when the bug posted CLOSE)."""
    server = h.server()
    ch = h.call(rate=8000)
    loop = service.loop()
    busy = threading.Event()
    loop.call_soon_threadsafe(lambda: (busy.set(), time.sleep(0.5)))
    assert busy.wait(5)
    assert h.api("%s start %s mono 8k" % (ch.uuid, server.url)) == "+OK Success"
    ch.hangup()
    assert wait_until(lambda: service.get(ch.uuid) is None, 5), "the stream never saw the hangup"


def test_what_asyncio_reports_goes_to_the_switch_log(h):
    """A callback on the loop that raises (our bug, or aiohttp's report of a connection left open)
    is an ERR line in the switch's log, not only a line on its stderr."""
    def broken():
        raise RuntimeError("something on the loop broke")
    service.loop().call_soon_threadsafe(broken)
    assert wait_until(lambda: any(level == "ERR" and "something on the loop broke" in m
                                  for level, m in h.fs.logs()), 5)
