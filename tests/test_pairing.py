"""Both sides of a call in one stream (mixed, stereo): audio.Pairer and the accelerator's pairing in
C, against the same expectations. Pure: no switch; time is set by the test."""
import numpy as np
import pytest

from audio_stream import accelerator, audio

native = accelerator.native
FB = 320        # one 20 ms frame of one side at 8 kHz


class PyPairer:
    def __init__(self, stereo):
        self.p = audio.Pairer(FB, stereo)

    def push(self, r, w, now, final=False):
        out = self.p.push(r, w, now)
        return out + self.p.drain() if final else out


class CPairer:
    """The C pairing inside an accelerated capture with no bug: feed() pairs, then passes through."""

    def __init__(self, stereo):
        self.c = native.Capture(b"pairing-test", FB, "stereo" if stereo else "mixed")

    def push(self, r, w, now, final=False):
        native.set_clock(int(now * 1e9))
        return self.c.feed(r, w, final=final)


@pytest.fixture(params=["python", "c"])
def pairer(request):
    if request.param == "c" and native is None:
        pytest.skip("the compiled accelerator is not built here: %s" % accelerator.why_not)
    yield PyPairer if request.param == "python" else CPairer
    if native is not None:
        native.set_clock(None)


def frame(v):
    return np.full(FB // 2, v, dtype="<i2").tobytes()


def samples(b):
    return np.frombuffer(b, dtype="<i2")


def test_stereo_pairs_left_caller_right_what_it_hears(pairer):
    p = pairer(stereo=True)
    out = samples(p.push(frame(100) + frame(101), frame(200) + frame(201), 0.0))
    assert len(out) == 2 * FB                    # two frames, two channels
    assert (out[0::2] == np.repeat([100, 101], FB // 2)).all()
    assert (out[1::2] == np.repeat([200, 201], FB // 2)).all()


def test_mixed_is_the_saturating_sum(pairer):
    p = pairer(stereo=False)
    out = samples(p.push(frame(30000) + frame(-100), frame(30000) + frame(50), 0.0))
    assert (out[:FB // 2] == 32767).all() and (out[FB // 2:] == -50).all()


def test_a_read_frame_waits_for_a_lagging_write_side_then_goes_padded(pairer):
    p = pairer(stereo=True)
    p.push(b"", frame(1), 0.0)                    # the write side is live (not idle)
    assert len(p.push(frame(5), b"", 0.0)) == FB * 2   # pairs with the write frame that was there
    assert p.push(frame(6), b"", 0.010) == b""    # its partner lags: it waits...
    out = samples(p.push(b"", frame(7), 0.015))   # ...and pairs when it comes
    assert (out[0::2] == 6).all() and (out[1::2] == 7).all()
    assert p.push(frame(8), b"", 0.020) == b""
    out = samples(p.push(b"", b"", 0.051))       # 31 ms without a partner: out, with silence
    assert (out[0::2] == 8).all() and (out[1::2] == 0).all()


def test_an_idle_write_side_holds_nothing_back(pairer):
    """A parked call: the core writes nothing to the caller. The caller's audio goes out at once."""
    p = pairer(stereo=False)
    out = samples(p.push(frame(9), b"", 5.0))
    assert len(out) == FB // 2 and (out == 9).all()


def test_write_frames_with_nothing_to_pair_are_kept_two_deep(pairer):
    p = pairer(stereo=True)
    p.push(b"", frame(1) + frame(2) + frame(3) + frame(4), 0.0)
    out = samples(p.push(frame(10) + frame(11) + frame(12), b"", 0.001))
    assert list(out[1::2][::FB // 2]) == [3, 4]   # 1 and 2 were dropped; the third read frame waits
    assert len(out) == 2 * FB


def test_final_drains_the_read_side(pairer):
    p = pairer(stereo=True)
    p.push(b"", frame(1), 0.0)
    out = samples(p.push(frame(2) + frame(3), b"", 0.001, final=True))
    assert list(out[0::2][::FB // 2]) == [2, 3] and list(out[1::2][::FB // 2]) == [1, 0]


def test_a_write_side_that_misses_frames_never_holds_the_caller_back(pairer):
    """The bug this design fixes: the core's own pairing (one READ|WRITE bug) left one more read frame
    behind for every frame the write side missed, so a stereo stream fell further behind the call each
    time playback ran dry for a frame. Here the stream keeps up with the caller."""
    p = pairer(stereo=True)
    out = 0
    for tick in range(1000):                     # 10 s of 10 ms passes; a frame every other pass
        now = tick * 0.010
        r = frame(tick % 100) if tick % 2 == 0 else b""
        w = frame(7) if tick % 2 == 0 and (tick // 2) % 10 != 3 else b""   # every 10th write missing
        out += len(p.push(r, w, now)) // (2 * FB)
    assert out >= 500 - 3                        # every read frame out but the last few (≤ 30 ms)
