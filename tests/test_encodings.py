"""STREAM_ENCODING (L16, PCMU, PCMA) without a switch: the G.711 encoders (numpy and C) against each
other, the standard (audioop) and the decoders; the variable; the dialects' checks; the handshake
headers; the chunker; the server's G.711 binary frames on their way to the playback queue."""
import warnings

import numpy as np
import pytest

from audio_stream import accelerator, audio, config, dialects, protocol
from audio_stream.config import ConfigError, settings_from

from .support import dominant_hz, tone
from .test_parts import Host, player

ALL = np.arange(-32768, 32768, dtype="<i2")
LAWS = {"PCMU": (audio.encode_ulaw, audio.ULAW, 32124), "PCMA": (audio.encode_alaw, audio.ALAW, 32256)}
native = accelerator.native
needs_native = pytest.mark.skipif(native is None, reason="the compiled accelerator is not built here: %s"
                                  % accelerator.why_not)


def make(vars_, ptime=20):
    return settings_from(lambda n: vars_.get(n), ptime)


# ---- the encoders ------------------------------------------------------------------------------------

@pytest.mark.parametrize("law", ["PCMU", "PCMA"])
def test_encoder_matches_audioop_for_every_input(law):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop", reason="audioop left the standard library in Python 3.13")
    reference = audioop.lin2ulaw if law == "PCMU" else audioop.lin2alaw
    assert LAWS[law][0](ALL.tobytes()) == reference(ALL.tobytes(), 2)


@pytest.mark.parametrize("law", ["PCMU", "PCMA"])
def test_decoding_what_was_encoded_is_within_g711s_quantization(law):
    encode, decode, clip = LAWS[law]
    x = ALL.astype(int)
    back = decode[np.frombuffer(encode(ALL.tobytes()), np.uint8)].astype(int)
    err = np.abs(back - x)
    inside = np.abs(x) <= clip
    # 16 steps per segment, so a step is at most |x|/16: half of it, plus the low bits G.711 drops
    # (2 for μ-law, 3 for A-law) and the smallest segment's step
    assert (err[inside] <= np.maximum(np.abs(x[inside]), 256) / 32 + 8).all()
    assert err[~inside].max() == 32768 - clip                  # beyond the largest code: clipped to it
    assert np.array_equal(np.sign(back[np.abs(x) > 16]), np.sign(x[np.abs(x) > 16]))
    t = tone(1000, 8000, 1.0, amplitude=12000).astype(float)
    y = decode[np.frombuffer(encode(t.astype("<i2").tobytes()), np.uint8)].astype(float)
    snr = 10 * np.log10((t ** 2).sum() / ((t - y) ** 2).sum())
    assert snr > 35, snr


@pytest.mark.parametrize("law", ["PCMU", "PCMA"])
def test_every_code_comes_back_but_mu_laws_negative_zero(law):
    encode, decode, _ = LAWS[law]
    codes = np.frombuffer(encode(decode.astype("<i2").tobytes()), np.uint8)
    changed = {i: int(codes[i]) for i in range(256) if codes[i] != i}
    # μ-law has two zeros, 0xFF (+0) and 0x7F (-0): both decode to 0, which encodes as 0xFF
    assert changed == ({0x7F: 0xFF} if law == "PCMU" else {})


@needs_native
@pytest.mark.parametrize("law", ["PCMU", "PCMA"])
@pytest.mark.parametrize("chunk_bytes", [0, 160, 1000])
def test_the_c_encoder_is_the_numpy_one_for_every_input(law, chunk_bytes):
    """_accel.Capture's encoder (fed and flushed as the hangup tail is) against audio.py's table."""
    from audio_stream.switch.accel import ENCODING_CODES
    c = native.Capture(uuid=b"u", frame_bytes=320, chunk_bytes=chunk_bytes, encoding=ENCODING_CODES[law])
    data = ALL.tobytes()
    got = b"".join(c.feed(data[i:i + 6400]) for i in range(0, len(data), 6400))
    if chunk_bytes:
        assert len(got) % chunk_bytes == 0 and len(got) == len(ALL) // chunk_bytes * chunk_bytes
    got += c.flush()
    assert got == LAWS[law][0](data)


