"""Audio: uplink resampling and chunking, downlink decoding, the playback queue. Pure.

Everything here runs on the loop thread except PlaybackQueue.pull(), which the media thread calls
once a frame; the queue's lock is held for microseconds.
"""
import io
import threading
from math import gcd
import time
import wave
from collections import deque

import numpy as np
import samplerate

CONVERTER = "sinc_fastest"   # libsamplerate, for ratios the polyphase filter does not take
MAX_FACTOR = 6               # polyphase for rate_out/rate_in = L/M with L, M <= this (8k..48k)


def to_float(pcm16):
    """int16 bytes → float32 samples, same scale (±32768)."""
    return np.frombuffer(pcm16, dtype="<i2").astype(np.float32)


def to_pcm16(x):
    """float32 samples at int16 scale → int16 bytes (rounded, clipped). Works in place."""
    np.rint(x, out=x)
    np.clip(x, -32768, 32767, out=x)
    return x.astype("<i2").tobytes()


def resampler(rate_in, rate_out, channels=1, lead=False):
    """A stateful int16 resampler with exact output counts: after n input frames and flush(),
    round(n * rate_out / rate_in) frames have come out. Polyphase FIR for the usual telephony
    ratios (8k/16k/24k/32k/48k...), libsamplerate for the others; a copy when rates are equal.
    `lead` (polyphase): the output starts with the filter's lookahead as silence, so that at any
    time about input × ratio has come out (20 ms in, 20 ms out, from the first message on)."""
    if rate_in == rate_out:
        return Passthrough(rate_in, channels)
    g = gcd(rate_in, rate_out)
    if rate_out // g <= MAX_FACTOR and rate_in // g <= MAX_FACTOR:
        return PolyphaseResampler(rate_in, rate_out, channels, lead)
    return SincResampler(rate_in, rate_out, channels)


class Passthrough:
    def __init__(self, rate, channels=1):
        self.rate_in = self.rate_out = rate
        self.channels = channels
        self.ratio = 1.0

    def process(self, pcm16):
        return bytes(pcm16)

    def flush(self):
        return b""


class SincResampler:
    """libsamplerate (sinc_fastest, ≈30 µs per 20 ms frame at 8→16 kHz). libsamplerate holds back
    a few samples of filter delay, which flush() drains."""

    def __init__(self, rate_in, rate_out, channels=1):
        self.rate_in, self.rate_out, self.channels = rate_in, rate_out, channels
        self.ratio = rate_out / rate_in
        self._r = samplerate.Resampler(CONVERTER, channels)
        self._in = 0    # frames (samples per channel) consumed
        self._out = 0   # frames produced

    def _shape(self, x):
        return x if self.channels == 1 else x.reshape(-1, self.channels)

    def process(self, pcm16):
        """int16 bytes in → int16 bytes out (may be shorter or longer than ratio × input)."""
        n = len(pcm16) // (2 * self.channels)
        if not n:
            return b""
        self._in += n
        y = self._r.process(self._shape(to_float(pcm16[:n * 2 * self.channels])), self.ratio)
        self._out += len(y)
        return to_pcm16(np.asarray(y, dtype=np.float32).reshape(-1))

    def flush(self):
        """Drain the filter delay so the total output is exactly round(input × ratio)."""
        want = int(round(self._in * self.ratio)) - self._out
        if want <= 0:
            return b""
        pad = np.zeros((int(want / self.ratio) + 64) * self.channels, dtype=np.float32)
        y = self._r.process(self._shape(pad), self.ratio, end_of_input=True)
        y = y[:want]
        self._r.reset()
        self._in = self._out = 0
        return to_pcm16(np.asarray(y, dtype=np.float32).reshape(-1))


