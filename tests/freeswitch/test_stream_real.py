"""Streaming out, against a real FreeSWITCH (skips without one).

Calls are loopback pairs: `originate {origination_uuid=A}loopback/tone/fstest &park()` gives a
parked a-leg A that reads the b-leg's 440 Hz tone. `... &endless_playback(tone_stream://%(60000,0,1000))`
makes A also write 1000 Hz, so A's read (caller, left) and write (right) legs carry different tones.
"""
import json
import time

import numpy as np
import pytest

from ..support import WSServer, dominant_hz
from .conftest import api

WRITE_TONE_APP = "&endless_playback(tone_stream://%(60000,0,1000))"


@pytest.fixture
def server():
    s = WSServer()
    yield s
    s.stop()




def stream_for(fs, server, a, seconds, mix="mono", rate="16k", metadata=None):
    line = "%s start %s %s %s" % (a, server.url, mix, rate)
    if metadata:
        line += " " + metadata
    assert api(fs, line) == "+OK Success"
    conn = server.wait_conn()
    time.sleep(seconds)
    assert api(fs, "%s stop" % a) == "+OK Success"
    assert conn.closed.wait(5), "stream not closed after stop"
    return conn


@pytest.mark.parametrize("rate", ["8k", "16k", "24000", "48000"])
def test_mono_rates_and_tone(fs, calls, server, events, rate):
    a, _ = calls.originate("loopback/tone/fstest")
    conn = stream_for(fs, server, a, 2.0, "mono", rate, '{"test":"mono"}')
    hz = int(rate[:-1]) * 1000 if rate.endswith("k") else int(rate)
    x = conn.audio()
    assert 1.6 * hz <= len(x) <= 2.6 * hz, len(x)
    assert abs(dominant_hz(x, hz, 1.0) - 440) < 10
    assert conn.messages[0] == ("text", '{"test":"mono"}')
    assert (conn.headers["X-Audio-Stream-Encoding"], conn.headers["X-Audio-Stream-Rate"],
            conn.headers["X-Audio-Stream-Channels"]) == ("L16", str(hz), "1")
    sizes = {len(b) for b in conn.binaries[:-1]}
    assert sizes == {hz * 20 // 1000 * 2}, sizes
    assert conn.close_code == 1000
    ev = events.wait("mod_audio_stream::connect", a)
    assert ev is not None and json.loads(ev["_body"]) == {"status": "connected"}
    assert ev.get("Channel-Name", "").startswith("loopback/")


def test_stereo_left_is_caller(fs, calls, server):
    a, _ = calls.originate("loopback/tone/fstest", WRITE_TONE_APP)
    conn = stream_for(fs, server, a, 2.0, "stereo", "16k")
    assert (conn.headers["X-Audio-Stream-Rate"], conn.headers["X-Audio-Stream-Channels"]) == ("16000", "2")
    x = conn.audio()
    left, right = x[0::2], x[1::2]
    assert abs(dominant_hz(left, 16000, 1.0) - 440) < 10
    assert abs(dominant_hz(right, 16000, 1.0) - 1000) < 10


def test_mixed_has_both_legs(fs, calls, server):
    a, _ = calls.originate("loopback/tone/fstest", WRITE_TONE_APP)
    conn = stream_for(fs, server, a, 2.0, "mixed", "8k")
    x = conn.audio()[-8000:].astype(float)
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    f = np.fft.rfftfreq(len(x), 1 / 8000)
    p440 = spec[(f > 430) & (f < 450)].max()
    p1000 = spec[(f > 990) & (f < 1010)].max()
    floor = np.median(spec)
    assert p440 > 20 * floor and p1000 > 20 * floor


@pytest.mark.parametrize("mix", ["mixed", "stereo"])
def test_parked_call_streams_in_both_sides_modes(fs, calls, server, mix):
    # Nothing is written to a parked channel: the write side must come out as silence, not
    # stop the stream (the C module streams nothing here).
    a, _ = calls.originate("loopback/tone/fstest")
    conn = stream_for(fs, server, a, 2.0, mix, "8k")
    x = conn.audio()
    per_channel = len(x) // (2 if mix == "stereo" else 1)
    assert 1.6 * 8000 <= per_channel <= 2.6 * 8000, per_channel
    left = x[0::2] if mix == "stereo" else x
    assert abs(dominant_hz(left, 8000, 1.0) - 440) < 10
    if mix == "stereo":
        assert np.abs(x[1::2].astype(int)).max() <= 1


@pytest.mark.parametrize("ms", [60, 100])
def test_buffer_size(fs, calls, server, ms):
    a, _ = calls.originate("loopback/tone/fstest", variables="STREAM_BUFFER_SIZE=%d" % ms)
    conn = stream_for(fs, server, a, 1.5, "mono", "16k")
    sizes = [len(b) for b in conn.binaries]
    assert set(sizes[:-1]) == {16000 * ms // 1000 * 2}
    assert 0 < sizes[-1] <= 16000 * ms // 1000 * 2


def test_send_text_stop_text_and_order(fs, calls, server):
    a, _ = calls.originate("loopback/tone/fstest")
    assert api(fs, "%s start %s mono 8k meta data with spaces" % (a, server.url)) == "+OK Success"
    conn = server.wait_conn()
    time.sleep(0.5)
    assert api(fs, "%s send_text hello there" % a) == "+OK Success"
    time.sleep(0.3)
    assert api(fs, "%s stop goodbye now" % a) == "+OK Success"
    assert conn.closed.wait(5)
    kinds = [k for k, _ in conn.messages]
    assert conn.messages[0] == ("text", "meta data with spaces")
    assert kinds[1] == "binary"
    assert ("text", "hello there") in conn.messages
    assert conn.messages[-1] == ("text", "goodbye now")
    assert conn.close_code == 1000
    assert api(fs, "%s stop" % a).startswith("-ERR not streaming")


def test_pause_resume_drops_audio(fs, calls, server):
    a, _ = calls.originate("loopback/tone/fstest")
    assert api(fs, "%s start %s mono 8k" % (a, server.url)) == "+OK Success"
    conn = server.wait_conn()
    time.sleep(1.0)
    assert api(fs, "%s pause" % a) == "+OK Success"
    time.sleep(1.0)
    assert api(fs, "%s resume" % a) == "+OK Success"
    time.sleep(1.0)
    api(fs, "%s stop" % a)
    assert conn.closed.wait(5)
    seconds = len(conn.audio()) / 8000.0
    assert 1.6 <= seconds <= 2.5, seconds


def test_hangup_mid_stream_closes_1000(fs, calls, server):
    a, b = calls.originate("loopback/tone/fstest")
    assert api(fs, "%s start %s mono 16k" % (a, server.url)) == "+OK Success"
    conn = server.wait_conn()
    time.sleep(1.0)
    fs.api("uuid_kill %s" % a)
    assert conn.closed.wait(5)
    assert conn.close_code == 1000
    assert len(conn.audio()) > 12000


@pytest.mark.parametrize("code", [4000, 1000])
def test_server_close_fires_disconnect_and_ends(fs, calls, events, code):
    """A deliberate close (4xxx, 1000) ends the stream and is never retried."""
    async def close_soon(conn, server):
        import asyncio
        await asyncio.sleep(0.5)
        await conn.ws.close(code=code, message=b"bye from server")
    server = WSServer(on_connect=close_soon)
    try:
        a, _ = calls.originate("loopback/tone/fstest")
        assert api(fs, "%s start %s mono 8k" % (a, server.url)) == "+OK Success"
        ev = events.wait("mod_audio_stream::disconnect", a)
        assert ev is not None
        assert json.loads(ev["_body"]) == {"status": "disconnected",
                                           "message": {"code": code, "reason": "bye from server"}}
        time.sleep(0.5)
        assert len(server.conns) == 1
        assert "audio_stream" not in fs.api("uuid_buglist %s" % a)
        assert api(fs, "%s stop" % a).startswith("-ERR not streaming")
        assert calls.exists(a)
    finally:
        server.stop()


def test_unreachable_fires_error_and_leaves_no_bug(fs, calls, events):
    from ..support import free_port
    a, _ = calls.originate("loopback/tone/fstest")
    assert api(fs, "%s start ws://127.0.0.1:%d/x mono 8k" % (a, free_port())) == "+OK Success"
    ev = events.wait("mod_audio_stream::error", a)
    assert ev is not None
    body = json.loads(ev["_body"])
    assert body["status"] == "error" and body["message"]["code"] == 6
    assert "refused" in body["message"]["error"].lower()
    time.sleep(0.3)
    assert "audio_stream" not in fs.api("uuid_buglist %s" % a)
    assert calls.exists(a)


def test_errors(fs, calls, server):
    a, _ = calls.originate("loopback/tone/fstest")
    assert fs.api("python audio_stream").startswith("-USAGE")
    assert api(fs, "no-such-uuid stop").startswith("-ERR no such channel")
    assert api(fs, "%s start http://x/ mono 8k" % a).startswith("-ERR invalid websocket url")
    assert api(fs, "%s start %s quad 8k" % (a, server.url)).startswith("-ERR unknown mix")
    assert api(fs, "%s start %s mono 7k" % (a, server.url)).startswith("-ERR invalid sample rate")
    assert api(fs, "%s start" % a).startswith("-ERR start needs")
    assert api(fs, "%s dance" % a).startswith("-ERR unknown command")
    assert api(fs, "%s send_text hi" % a).startswith("-ERR not streaming")
    fs.api("uuid_setvar %s STREAM_EXTRA_HEADERS {bad" % a)
    assert api(fs, "%s start %s mono 8k" % (a, server.url)).startswith("-ERR STREAM_EXTRA_HEADERS")
    fs.api("uuid_setvar %s STREAM_EXTRA_HEADERS {\"X-Test\":\"1\"}" % a)
    assert api(fs, "%s START %s mono 8k" % (a, server.url)) == "+OK Success"
    assert api(fs, "%s start %s mono 8k" % (a, server.url)).startswith("-ERR already streaming")
    conn = server.wait_conn()
    assert conn.headers.get("X-Test") == "1"
    assert api(fs, "%s Stop" % a) == "+OK Success"


def test_dialplan_app_starts_stream(fs, calls, server):
    a, _ = calls.originate("loopback/tone/fstest",
                           "'python:audio_stream start %s mono 16k app,park' inline" % server.url)
    conn = server.wait_conn()
    time.sleep(1.0)
    assert api(fs, "%s stop" % a) == "+OK Success"
    assert conn.closed.wait(5)
    assert conn.texts[0] == "app"
    assert abs(dominant_hz(conn.audio(), 16000, 0.5) - 440) < 10
