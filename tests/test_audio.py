import io
import wave

import numpy as np
import pytest

from audio_stream import audio
from .support import dominant_hz, tone


def chunks(b, n):
    return [b[i:i + n] for i in range(0, len(b), n)]


@pytest.mark.parametrize("rin,rout", [(8000, 16000), (16000, 8000), (8000, 44100), (16000, 48000),
                                      (48000, 8000), (8000, 8000), (16000, 24000)])
@pytest.mark.parametrize("channels", [1, 2])
def test_uplink_exact_counts_and_chunks(rin, rout, channels):
    x = tone(440, rin, 1.0)
    if channels == 2:
        x = np.stack([x, tone(1000, rin, 1.0)], axis=1).reshape(-1)
    up = audio.Uplink(rin, rout, channels, 20)
    out = []
    for c in chunks(x.tobytes(), rin // 50 * 2 * channels):
        out += up.feed(c)
    out += up.flush()
    assert sum(len(c) for c in out) == rout * 2 * channels
    assert {len(c) for c in out[:-1]} == {rout // 50 * 2 * channels}
    y = np.frombuffer(b"".join(out), "<i2")
    if channels == 2:
        assert abs(dominant_hz(y[0::2], rout, 0.5) - 440) < 5
        assert abs(dominant_hz(y[1::2], rout, 0.5) - 1000) < 5
    else:
        assert abs(dominant_hz(y, rout, 0.5) - 440) < 5


def test_frame_by_frame_resampling_has_no_edges():
    """Stateful: resampling 20 ms at a time equals resampling the whole signal at once."""
    x = tone(440, 8000, 1.0).tobytes()
    whole = audio.resampler(8000, 16000)
    ref = np.frombuffer(whole.process(x) + whole.flush(), "<i2").astype(int)
    parts = audio.resampler(8000, 16000)
    got = np.frombuffer(b"".join(parts.process(c) for c in chunks(x, 320)) + parts.flush(), "<i2").astype(int)
    assert len(got) == len(ref) == 16000
    assert np.abs(got - ref).max() <= 2
    d = np.abs(np.diff(got[400:-400]))
    assert d.max() < 1.2 * np.abs(np.diff(ref[400:-400])).max()


RATIOS = [(8000, 16000), (16000, 8000), (8000, 24000), (16000, 24000), (24000, 16000), (8000, 48000),
          (48000, 8000), (48000, 16000), (16000, 48000), (8000, 32000), (32000, 16000), (8000, 12000)]


def band_noise(rate, seconds, hi, seed=1):
    """Noise band-limited to 100 Hz..hi, int16 scale."""
    rng = np.random.default_rng(seed)
    n = int(rate * seconds)
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / rate)
    spec[(f > hi) | (f < 100)] = 0
    return (np.fft.irfft(spec, n) * 3000).astype(np.float32)


@pytest.mark.parametrize("rin,rout", RATIOS)
def test_polyphase_matches_sinc_best(rin, rout):
    """The fast path (polyphase FIR) against an independent high-quality resampler."""
    samplerate = pytest.importorskip("samplerate")
    r = audio.resampler(rin, rout)
    assert isinstance(r, audio.PolyphaseResampler)
    x = band_noise(rin, 1.0, 0.4 * min(rin, rout))
    pcm = np.rint(x).astype("<i2").tobytes()
    frame = rin // 50 * 2
    got = np.frombuffer(b"".join(r.process(c) for c in chunks(pcm, frame)) + r.flush(), "<i2").astype(float)
    assert len(got) == rout
    ref = samplerate.resample(np.rint(x).astype(np.float32), rout / rin, "sinc_best")
    a, b = 400, min(len(got), len(ref)) - 400
    snr = 10 * np.log10(np.sum(ref[a:b] ** 2) / np.sum((ref[a:b] - got[a:b]) ** 2))
    assert snr > 55, snr


@pytest.mark.parametrize("rin,rout", [(8000, 16000), (16000, 8000), (48000, 16000), (8000, 24000)])
def test_polyphase_rejects_images_and_aliases(rin, rout):
    """Upsampling must not create the mirror image of a tone; downsampling must remove what the
    lower rate cannot carry (instead of folding it back as an alias)."""
    r = audio.resampler(rin, rout)
    if rout > rin:
        f = 0.4 * rin
        y = np.frombuffer(r.process(tone(f, rin, 1.0, 10000).tobytes()) + r.flush(), "<i2").astype(float)
        seg = y[1000:-1000] * np.hanning(len(y) - 2000)
        spec = np.abs(np.fft.rfft(seg))
        fr = np.fft.rfftfreq(len(seg), 1.0 / rout)
        main = spec[np.abs(fr - f) < 20].max()
        image = spec[np.abs(fr - (rin - f)) < 20].max()
        assert 20 * np.log10(main / image) > 60
    else:
        y = np.frombuffer(r.process(tone(0.6 * rout, rin, 1.0, 10000).tobytes()) + r.flush(), "<i2")
        assert np.abs(y[500:-500].astype(int)).max() < 10        # was 10000 peak: >60 dB down


@pytest.mark.parametrize("rin,rout", [(8000, 16000), (16000, 24000), (48000, 8000)])
@pytest.mark.parametrize("channels", [1, 2])
def test_any_split_of_the_input_gives_the_same_output(rin, rout, channels):
    rng = np.random.default_rng(7)
    x = np.rint(band_noise(rin, 0.5, 0.4 * min(rin, rout))).astype("<i2")
    if channels == 2:
        x = np.stack([x, x[::-1]], axis=1).reshape(-1)
    pcm = x.tobytes()
    whole = audio.resampler(rin, rout, channels)
    ref = whole.process(pcm) + whole.flush()
    parts = audio.resampler(rin, rout, channels)
    out, i, step = [], 0, 2 * channels
    while i < len(pcm):
        n = int(rng.integers(0, 700)) * step
        out.append(parts.process(pcm[i:i + n]))
        i += n
    out.append(parts.flush())
    assert b"".join(out) == ref
    assert len(ref) == round(len(x) // channels * rout / rin) * 2 * channels
    if channels == 2:     # the channels are filtered independently: left of the stereo = mono
        mono = audio.resampler(rin, rout, 1)
        left = mono.process(x[0::2].tobytes()) + mono.flush()
        assert np.frombuffer(ref, "<i2")[0::2].tobytes() == left


def test_uncommon_ratios_use_libsamplerate():
    assert isinstance(audio.resampler(8000, 44100), audio.SincResampler)
    assert isinstance(audio.resampler(16000, 16000), audio.Passthrough)
    assert isinstance(audio.resampler(8000, 16000), audio.PolyphaseResampler)


def test_uplink_buffer_sizes_with_30ms_ptime():
    up = audio.Uplink(8000, 8000, 1, 60)
    x = tone(440, 8000, 0.99).tobytes()
    out = []
    for c in chunks(x, 480):  # 30 ms frames
        out += up.feed(c)
    out += up.flush()
    assert [len(c) for c in out[:-1]] == [960] * (len(out) - 1)
    assert sum(map(len, out)) == len(x)


def test_g711_matches_reference():
    audioop = pytest.importorskip("audioop")
    b = bytes(range(256))
    assert audio.ULAW[np.frombuffer(b, np.uint8)].tobytes() == audioop.ulaw2lin(b, 2)
    assert audio.ALAW[np.frombuffer(b, np.uint8)].tobytes() == audioop.alaw2lin(b, 2)


def wav_bytes(x, rate, channels=1, width=2):
    f = io.BytesIO()
    with wave.open(f, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(x)
    return f.getvalue()


def test_wav_decoding():
    x = tone(700, 16000, 0.2)
    pcm, rate = audio.decode_wav(wav_bytes(x.tobytes(), 16000))
    assert rate == 16000 and pcm == x.tobytes()
    st = np.stack([x, x], axis=1).reshape(-1)
    pcm, _ = audio.decode_wav(wav_bytes(st.tobytes(), 16000, 2))
    assert np.array_equal(np.frombuffer(pcm, "<i2"), x)
    u8 = ((x.astype(int) >> 8) + 128).astype(np.uint8)
    pcm, _ = audio.decode_wav(wav_bytes(u8.tobytes(), 8000, 1, 1))
    assert np.abs(np.frombuffer(pcm, "<i2").astype(int) - (x.astype(int) >> 8 << 8)).max() == 0
    with pytest.raises(audio.AudioFormatError, match="broken WAV"):
        audio.decode_wav(b"RIFF\x00\x00\x00\x00WAVEjunk")
    with pytest.raises(audio.AudioFormatError):
        audio.decode_wav(wav_bytes(b"\x00" * 12, 8000, 1, 3))


def test_downlink_carries_odd_byte():
    d = audio.Downlink(8000)
    x = tone(500, 8000, 0.1).tobytes()
    out = d.binary(x[:101], 8000) + d.binary(x[101:], 8000)
    assert out == x
