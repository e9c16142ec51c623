"""STREAM_ENCODING=PCMU/PCMA against a real FreeSWITCH (skips without one): a loopback call streamed
in G.711, the tones found by the server; the server's G.711 answer heard by the call.

Calls as in test_stream_real.py (A reads the b-leg's 440 Hz; with WRITE_TONE_APP A also writes 1000
Hz) and test_playback_real.py (what A's stream plays is what the b-leg B reads, recorded with
uuid_record, independent of this package)."""
import asyncio
import base64
import json
import time

import numpy as np
import pytest

from audio_stream import audio

from ..support import WSServer, dominant_hz, tone
from .conftest import api
from .test_playback_real import heard_on_b, record_b, tmpwav  # noqa: F401 (a fixture)
from .test_stream_real import WRITE_TONE_APP

LAWS = {"PCMU": audio.ULAW, "PCMA": audio.ALAW}


def status(fs, a):
    (s,) = json.loads(api(fs, "%s status" % a))["streams"]
    return s


@pytest.mark.parametrize("law", ["PCMU", "PCMA"])
@pytest.mark.parametrize("mix", ["mono", "stereo"])
def test_a_call_streamed_in_g711(fs, calls, law, mix):
    channels = 2 if mix == "stereo" else 1
    server = WSServer()
    try:
        a, _ = calls.originate("loopback/tone/fstest", WRITE_TONE_APP if channels == 2 else "&park()",
                               variables="STREAM_ENCODING=%s" % law.lower())
        assert api(fs, "%s start %s %s 8k" % (a, server.url, mix)) == "+OK Success"
        conn = server.wait_conn()
        time.sleep(1.0)
        st = status(fs, a)
        assert st["encoding"] == law and st["rate"] == 8000
        time.sleep(1.0)
        assert status(fs, a)["messages_sent"] > st["messages_sent"]
        assert api(fs, "%s stop" % a) == "+OK Success"
        assert conn.closed.wait(5) and conn.close_code == 1000
        assert (conn.headers["X-Audio-Stream-Encoding"], conn.headers["X-Audio-Stream-Rate"],
                conn.headers["X-Audio-Stream-Channels"]) == (law, "8000", str(channels))
        sizes = [len(b) for b in conn.binaries]
        assert set(sizes[:-1]) == {160 * channels}, set(sizes)
        x = LAWS[law][np.frombuffer(b"".join(conn.binaries), np.uint8)].reshape(-1, channels)
        assert 1.6 * 8000 <= len(x) <= 2.6 * 8000, len(x)
        assert abs(dominant_hz(x[:, 0], 8000, 1.0) - 440) < 10
        if channels == 2:
            assert abs(dominant_hz(x[:, 1], 8000, 1.0) - 1000) < 10
    finally:
        server.stop()


def test_a_16k_start_is_refused(fs, calls):
    a, _ = calls.originate("loopback/tone/fstest", variables="STREAM_ENCODING=PCMA")
    assert api(fs, "%s start ws://127.0.0.1:1/x mono 16k" % a) == \
        "-ERR STREAM_ENCODING=PCMA sends 8 kHz G.711: use 8k, not 16000"


@pytest.mark.parametrize("law, how", [("PCMU", "binary"), ("PCMA", "binary"), ("PCMU", "streamAudio"),
                                      ("PCMA", "streamAudio")])
def test_the_servers_g711_answer_is_heard(fs, calls, events, tmpwav, law, how):  # noqa: F811
    g711 = audio.ENCODERS[law](tone(700, 8000, 1.5).tobytes())

    async def speak(conn, server):
        await asyncio.sleep(0.5)
        if how == "binary":
            for i in range(0, len(g711), 160):
                await conn.ws.send_bytes(g711[i:i + 160])
        else:
            await conn.ws.send_str(json.dumps({"type": "streamAudio", "data": {
                "audioDataType": law.lower(), "audioData": base64.b64encode(g711).decode()}}))
        await conn.ws.send_str(json.dumps({"type": "mark", "data": {"name": "end"}}))

    server = WSServer(on_connect=speak)
    try:
        a, b = calls.originate("loopback/park/fstest", variables="STREAM_ENCODING=%s" % law)
        record_b(fs, b, tmpwav)
        time.sleep(0.3)
        assert api(fs, "%s start %s mono 8k" % (a, server.url)) == "+OK Success"
        conn = server.wait_conn()
        assert server.wait_for(lambda: any('"end","event":"playout"' in t for t in conn.texts), timeout=6), conn.texts
        stopped = events.wait("mod_audio_stream::playback_stopped", a)
        assert stopped is not None and json.loads(stopped["_body"]) == {"reason": "done"}
        time.sleep(0.3)
        heard = heard_on_b(fs, a, b, tmpwav, 700)
        assert 1.2 <= heard <= 1.8, heard
    finally:
        server.stop()
