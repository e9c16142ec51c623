"""STREAM_ENCODING=PCMU/PCMA through the whole stack on the switch simulator, on whichever media path
the run has (the accelerated one by default; `AUDIO_STREAM_ACCEL=0` runs the same tests on the
pure-Python path): what the server receives, what it sends back and the call hears, what is refused."""
import base64
import json
import time

import numpy as np
import pytest

from audio_stream import audio, service
from audio_stream.testing.sim import wait_until

from .support import dominant_hz, tone

LAWS = {"PCMU": audio.ULAW, "PCMA": audio.ALAW}


def status(h, ch):
    (s,) = json.loads(h.api("%s status" % ch.uuid))["streams"]
    return s


def decode(law, data):
    return LAWS[law][np.frombuffer(data, np.uint8)]


@pytest.mark.parametrize("law", ["PCMU", "PCMA"])
@pytest.mark.parametrize("mix", ["mono", "stereo"])
@pytest.mark.parametrize("call_rate", [8000, 16000, 44100])
def test_a_g711_stream_of_a_tone(h, law, mix, call_rate):
    """The server decodes what it receives and finds the call's tones; every message is 20 ms of
    G.711 (160 bytes a channel); the handshake and status say the encoding. A 16 kHz call is
    resampled, then encoded (in C on the accelerated path); a 44.1 kHz one takes libsamplerate
    (Python resamples and encodes on either path)."""
    channels = 2 if mix == "stereo" else 1
    server = h.server()
    ch = h.call(rate=call_rate, read_hz=440, write_hz=1000, core_writing=1, STREAM_ENCODING=law.lower())
    conn = h.start(ch, server, mix, "8k", '{"call":"g711"}')
    assert (conn.headers["X-Audio-Stream-Encoding"], conn.headers["X-Audio-Stream-Rate"],
            conn.headers["X-Audio-Stream-Channels"]) == (law, "8000", str(channels))
    st = status(h, ch)
    assert st["encoding"] == law and st["rate"] == 8000
    assert server.wait_for(lambda: len(conn.binaries) >= 40, 5)
    stream = service.get(ch.uuid)
    direct = stream.capture.sent[0]
    time.sleep(0.3)
    st2 = status(h, ch)
    assert st2["messages_sent"] > st["messages_sent"]
    if stream.path == "accel" and call_rate != 44100:
        # the direct path: C frames the complete G.711 chunks and sends them itself
        assert stream.capture.sent[0] > direct
    else:
        assert stream.capture.sent == (0, 0)
    assert h.api("%s stop" % ch.uuid) == "+OK Success"
    assert conn.closed.wait(5) and conn.close_code == 1000
    assert conn.messages[0] == ("text", '{"call":"g711"}')
    sizes = [len(b) for b in conn.binaries]
    assert set(sizes[:-1]) == {160 * channels} and 0 < sizes[-1] <= 160 * channels
    assert st2["bytes_sent"] <= sum(sizes) + len('{"call":"g711"}')
    x = decode(law, b"".join(conn.binaries)).reshape(-1, channels)
    assert abs(dominant_hz(x[:, 0], 8000, 0.5) - 440) < 5
    if channels == 2:
        assert abs(dominant_hz(x[:, 1], 8000, 0.5) - 1000) < 5
    # ~8000 samples a second per channel: G.711 is one byte a sample
    seconds = len(x) / 8000
    assert seconds >= 0.9, seconds


@pytest.mark.parametrize("law", ["PCMU", "PCMA"])
def test_mixed_g711_and_a_longer_buffer(h, law):
    server = h.server()
    ch = h.call(rate=8000, read_hz=440, write_hz=1000, core_writing=1, STREAM_ENCODING=law, STREAM_BUFFER_SIZE="60")
    conn = h.start(ch, server, "mixed", "8k")
    assert server.wait_for(lambda: len(conn.binaries) >= 10, 5)
    h.api("%s stop" % ch.uuid)
    assert conn.closed.wait(5)
    assert {len(b) for b in conn.binaries[:-1]} == {480}
    x = decode(law, b"".join(conn.binaries)).astype(float)[-4000:]
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    f = np.fft.rfftfreq(len(x), 1 / 8000)
    floor = np.median(spec)
    assert spec[(f > 430) & (f < 450)].max() > 20 * floor and spec[(f > 990) & (f < 1010)].max() > 20 * floor


# (every sample at hangup, G.711 too: test_media_path_sim.test_hangup_delivers_every_frame_captured)


