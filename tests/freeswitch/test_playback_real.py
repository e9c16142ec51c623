"""Playback of the server's audio into a real call (skips without a switch).

The stream runs on loopback a-leg A; what A sends is what the b-leg B reads, recorded read-only
with uuid_record (independent of this package), and its frequency checked there.
"""
import base64
import json
import os
import tempfile
import time
import wave

import numpy as np
import pytest

from ..support import WSServer, dominant_hz, tone
from .conftest import api




def stream_audio_msg(x, rate):
    return json.dumps({"type": "streamAudio", "data": {"audioDataType": "raw", "sampleRate": rate,
                                                         "audioData": base64.b64encode(x.tobytes()).decode()}})


def record_b(fs, b, path):
    fs.api("uuid_setvar %s RECORD_READ_ONLY true" % b)
    assert fs.api("uuid_record %s start %s" % (b, path)).startswith("+OK")


def read_wav(path):
    with wave.open(path, "rb") as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2"), w.getframerate()


def segments(x, rate, hz, block=0.1):
    """Seconds of blocks whose dominant frequency is within 15 Hz of hz."""
    n = int(rate * block)
    hits = 0
    for i in range(0, len(x) - n, n):
        if abs(dominant_hz(x[i:i + n], rate) - hz) < 15:
            hits += 1
    return hits * block


def heard_on_b(fs, a, b, path, hz):
    """Stop A's stream and B's recording: the seconds of `hz` B heard."""
    api(fs, "%s stop" % a)
    fs.api("uuid_record %s stop %s" % (b, path))
    time.sleep(0.3)
    x, rate = read_wav(path)
    return segments(x, rate, hz)


@pytest.fixture
def tmpwav():
    fd, path = tempfile.mkstemp(suffix=".wav", dir="/tmp")
    os.close(fd)
    os.unlink(path)
    yield path
    if os.path.exists(path):
        os.unlink(path)


def _play(fs, calls, events, tmpwav, app, base_hz):
    sent = {}

    async def speak(conn, server):
        import asyncio
        await asyncio.sleep(0.5)
        sent["t"] = time.time()
        await conn.ws.send_str(stream_audio_msg(tone(700, 16000, 1.5), 16000))
        await conn.ws.send_str(json.dumps({"type": "mark", "data": {"name": "end-of-hello"}}))

    server = WSServer(on_connect=speak)
    try:
        a, b = calls.originate("loopback/park/fstest" if app == "&park()" else "loopback/park/fstest", app)
        record_b(fs, b, tmpwav)
        time.sleep(0.3)
        assert api(fs, "%s start %s mono 16k" % (a, server.url)) == "+OK Success"
        conn = server.wait_conn()
        assert server.wait_for(lambda: ("text", json.dumps(
            {"type": "mark", "data": {"name": "end-of-hello", "event": "playout"}},
            separators=(",", ":"))) in conn.messages, timeout=6), conn.texts
        started = events.wait("mod_audio_stream::playback_started", a)
        stopped = events.wait("mod_audio_stream::playback_stopped", a)
        mark = events.wait("mod_audio_stream::mark", a)
        time.sleep(0.5)
        api(fs, "%s stop" % a)
        fs.api("uuid_record %s stop %s" % (b, tmpwav))
        time.sleep(0.3)
        x, rate = read_wav(tmpwav)
        assert started is not None and stopped is not None and mark is not None
        assert json.loads(stopped["_body"]) == {"reason": "done"}
        assert json.loads(mark["_body"]) == {"name": "end-of-hello", "event": "playout"}
        # measured inside the switch: the audio reaching the module -> its first frame in the call
        latency_ms = json.loads(started["_body"])["latency_ms"]
        return x, rate, latency_ms
    finally:
        server.stop()


def test_parked_call_hears_server_audio(fs, calls, events, tmpwav):
    x, rate, latency = _play(fs, calls, events, tmpwav, "&park()", None)
    heard = segments(x, rate, 700)
    assert 1.2 <= heard <= 1.8, heard
    print("parked: %.1f s of 700 Hz heard; audio in -> first frame in the call %.1f ms" % (heard, latency))


def test_call_playing_a_file_hears_server_audio(fs, calls, events, tmpwav):
    x, rate, latency = _play(fs, calls, events, tmpwav,
                             "&endless_playback(tone_stream://%(60000,0,300))", 300)
    heard = segments(x, rate, 700)
    assert 1.2 <= heard <= 1.8, heard
    assert segments(x, rate, 300) >= 0.5   # the file is heard before and after
    print("playing: %.1f s of 700 Hz heard; audio in -> first frame in the call %.1f ms" % (heard, latency))


def test_kill_audio_stops_within_a_frame(fs, calls, events, tmpwav):
    async def speak(conn, server):
        import asyncio
        await asyncio.sleep(0.3)
        await conn.ws.send_str(stream_audio_msg(tone(700, 8000, 5.0), 8000))
        await conn.ws.send_str(json.dumps({"type": "mark", "data": {"name": "never"}}))
        await asyncio.sleep(1.0)
        await conn.ws.send_str(json.dumps({"type": "killAudio"}))

    server = WSServer(on_connect=speak)
    try:
        a, b = calls.originate("loopback/park/fstest")
        record_b(fs, b, tmpwav)
        assert api(fs, "%s start %s mono 8k" % (a, server.url)) == "+OK Success"
        conn = server.wait_conn()
        assert server.wait_for(lambda: any('"cleared"' in t for t in conn.texts), timeout=6)
        stopped = events.wait("mod_audio_stream::playback_stopped", a)
        assert json.loads(stopped["_body"]) == {"reason": "cleared"}
        time.sleep(1.0)
        heard = heard_on_b(fs, a, b, tmpwav, 700)
        assert 0.7 <= heard <= 1.3, heard
    finally:
        server.stop()


def test_playback_file_mode_is_mod_audio_stream_compatible(fs, calls, events):
    payload = tone(440, 8000, 0.2)

    async def speak(conn, server):
        await conn.ws.send_str(json.dumps({"type": "streamAudio", "data": {
            "audioDataType": "raw", "sampleRate": 8000, "extra": "kept",
            "audioData": base64.b64encode(payload.tobytes()).decode()}}))

    server = WSServer(on_connect=speak)
    try:
        a, _ = calls.originate("loopback/park/fstest", variables="STREAM_PLAYBACK=false")
        assert api(fs, "%s start %s mono 8k" % (a, server.url)) == "+OK Success"
        ev = events.wait("mod_audio_stream::play", a)
        assert ev is not None
        body = json.loads(ev["_body"])
        assert body["audioDataType"] == "raw" and body["extra"] == "kept" and "audioData" not in body
        assert body["file"].endswith("%s_0.tmp.r8" % a)
        with open(body["file"], "rb") as f:
            assert f.read() == payload.tobytes()
        api(fs, "%s stop" % a)
        time.sleep(0.5)
        assert not os.path.exists(body["file"])
    finally:
        server.stop()
