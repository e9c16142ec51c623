"""The playback queue, both implementations against the same expectations: audio.PlaybackQueue
(pure Python) and the compiled accelerator's C queue behind switch/accel.py's AccelQueue. Pure
tests: no switch, no threads; time is set by the test."""
import pytest

from audio_stream import audio
from audio_stream.switch import accel

_accel = accel._accel


class PyQueue:
    """audio.PlaybackQueue with a clock the test sets."""

    def __init__(self, t, rate, max_ms, jitter_ms=0, ptime_ms=20):
        self.q = audio.PlaybackQueue(rate, max_ms, clock=lambda: t[0], jitter_ms=jitter_ms, ptime_ms=ptime_ms)

    def __getattr__(self, name):
        return getattr(self.q, name)

    def pull(self, n):
        return self.q.pull(n)

    def drop(self, nbytes, frame_bytes, silent_below=0):
        return self.q.drop(nbytes, frame_bytes, silent_below)


class CQueue:
    """AccelQueue; what the media thread would post as events is read back after each call."""

    def __init__(self, t, rate, max_ms, jitter_ms=0, ptime_ms=20):
        self.t = t
        self._sync()
        self.q = accel.AccelQueue("00000000-test", rate, ptime_ms, max_ms, jitter_ms)
        _accel.take_events()

    def _sync(self):
        _accel.set_clock(int(self.t[0] * 1e9))

    def __getattr__(self, name):
        attr = getattr(self.q, name)
        if callable(attr):
            def call(*a, **kw):
                self._sync()
                return attr(*a, **kw)
            return call
        return attr

    def _events(self):
        marks, started, done = [], False, False
        for pid, kind, value in _accel.take_events():
            if pid != self.q.p.id:
                continue
            if kind == _accel.EV_MARK:
                marks += self.q.marks_reached(value)
            elif kind == _accel.EV_STARTED:
                started = True
            elif kind == _accel.EV_DONE:
                done = True
        return marks or None, started, done

    def pull(self, n):
        self._sync()
        data = self.q.pull(n)
        marks, started, done = self._events()
        return data, marks, started, done

    def drop(self, nbytes, frame_bytes, silent_below=0):
        self._sync()
        dropped, _ = self.q.drop(nbytes, frame_bytes, silent_below)
        return dropped, self._events()[0]


def _c_queue(*a, **kw):
    if _accel is None:
        pytest.skip("the compiled accelerator is not built here: %s" % accel.why_not())
    return CQueue(*a, **kw)


@pytest.fixture(params=["python", "c"])
def make(request):
    t = [0.0]
    factory = PyQueue if request.param == "python" else _c_queue

    def new(rate, max_ms, **kw):
        return factory(t, rate, max_ms, **kw)
    new.t = t
    yield new
    if _accel is not None:
        _accel.set_clock(None)


def test_cap_marks_clear_pause(make):
    t = make.t
    q = make(8000, 1010)
    assert q.mark("empty") is True
    assert q.push(b"\x01\x00" * 8000)
    assert not q.push(b"\x00\x00" * 100)    # over the 1.01 s cap: refused whole
    assert q.mark("m1") is False
    assert q.push(b"\x02\x00" * 80)
    assert q.mark("m2") is False
    assert q.marks_waiting == 2
    t[0] = 1.0
    got, marks, started, done = q.pull(16000 - 320)
    assert len(got) == 15680 and marks is None and started and not done
    assert q.playing
    got, marks, started, _ = q.pull(320)
    assert marks == ["m1"] and got == b"\x01\x00" * 160 and not started
    assert q.set_paused(True) is True           # it was playing: the caller says "paused"
    assert not q.playing
    assert q.pull(320) == (None, None, False, False)
    assert q.set_paused(False) is False
    got, marks, started, _ = q.pull(320)        # 160 bytes left: padded with silence, mark m2 reached
    assert got == b"\x02\x00" * 80 + b"\x00" * 160 and marks == ["m2"] and started
    assert q.pull(320) == (None, None, False, True)   # dry while playing: done, once
    assert q.pull(320) == (None, None, False, False)
    assert not q.playing


def test_short_tail_waits_for_more_audio(make):
    t = make.t
    q = make(8000, 1000)
    q.push(b"\x01\x00" * 100)
    assert q.pull(320)[0] is None               # just arrived: more may follow
    t[0] = 0.01
    q.push(b"\x01\x00" * 100)
    assert q.pull(320)[0] == b"\x01\x00" * 160  # a full frame now
    t[0] = 1.0
    assert q.pull(320)[0] == b"\x01\x00" * 40 + b"\x00" * 240


def test_clear_returns_marks_and_whether_it_played_and_keeps_positions(make):
    make.t[0] = 10.0
    q = make(8000, 1000)
    q.push(b"\x00" * 640)
    q.mark("a")
    q.push(b"\x00" * 640)
    q.mark("b")
    assert q.clear() == (["a", "b"], False) and q.queued == 0
    assert q.mark("c") is True
    q.push(b"\x00" * 320)
    q.mark("d")
    assert q.pull(320)[1] == ["d"]
    q.push(b"\x00" * 640)
    assert q.clear() == ([], True)
    assert q.stop_playing() is False


def test_stop_playing_says_once(make):
    q = make(8000, 1000)
    q.push(b"\x05\x00" * 480)
    q.pull(320)
    assert q.stop_playing() is True
    assert q.stop_playing() is False