@needs_native
@pytest.mark.parametrize("mix", ["mono", "stereo"])
def test_the_c_capture_resamples_then_encodes_like_the_python_uplink(mix):
    """16 kHz call frames → 8 kHz PCMU chunks in C (polyphase filter, then the table): the Python
    Uplink with the same encoding gives the same bytes (the float sums may differ by one step of 16
    bits, so by at most one G.711 code)."""
    from audio_stream.switch.accel import ENCODING_CODES
    channels = 2 if mix == "stereo" else 1
    x = tone(440, 16000, 0.5)
    if channels == 2:
        x = np.stack([x, tone(1000, 16000, 0.5)], axis=1).reshape(-1)
    rs = audio.resampler(16000, 8000, channels)
    up = audio.Uplink(16000, 8000, channels, 20, "PCMU")
    c = native.Capture(uuid=b"u", frame_bytes=640, mix=mix, chunk_bytes=up.chunk_bytes,
                       taps=np.concatenate(rs.h).astype(np.float32), L=rs.L, M=rs.M, d=rs.d,
                       encoding=ENCODING_CODES["PCMU"])
    if channels == 1:
        fast = c.feed(x.tobytes()) + c.flush()
    else:             # a stereo capture pairs its two bugs' frames: feed(read, write)
        fast = c.feed(x[0::2].tobytes(), x[1::2].tobytes(), final=True) + c.flush()
    ref = b"".join(up.feed(x.tobytes()) + up.flush())
    assert len(fast) == len(ref) == 4000 * channels
    a, b = np.frombuffer(fast, np.uint8).astype(int), np.frombuffer(ref, np.uint8).astype(int)
    assert np.abs(a - b).max() <= 1


@pytest.mark.parametrize("law", ["PCMU", "PCMA"])
@pytest.mark.parametrize("channels", [1, 2])
def test_the_uplink_chunks_count_encoded_bytes(law, channels):
    up = audio.Uplink(16000, 8000, channels, 20, law)
    assert up.chunk_bytes == 160 * channels
    x = tone(440, 16000, 1.0)
    if channels == 2:
        x = np.stack([x, tone(1000, 16000, 1.0)], axis=1).reshape(-1)
    out = []
    for i in range(0, len(x), 320 * channels):
        out += up.feed(x[i:i + 320 * channels].tobytes())
    out += up.flush()
    assert {len(c) for c in out} == {160 * channels} and len(out) == 50
    pcm = LAWS[law][1][np.frombuffer(b"".join(out), np.uint8)].reshape(-1, channels)
    assert abs(dominant_hz(pcm[:, 0], 8000) - 440) < 5
    assert audio.sample_bytes(law) == 1 and audio.sample_bytes("L16") == 2


# ---- STREAM_ENCODING -----------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, encoding", [
    (None, "L16"), ("L16", "L16"), ("l16", "L16"), ("PCMU", "PCMU"), ("pcmu", "PCMU"), ("ulaw", "PCMU"),
    ("MuLaw", "PCMU"), (" mulaw ", "PCMU"), ("PCMA", "PCMA"), ("alaw", "PCMA"), ("ALaw", "PCMA")])
def test_stream_encoding_and_its_aliases(raw, encoding):
    s = make({"STREAM_ENCODING": raw} if raw else {})
    assert s.encoding == encoding and s.encoding_set == bool(raw)


@pytest.mark.parametrize("raw", ["g711", "PCM", "opus", "ulaw8", "u-law"])
def test_stream_encoding_refuses_anything_else(raw):
    with pytest.raises(ConfigError) as e:
        make({"STREAM_ENCODING": raw})
    assert str(e.value) == "STREAM_ENCODING='%s' is not one of L16, PCMU, PCMA" % raw


def test_an_audio_stream_conf_default_counts_as_set_and_a_bad_one_is_refused_there():
    s = settings_from(lambda n: None, 20, defaults={"STREAM_ENCODING": "alaw"})
    assert s.encoding == "PCMA" and s.encoding_set
    with pytest.raises(ConfigError):
        config.check_default("STREAM_ENCODING", "gsm")
    config.check_default("STREAM_ENCODING", "ulaw")


# ---- the dialects: what they refuse, what they send, what they take -----------------------------------

NATIVE = protocol.NativeDialect
TWILIO = dialects.dialect_class("twilio")