def heard_tone(ch, hz, seconds, rate):
    """The call heard about `seconds` of `hz` (its first loud sample onwards)."""
    assert wait_until(lambda: len(np.nonzero(np.abs(ch.heard().astype(int)) > 500)[0]) >= 0.8 * seconds * rate, 5)
    heard = ch.heard()
    first = int(np.argmax(np.abs(heard.astype(int)) > 500))
    got = heard[first:first + int(rate * seconds * 0.8)]
    return dominant_hz(got, rate)


@pytest.mark.parametrize("law", ["PCMU", "PCMA"])
@pytest.mark.parametrize("call_rate", [8000, 16000])
def test_the_server_answers_in_g711_binary_frames(h, law, call_rate):
    server = h.server()
    ch = h.call(rate=call_rate, STREAM_ENCODING=law)
    conn = h.start(ch, server, "mono", "8k")
    g711 = audio.ENCODERS[law](tone(700, 8000, 0.5, 6000).tobytes())
    for i in range(0, len(g711), 161):                  # odd sizes: a byte is a whole sample
        server.send(conn, g711[i:i + 161])
    server.send(conn, '{"type":"mark","data":{"name":"end"}}')
    assert server.wait_for(lambda: any('"end"' in t for t in conn.texts), 6)
    assert abs(heard_tone(ch, 700, 0.5, call_rate) - 700) < 5
    heard = ch.heard()
    nz = np.nonzero(np.abs(heard.astype(int)) > 2)[0]
    assert abs((nz[-1] - nz[0] + 1) - call_rate // 2) < call_rate * 0.01    # 0.5 s, nothing more or less
    h.api("%s stop" % ch.uuid)
    assert conn.closed.wait(5)


@pytest.mark.parametrize("law", ["PCMU", "PCMA"])
def test_the_server_answers_with_stream_audio_in_g711(h, law):
    server = h.server()
    ch = h.call(rate=8000, STREAM_ENCODING=law)
    conn = h.start(ch, server, "mono", "8k")
    g711 = audio.ENCODERS[law](tone(500, 8000, 0.5, 6000).tobytes())
    server.send(conn, json.dumps({"type": "streamAudio", "data": {"audioDataType": law.lower(),
                                                                  "audioData": base64.b64encode(g711).decode()}}))
    assert abs(heard_tone(ch, 500, 0.5, 8000) - 500) < 5
    h.api("%s stop" % ch.uuid)
    assert conn.closed.wait(5)


def test_what_g711_refuses(h):
    server = h.server()
    ch = h.call(rate=16000, STREAM_ENCODING="PCMU")
    assert h.api("%s start %s mono 16k" % (ch.uuid, server.url)) == \
        "-ERR STREAM_ENCODING=PCMU sends 8 kHz G.711: use 8k, not 16000"
    assert h.api("%s start %s stereo 48000" % (ch.uuid, server.url)).startswith(
        "-ERR STREAM_ENCODING=PCMU sends 8 kHz G.711: use 8k, not 48000")
    ch.set_var("STREAM_SAMPLE_RATE", "16000")
    assert "STREAM_SAMPLE_RATE must be 8000 or unset, not 16000" in h.api("%s start %s mono 8k" % (ch.uuid, server.url))
    ch.set_var("STREAM_SAMPLE_RATE", None)
    ch.set_var("STREAM_ENCODING", "opus")
    assert h.api("%s start %s mono 8k" % (ch.uuid, server.url)) == \
        "-ERR STREAM_ENCODING='opus' is not one of L16, PCMU, PCMA"
    ch.set_vars(STREAM_ENCODING="L16", STREAM_PROTOCOL="twilio")
    assert h.api("%s start %s mono 8k" % (ch.uuid, server.url)).startswith(
        "-ERR STREAM_PROTOCOL=twilio streams mu-law (PCMU) only: STREAM_ENCODING=L16")
    assert ch.bug_count == 0 and not server.conns
    ch.set_var("STREAM_ENCODING", "ulaw")              # Twilio with PCMU: as always
    conn = h.start(ch, server, "mono", "8k")
    assert conn.headers["X-Audio-Stream-Encoding"] == "PCMU"
    assert server.wait_for(lambda: sum('"media"' in t for t in conn.texts) >= 5, 5)
    assert status(h, ch)["encoding"] == "PCMU"
    h.api("%s stop" % ch.uuid)
    assert conn.closed.wait(5)


def test_l16_stays_as_it_was(h):
    server = h.server()
    ch = h.call(rate=8000)
    conn = h.start(ch, server, "mono", "16k")
    assert conn.headers["X-Audio-Stream-Encoding"] == "L16"
    assert server.wait_for(lambda: len(conn.binaries) >= 5, 5)
    assert status(h, ch)["encoding"] == "L16"
    h.api("%s stop" % ch.uuid)
    assert conn.closed.wait(5)
    assert {len(b) for b in conn.binaries[:-1]} == {640}