class PolyphaseResampler:
    """Rational-ratio resampler, rate_out/rate_in = L/M: a Kaiser-windowed sinc low-pass run as L
    polyphase branches with numpy's convolve. About 3× cheaper than libsamplerate's sinc_fastest
    for 8→16 kHz (the common case, once per frame per stream), ≈67 dB from libsamplerate's
    sinc_best on band-limited noise and ≈72 dB image/alias rejection (ZERO_CROSSINGS = 16).

    Output j is the input at time j·M/L, filtered with the filter centred on it (no delay): it
    waits for the inputs up to half the filter length ahead; flush() feeds silence for those.
    With `lead`, the first output after a reset is `self.lead` samples of silence (that wait, at
    the output rate), so that whole 20 ms frames in come out as whole frames; flush() counts them.
    """

    ZERO_CROSSINGS = 16      # per side of the sinc, at the lower of the two rates
    BETA = 7.0               # Kaiser window
    BAND = 0.92              # cutoff, as a fraction of the lower Nyquist frequency

    def __init__(self, rate_in, rate_out, channels=1, lead=False):
        g = gcd(rate_in, rate_out)
        self.L, self.M = L, M = rate_out // g, rate_in // g
        self.rate_in, self.rate_out, self.channels = rate_in, rate_out, channels
        self.ratio = rate_out / rate_in
        big = max(L, M)
        self.K = K = -(-2 * self.ZERO_CROSSINGS * big // L)     # taps per branch
        n = K * L
        self.d = d = n // 2                                      # the centre, at L × rate_in
        t = np.arange(n) - d
        window = np.i0(self.BETA * np.sqrt(np.clip(1 - (t / (n / 2.0)) ** 2, 0, 1))) / np.i0(self.BETA)
        cutoff = 0.5 / big * self.BAND
        h = 2 * cutoff * np.sinc(2 * cutoff * t) * window * L
        # np.convolve(x, f)[i] = sum_k f[k] x[i - k]: branch p's f[k] = h[p + k·L] weighs the input
        # k samples before the newest one the output needs
        self.h = [h[p::L].astype(np.float32) for p in range(L)]
        self.lead = d // M if lead else 0     # the outputs that wait for the lookahead (_available)
        self._reset()

    def _reset(self):
        self.base = -(self.K - 1)             # input index of buf[0] (silence before the start)
        self.buf = [np.zeros(self.K - 1, dtype=np.float32) for _ in range(self.channels)]
        self.n_in = 0
        self.n_out = 0
        self._led = False

    def _newest(self, j):
        """The newest input index that output j needs."""
        return (j * self.M + self.d) // self.L

    def _run(self, upto):
        """Outputs n_out .. upto-1, interleaved float32 at int16 scale."""
        j0 = self.n_out
        count = upto - j0
        ch = self.channels
        y = np.empty(count * ch, dtype=np.float32)
        if count <= 0:
            return y
        L, M, K = self.L, self.M, self.K
        for r in range(min(L, count)):
            j = j0 + r
            f = self.h[(j * M + self.d) % L]
            q = (count - r + L - 1) // L                  # outputs j, j+L, j+2L, ...
            e = self._newest(j) - self.base               # their newest inputs: e, e+M, e+2M, ...
            lo, hi = e - K + 1, e + (q - 1) * M + 1
            for c in range(ch):
                v = np.convolve(self.buf[c][lo:hi], f, "valid")
                y[r * ch + c::L * ch] = v[::M] if M > 1 else v
        self.n_out = upto
        drop = self._newest(upto) - K + 1 - self.base    # inputs no later output needs
        if drop > 0:
            self.buf = [b[drop:] for b in self.buf]
            self.base += drop
        return y

    def _available(self):
        last = self.base + len(self.buf[0]) - 1           # the newest input present
        return max(self.n_out, (last * self.L + self.L - 1 - self.d) // self.M + 1)

    def process(self, pcm16):
        ch = self.channels
        n = len(pcm16) // (2 * ch)
        if not n:
            return b""
        x = to_float(pcm16[:n * 2 * ch])
        if ch == 1:
            self.buf[0] = np.concatenate((self.buf[0], x))
        else:
            x = x.reshape(-1, ch)
            self.buf = [np.concatenate((self.buf[c], x[:, c])) for c in range(ch)]
        self.n_in += n
        y = to_pcm16(self._run(self._available()))
        if self.lead and not self._led:
            self._led = True
            return bytes(2 * self.lead * ch) + y
        return y

    def flush(self):
        want = int(round(self.n_in * self.ratio)) - (self.lead if self._led else 0)
        y = b""
        if want > self.n_out:
            missing = self._newest(want - 1) - (self.base + len(self.buf[0]) - 1)
            if missing > 0:
                pad = np.zeros(missing, dtype=np.float32)
                self.buf = [np.concatenate((b, pad)) for b in self.buf]
            y = to_pcm16(self._run(want))
        self._reset()
        return y


class Pairer:
    """Both directions of a call in one stream (`mixed`: their sum; `stereo`: left the caller, right
    what the caller hears), from two single-direction bugs read separately, so that neither side can
    hold the other back.

    The core pairs a READ|WRITE bug's frames first in, first out and never lets the read side go
    alone while it holds any write frame: each frame the write side misses (a playback queue that ran
    dry for a frame on a parked call) would leave one more read frame behind for good, and the stream
    would fall further behind the call. Here: frames pair as they come; a read frame whose write
    partner has not come within `wait_s` (a bridged call's write side lags by up to a frame), or at
    once when the write side is idle (nothing for `idle_s`), goes out with silence on the write side;
    write frames that come with no read frame to pair are kept up to two frames (a lagging read
    side), older ones are dropped, as the core does.

    push(read, write, now) takes whole frames of each side (int16 bytes, `frame_bytes` per frame of
    one side) and returns the stream's audio now complete; drain() returns the rest at the end.
    audio_stream/_accel.c pairs the same way for the accelerated path.
    """

    WRITE_AHEAD = 2           # write frames kept with no read frame to pair

    def __init__(self, frame_bytes, stereo, wait_s=0.03, idle_s=0.06):
        self.fb = frame_bytes
        self.stereo = stereo
        self.wait_s = wait_s
        self.idle_s = idle_s
        self.rq = bytearray()
        self.ages = deque()      # when each read frame in rq came
        self.wq = bytearray()
        self.last_write = -1e9

    def push(self, read, write, now):
        fb = self.fb
        nr = len(read) // fb
        if nr:
            self.rq += read[:nr * fb]
            self.ages.extend([now] * nr)
        if len(write) >= fb:
            self.wq += write[:len(write) // fb * fb]
            self.last_write = now
        paired = min(len(self.rq), len(self.wq)) // fb
        pad = 0
        idle = now - self.last_write >= self.idle_s
        ages = self.ages
        while paired + pad < len(ages) and (idle or now - ages[paired + pad] >= self.wait_s):
            pad += 1
        out = self._take(paired, pad)
        if not self.rq and len(self.wq) > self.WRITE_AHEAD * fb:
            del self.wq[:len(self.wq) - self.WRITE_AHEAD * fb]
        return out

    def drain(self):
        """The end: every read frame left, paired where possible; write frames left are dropped."""
        paired = min(len(self.rq), len(self.wq)) // self.fb
        out = self._take(paired, len(self.ages) - paired)
        self.wq.clear()
        return out

    def _take(self, paired, pad):
        fb, k = self.fb, paired + pad
        if not k:
            return b""
        r = np.frombuffer(bytes(self.rq[:k * fb]), dtype="<i2")
        w = np.zeros(len(r), dtype="<i2")
        if paired:
            w[:paired * fb // 2] = np.frombuffer(bytes(self.wq[:paired * fb]), dtype="<i2")
        del self.rq[:k * fb]
        del self.wq[:paired * fb]
        for _ in range(k):
            self.ages.popleft()
        if self.stereo:
            return np.stack((r, w), axis=1).astype("<i2").tobytes()
        return np.clip(r.astype(np.int32) + w, -32768, 32767).astype("<i2").tobytes()


class Uplink:
    """Channel frames (L16 at the call's rate, already in the stream's layout) → binary messages
    of `chunk_ms` at the stream's rate, in `encoding` (L16; PCMU/PCMA: G.711, 1 byte a sample)."""

    def __init__(self, rate_in, rate_out, channels, chunk_ms, encoding="L16"):
        self.resampler = resampler(rate_in, rate_out, channels)
        self.encode = ENCODERS.get(encoding)
        self.chunk_bytes = rate_out * chunk_ms // 1000 * sample_bytes(encoding) * channels
        self._buf = bytearray()

    def _add(self, pcm16):
        self._buf += self.encode(pcm16) if self.encode is not None and pcm16 else pcm16

    def feed(self, pcm16):
        """Returns the complete chunks now available (a list of bytes)."""
        self._add(self.resampler.process(pcm16))
        return self._take()

    def _take(self):
        out = []
        cb = self.chunk_bytes
        while len(self._buf) >= cb:
            out.append(bytes(self._buf[:cb]))
            del self._buf[:cb]
        return out

    def flush(self):
        """Everything still held, as a list of chunks (the last one may be short)."""
        self._add(self.resampler.flush())
        out = self._take()
        if self._buf:
            out.append(bytes(self._buf))
            self._buf.clear()
        return out


# ---- downlink decoding --------------------------------------------------------------------

def _ulaw_table():
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    sign = u & 0x80
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(sign, -magnitude, magnitude).astype("<i2")


def _alaw_table():
    a = np.arange(256, dtype=np.int32) ^ 0x55
    sign = a & 0x80
    exponent = (a >> 4) & 0x07
    mantissa = a & 0x0F
    magnitude = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << (exponent - 1))
    return np.where(sign, magnitude, -magnitude).astype("<i2")


ULAW = _ulaw_table()
ALAW = _alaw_table()


# ---- G.711 encoding (STREAM_ENCODING=PCMU/PCMA on the native protocol's uplink) -----------------------
#
# ITU-T G.711 as Sun's public-domain g711.c computes it, bit for bit (CPython's audioop.lin2ulaw and
# lin2alaw are the same code): μ-law drops the 2 low bits first (14-bit), A-law the 3 low bits
# (13-bit). One 65536-entry table per law, indexed by the int16's bit pattern; audio_stream/_accel.c
# builds the same tables for the accelerated path. (Twilio mode keeps its own μ-law encoder,
# twilio.ULAW_ENCODE, FreeSWITCH's g711.h arithmetic, which rounds 508 negative values one step
# differently.)

SEG_ULAW_END = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
SEG_ALAW_END = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])


def _by_bit_pattern(codes):
    table = np.empty(65536, dtype=np.uint8)
    table[np.arange(-32768, 32768) & 0xFFFF] = codes
    return table


def _linear_to_ulaw_table():
    x = np.arange(-32768, 32768, dtype=np.int32) >> 2
    neg = x < 0
    mag = np.minimum(np.abs(x), 8159) + (0x84 >> 2)               # clip, then the bias
    seg = np.searchsorted(SEG_ULAW_END, mag)                      # first segment whose end >= mag
    s = np.minimum(seg, 7)
    code = np.where(seg >= 8, 0x7F, (s << 4) | ((mag >> (s + 1)) & 0x0F))
    return _by_bit_pattern(code ^ np.where(neg, 0x7F, 0xFF))


def _linear_to_alaw_table():
    x = np.arange(-32768, 32768, dtype=np.int32) >> 3
    neg = x < 0
    mag = np.where(neg, -x - 1, x)
    seg = np.searchsorted(SEG_ALAW_END, mag)
    s = np.minimum(seg, 7)
    code = np.where(seg >= 8, 0x7F, (s << 4) | ((mag >> np.maximum(s, 1)) & 0x0F))
    return _by_bit_pattern(code ^ np.where(neg, 0x55, 0xD5))


LINEAR_TO_ULAW = _linear_to_ulaw_table()
LINEAR_TO_ALAW = _linear_to_alaw_table()


def encode_ulaw(pcm16):
    """int16 little-endian bytes → G.711 μ-law bytes, one per sample."""
    return LINEAR_TO_ULAW[np.frombuffer(pcm16, dtype="<u2", count=len(pcm16) // 2)].tobytes()


def encode_alaw(pcm16):
    """int16 little-endian bytes → G.711 A-law bytes, one per sample."""
    return LINEAR_TO_ALAW[np.frombuffer(pcm16, dtype="<u2", count=len(pcm16) // 2)].tobytes()


ENCODERS = {"PCMU": encode_ulaw, "PCMA": encode_alaw}     # protocol.ENCODINGS; L16 needs none


def sample_bytes(encoding):
    """Bytes per sample per channel of a stream's binary audio: 2 for L16, 1 for G.711."""
    return 1 if encoding in ENCODERS else 2


class AudioFormatError(ValueError):
    pass


def decode_wav(data):
    """WAV bytes → (mono int16 bytes, sample rate). PCM 8/16-bit, mono or stereo (averaged)."""
    try:
        with wave.open(io.BytesIO(data), "rb") as w:
            channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            frames = w.readframes(w.getnframes())
    except (wave.Error, EOFError, ValueError) as e:
        raise AudioFormatError("broken WAV: %s" % e) from None
    if channels not in (1, 2):
        raise AudioFormatError("WAV with %d channels (1 or 2 supported)" % channels)
    if not 8000 <= rate <= 192000:
        raise AudioFormatError("WAV sample rate %d out of range" % rate)
    if width == 2:
        x = np.frombuffer(frames[:len(frames) // 2 * 2], dtype="<i2").astype(np.int32)
    elif width == 1:
        x = (np.frombuffer(frames, dtype=np.uint8).astype(np.int32) - 128) << 8
    else:
        raise AudioFormatError("WAV with %d-bit samples (8 or 16 supported)" % (width * 8))
    if channels == 2:
        x = x[:len(x) // 2 * 2].reshape(-1, 2).sum(axis=1) // 2
    return x.astype("<i2").tobytes(), rate


def decode(audio_type, payload, sample_rate):
    """Decoded mono int16 bytes and their rate, for the types we can play ourselves."""
    if audio_type == "raw":
        return payload[:len(payload) // 2 * 2], sample_rate
    if audio_type == "wav":
        return decode_wav(payload)
    if audio_type == "pcmu":
        return ULAW[np.frombuffer(payload, dtype=np.uint8)].tobytes(), 8000
    if audio_type == "pcma":
        return ALAW[np.frombuffer(payload, dtype=np.uint8)].tobytes(), 8000
    raise AudioFormatError("no decoder for %s" % audio_type)


class Downlink:
    """Server audio at any rate → mono int16 at the call's rate, continuous across messages.
    `make_resampler(rate_in, rate_out, channels, lead=...)`: resampler() or the accelerated one."""

    def __init__(self, rate_out, make_resampler=None):
        self.rate_out = rate_out
        self._make = make_resampler or resampler
        self._rs = None
        self._carry = b""   # odd trailing byte of a binary frame

    def convert(self, pcm16, rate_in):
        if self._rs is None or self._rs.rate_in != rate_in:
            self._rs = self._make(rate_in, self.rate_out, 1, lead=True)
        return self._rs.process(pcm16)

    def binary(self, data, rate_in):
        """A binary frame of raw L16: an odd trailing byte is carried to the next frame."""
        if self._carry:
            data = self._carry + data
        cut = len(data) & ~1
        self._carry = data[cut:]
        return self.convert(data[:cut], rate_in)

    def reset(self):
        """After a clear: no old filter state or half sample may leak into new audio."""
        self._rs = None
        self._carry = b""


AHEAD_MS = 80      # queued beyond the jitter allowance: audio sent ahead, it plays at once


def jitter_bytes(rate, jitter_ms):
    """How much audio a burst needs to play without waiting out the jitter allowance."""
    return rate * (jitter_ms + AHEAD_MS) // 1000 * 2 if jitter_ms else 0


class PlaybackQueue:
    """Audio waiting to be played into the call, with marks. Loop thread pushes, media thread pulls.

    Positions count bytes ever pushed; a mark sits at the position of the end of the queue when it
    arrived and is reached once that many bytes have been played.

    The queue owns `playing` (changed only under its lock): pull() starts it with the first frame it
    returns and ends it when it finds the queue dry; clear(), the pause and stop_playing() end it and
    say whether it was on, so exactly one side fires playback_stopped.

    Real-time servers: a burst that starts from an empty queue waits `jitter_s` before it plays, so
    that a message arriving up to that much late still finds audio (no silent frame inside
    continuous audio), unless `jitter_bytes` (the allowance + 80 ms) are queued already: audio sent
    ahead (a TTS sentence) plays at once. When the queue runs dry while playing (or holds only a
    short tail, waiting for the rest of a frame) and plays again within `session_gap_s`, the time
    the call waited is *debt*: latency a real-time stream gained
    that the server did not ask for; latency recovery (policy.LatencyPolicy) may drop up to that
    much (silence first). Audio a server sends ahead of time never creates debt.

    audio_stream/_accel.c's Player is the same queue in C, for the accelerated path; the tests run
    both against the same expectations.
    """

    def __init__(self, rate, max_ms, clock=time.monotonic, jitter_ms=0, ptime_ms=20, hold_ms=40,
                 session_gap_ms=1000):
        self.rate = rate
        self.max_bytes = rate * max_ms // 1000 * 2
        self._lock = threading.Lock()
        self._chunks = deque()
        self._head = 0          # bytes of _chunks[0] already played
        self.queued = 0         # bytes waiting
        self.pushed = 0         # position: bytes ever pushed
        self.played = 0         # position: bytes ever played
        self._marks = deque()   # (position, name)
        self.paused = False
        self.playing = False
        self._clock = clock
        self._last_push = -1e9
        self._first_push = -1e9
        self.hold_s = hold_ms / 1000.0   # a short tail waits this long for more audio before it plays
        self.jitter_s = jitter_ms / 1000.0
        self.jitter_bytes = jitter_bytes(rate, jitter_ms)
        self.frame_bytes = rate * ptime_ms // 1000 * 2
        self.session_gap_s = session_gap_ms / 1000.0
        self._starting = True
        self._dry_since = None
        self.debt = 0           # bytes
        self._min_queued = None
        self.dormant = False    # the consumer sleeps (no callbacks) until take_wake() says so

    def push(self, pcm16):
        """Queue audio; False (nothing queued) if it would go over the cap."""
        if not pcm16:
            return True
        with self._lock:
            if self.queued + len(pcm16) > self.max_bytes:
                return False
            now = self._clock()
            if not self.queued and not self.playing:
                self._starting = True
                self._first_push = now
            self._chunks.append(bytes(pcm16))
            self.queued += len(pcm16)
            self.pushed += len(pcm16)
            self._last_push = now
        return True

    def sleep_if_idle(self):
        """Media thread: nothing to play (empty or paused)? Then mark the consumer dormant and
        return True. Atomic with push()/take_wake(), so audio cannot arrive unnoticed."""
        with self._lock:
            if self.playing or (self.queued and not self.paused):
                return False
            self.dormant = True
            return True

    def take_wake(self):
        """Loop thread, after a push or a resume: True (once) if the consumer is dormant and
        there is audio to play: the caller must wake it."""
        with self._lock:
            if self.dormant and self.queued and not self.paused:
                self.dormant = False
                return True
            return False

    def mark(self, name):
        """Place a mark at the end of the queue; True if nothing is queued (acknowledge now)."""
        with self._lock:
            if not self.queued:
                return True
            self._marks.append((self.pushed, name))
            return False

    def _reset_burst(self):
        self.playing = False
        self._starting = True
        self._dry_since = None
        self.debt = 0

    def clear(self):
        """Drop everything queued. Returns (names of the marks dropped, whether it was playing)."""
        with self._lock:
            self._chunks.clear()
            self._head = 0
            self.pushed -= self.queued
            self.queued = 0
            names = [n for _, n in self._marks]
            self._marks.clear()
            was = self.playing
            self._reset_burst()
            return names, was

    def set_paused(self, paused):
        """Hold or resume. Returns whether it was playing (a pause ends it)."""
        with self._lock:
            was = self.playing
            self.paused = paused
            if paused:
                self._reset_burst()
            return was and paused

    def stop_playing(self):
        """The consumer is gone: not playing any more. Returns whether it was."""
        with self._lock:
            was, self.playing = self.playing, False
            return was

    def clear_marks(self):
        with self._lock:
            names = [n for _, n in self._marks]
            self._marks.clear()
            return names

    @property
    def queued_ms(self):
        return self.queued * 1000 // (2 * self.rate)

    @property
    def marks_waiting(self):
        return len(self._marks)

    def take_stats(self):
        """(the least queued while playing since the last call, or None; the debt in bytes)."""
        with self._lock:
            m, self._min_queued = self._min_queued, None
            return m, self.debt

    def _take(self, nbytes):
        """Under the lock: up to nbytes from the head (bytes, maybe short)."""
        parts = []
        need = nbytes
        while need and self._chunks:
            c = self._chunks[0]
            avail = len(c) - self._head
            take = avail if avail <= need else need
            parts.append(c[self._head:self._head + take] if (self._head or take < len(c)) else c)
            need -= take
            if take == avail:
                self._chunks.popleft()
                self._head = 0
            else:
                self._head += take
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _reached(self):
        reached = None
        while self._marks and self._marks[0][0] <= self.played:
            if reached is None:
                reached = []
            reached.append(self._marks.popleft()[1])
        return reached

    def drop(self, nbytes, frame_bytes, silent_below=0):
        """Latency recovery: drop up to `nbytes` from the head, whole frames only; with
        `silent_below`, only frames whose peak is below it (within the next second). Positions move
        on as if played, so marks stay in order. Returns (bytes dropped, marks reached)."""
        if frame_bytes <= 0 or frame_bytes % 2:
            return 0, None
        with self._lock:
            scan = min(self.queued // frame_bytes, 50)
            limit = nbytes // frame_bytes
            if not silent_below:
                scan = min(scan, limit)
            kept, dropped, n = [], 0, 0
            while n < scan and dropped // frame_bytes < limit:
                frame = self._take(frame_bytes)
                n += 1
                if silent_below and np.abs(np.frombuffer(frame, dtype="<i2").astype(np.int32)).max() >= silent_below:
                    kept.append(frame)
                else:
                    dropped += frame_bytes
            if kept:
                if self._head:
                    self._chunks[0] = self._chunks[0][self._head:]
                    self._head = 0
                self._chunks.appendleft(b"".join(kept))
            self.queued -= dropped
            self.played += dropped
            self.debt = max(0, self.debt - dropped)
            return dropped, self._reached()

    def pull(self, nbytes):
        """Media thread: the next `nbytes` of audio. Returns (data, marks, started, done): data
        None when there is nothing to play now; marks the names of the marks reached by this frame
        (or None); started True on the first frame of a burst; done True when the queue is found dry
        while playing.

        A burst from empty waits for its jitter cushion (see the class); a tail shorter than
        `nbytes` is held back while more audio may still be arriving (a server streaming in real
        time), then played padded with silence.
        """
        with self._lock:
            if self.paused or not self.queued:
                if self.playing and not self.queued and not self.paused:
                    self.playing = False
                    self._starting = True
                    if self._dry_since is None:
                        self._dry_since = self._clock()
                    return None, None, False, True
                return None, None, False, False
            now = self._clock()
            if (self._starting and self.jitter_s and self.queued < self.jitter_bytes
                    and now - self._first_push < self.jitter_s):
                return None, None, False, False
            if self.queued < nbytes and now - self._last_push < self.hold_s:
                # a short tail: more may be on its way. While playing, the call goes without this
                # frame as if the queue were dry (a server whose messages are not whole frames)
                if self.playing and self._dry_since is None:
                    self._dry_since = now
                return None, None, False, False
            data = self._take(nbytes)
            got = len(data)
            self.queued -= got
            self.played += got
            if self._min_queued is None or self.queued < self._min_queued:
                self._min_queued = self.queued
            reached = self._reached()
            started = not self.playing
            if self._dry_since is not None:               # the call waited this long for more of the burst
                dry = now - self._dry_since
                self.debt = self.debt + int(dry * self.rate) * 2 if dry < self.session_gap_s else 0
                self._dry_since = None
            self.playing = True
            self._starting = False
        if got < nbytes:
            data += bytes(nbytes - got)
        return data, reached, started, False