@pytest.mark.parametrize("law", ["PCMU", "PCMA"])
def test_g711_is_8k_only(law):
    s = make({"STREAM_ENCODING": law})
    assert NATIVE.refuse("mono", 8000, s) is None and NATIVE.refuse("stereo", 8000, s) is None
    assert NATIVE.refuse("mono", 16000, s) == "STREAM_ENCODING=%s sends 8 kHz G.711: use 8k, not 16000" % law
    assert "not 48000" in NATIVE.refuse("mixed", 48000, s)
    assert NATIVE.refuse("mono", 8000, make({"STREAM_ENCODING": law, "STREAM_SAMPLE_RATE": "8000"})) is None
    why = NATIVE.refuse("mono", 8000, make({"STREAM_ENCODING": law, "STREAM_SAMPLE_RATE": "16000"}))
    assert why == ("STREAM_ENCODING=%s: the server's binary audio is G.711 at 8000 Hz, so STREAM_SAMPLE_RATE must be "
                   "8000 or unset, not 16000" % law)
    assert NATIVE.refuse("mono", 16000, make({"STREAM_SAMPLE_RATE": "24000"})) is None     # L16: any


def test_twilio_keeps_mu_law():
    assert TWILIO.refuse("mono", 8000, make({})) is None
    assert TWILIO.refuse("mono", 8000, make({"STREAM_ENCODING": "PCMU"})) is None
    assert TWILIO.refuse("mono", 8000, make({"STREAM_ENCODING": "ulaw"})) is None
    for raw, shown in (("L16", "L16"), ("alaw", "PCMA")):
        assert TWILIO.refuse("mono", 8000, make({"STREAM_ENCODING": raw})) == (
            "STREAM_PROTOCOL=twilio streams mu-law (PCMU) only: STREAM_ENCODING=%s does not apply (leave it unset "
            "or PCMU)" % shown)
    d = TWILIO.for_stream("u", None, "mono", 8000, make({"STREAM_ENCODING": "PCMU"}))
    assert d.uplink_format().encoding == "PCMU" and not d.binary_audio    # its media() takes L16


@pytest.mark.parametrize("law", ["L16", "PCMU", "PCMA"])
@pytest.mark.parametrize("mix, channels", [("mono", 1), ("stereo", 2)])
def test_the_handshake_headers_say_the_encoding(law, mix, channels):
    d = NATIVE.for_stream("u", "meta", mix, 8000, make({"STREAM_ENCODING": law, "STREAM_BUFFER_SIZE": "40"}))
    assert d.uplink_format() == dialects.UplinkFormat(8000, channels, 40, law)
    headers = protocol.audio_headers(d.uplink_format())
    assert headers == {"X-Audio-Stream-Encoding": law, "X-Audio-Stream-Rate": "8000",
                       "X-Audio-Stream-Channels": str(channels)}
    assert protocol.audio_format(headers) == (law, 8000, channels)
    chunk = bytes(range(160))
    assert d.media(chunk) == (chunk,)                    # one binary message, as the capture made it


@pytest.mark.parametrize("law", ["L16", "PCMU", "PCMA"])
def test_the_servers_binary_frames_are_in_the_streams_encoding(law):
    d = NATIVE.for_stream("u", None, "mono", 8000, make({"STREAM_ENCODING": law}))
    assert d.parse_binary(b"\x01\x02\x03") == protocol.BinaryAudio(b"\x01\x02\x03", law)


@pytest.mark.parametrize("law", ["PCMU", "PCMA"])
def test_the_player_decodes_g711_frames_whole_bytes_no_carry(law):
    host = Host(encoding=law)
    p = player(host)
    x = tone(500, 8000, 0.2)
    g711 = LAWS[law][0](x.tobytes())
    p.handle(protocol.BinaryAudio(g711[:161], law))           # an odd length is 161 samples, nothing held
    p.handle(protocol.BinaryAudio(g711[161:], law))
    assert p.queue.queued == 2 * len(x)
    data, _, _, _ = p.queue.pull(2 * len(x))
    assert data == LAWS[law][1][np.frombuffer(g711, np.uint8)].tobytes()
    # the same bytes as L16 would be half as many samples, the odd byte carried
    p2 = player(Host())
    p2.handle(protocol.BinaryAudio(g711[:161]))
    assert p2.queue.queued == 160