def test_jitter_allowance_holds_a_burst_from_empty(make):
    """A real-time server: 40 ms arrives at an empty queue. It plays after the allowance, so that
    the next message arriving up to that much late still finds audio."""
    t = make.t
    q = make(8000, 5000, jitter_ms=40)
    q.push(b"\x01\x00" * 320)
    assert q.pull(320)[0] is None
    t[0] = 0.039
    assert q.pull(320)[0] is None               # 40 ms queued, 39 ms waited
    t[0] = 0.040
    got, _, started, _ = q.pull(320)
    assert got == b"\x01\x00" * 160 and started
    # once playing, a late message does not hold it again
    assert q.pull(320)[0] is not None


def test_jitter_allowance_does_not_wait_for_more_audio(make):
    t = make.t
    q = make(8000, 5000, jitter_ms=40)
    q.push(b"\x01\x00" * 160)
    t[0] = 0.039
    assert q.pull(320)[0] is None
    t[0] = 0.041                                 # the allowance is over: play what there is
    assert q.pull(320)[0] == b"\x01\x00" * 160


def test_audio_sent_ahead_plays_at_once(make):
    q = make(8000, 5000, jitter_ms=40)
    q.push(b"\x01\x00" * 960)                    # 120 ms at once (allowance + 80 ms): sent ahead
    assert q.pull(320)[0] is not None


def test_debt_counts_only_time_dry_within_a_burst(make):
    t = make.t
    q = make(8000, 5000)
    q.push(b"\x01\x00" * 160)
    t[0] = 1.0
    q.pull(320)
    assert q.pull(320)[3]                        # dry while playing
    t[0] = 1.3                                    # the server's audio comes back 300 ms later
    q.push(b"\x01\x00" * 1600)
    assert q.take_stats()[1] == 0
    assert q.pull(320)[0] is not None             # and plays
    m, debt = q.take_stats()
    assert debt == 300 * 16                        # 300 ms at 8 kHz, bytes
    assert q.pull(320)[0] is not None
    q.clear()
    assert q.take_stats()[1] == 0
    # a pause longer than the session gap: the server stopped talking, no debt
    q.push(b"\x01\x00" * 160)
    q.pull(320)
    q.pull(320)
    t[0] = 5.0
    q.push(b"\x01\x00" * 160)
    q.pull(320)
    assert q.take_stats()[1] == 0


def test_a_short_tail_the_call_waits_for_while_playing_is_debt(make):
    """16 kHz audio resampled for an 8 kHz call: the filter's delay leaves 288 bytes where a frame
    is 320. When the next message is late, the call holds that tail and goes without a frame: the
    audio after it plays 20 ms later, the same as a dry queue, so it is debt."""
    t = make.t
    q = make(8000, 5000)
    t[0] = 1.0
    q.push(b"\x01\x00" * 144)
    q.push(b"\x01\x00" * 160)
    assert q.pull(320)[0] is not None             # playing; 288 bytes left
    t[0] = 1.02
    assert q.pull(320) == (None, None, False, False)   # held: more may come
    t[0] = 1.03
    q.push(b"\x01\x00" * 160)                   # 10 ms late
    t[0] = 1.04
    data, _, started, _ = q.pull(320)
    assert data is not None and not started       # the same burst goes on...
    assert q.take_stats()[1] == 20 * 16           # ...20 ms later than it would have


def test_audio_sent_ahead_creates_no_debt(make):
    q = make(8000, 5000)
    q.push(b"\x01\x00" * 8000)
    for _ in range(10):
        q.pull(320)
    assert q.take_stats() == (8000 * 2 - 3200, 0)
    assert q.take_stats()[0] is None              # read and reset


def test_drop_silent_frames_first_and_keep_the_rest_in_order(make):
    q = make(8000, 5000)
    loud, quiet = b"\x00\x10" * 160, b"\x01\x00" * 160
    for frame in (quiet, loud, quiet, quiet, loud):
        q.push(frame)
    q.mark("end")
    dropped, marks = q.drop(320 * 2, 320, 100)
    assert dropped == 640 and marks is None
    assert q.queued == 3 * 320
    assert [q.pull(320)[0] for _ in range(3)] == [loud, quiet, loud]


def test_drop_without_silence_takes_the_oldest_frames_and_marks_follow(make):
    q = make(8000, 5000)
    q.push(b"\x00\x10" * 480)
    q.mark("m")
    q.push(b"\x00\x20" * 160)
    dropped, marks = q.drop(640, 320)
    assert dropped == 640
    dropped, marks = q.drop(640, 320)             # only one frame before the mark is left... and the next
    assert dropped == 640 and marks == ["m"]
    assert q.queued == 0


def test_drop_one_piece_of_any_even_size_keeps_the_queue_whole(make):
    """Latency recovery's sound cut: drop(n, n) takes n bytes from the head, across chunks, and
    what follows plays on from the next sample."""
    q = make(8000, 5000)
    x = bytes(range(256)) * 5                    # 1280 bytes, every sample different
    q.push(x[:300])
    q.push(x[300:])
    dropped, _ = q.drop(288, 288)
    assert dropped == 288 and q.queued == 1280 - 288
    assert q.pull(320)[0] == x[288:608]
