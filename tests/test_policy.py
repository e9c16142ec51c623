"""The pure decision policies (policy.py) and the bounded outbox (outbox.py)."""
from audio_stream.outbox import Outbox
from audio_stream.policy import REPLACE, WRITE, LatencyPolicy, PlaybackPolicy


# ---- PlaybackPolicy -----------------------------------------------------------------------------

def pings(policy, wrote):
    return [policy.may_write(w) for w in wrote]


def test_unknown_call_waits_quiet_pings_before_writing():
    p = PlaybackPolicy(quiet_pings=3)
    assert pings(p, [False] * 5) == [False, False, True, True, True]


def test_core_write_resets_the_count():
    p = PlaybackPolicy(quiet_pings=3)
    assert pings(p, [False, False, True, False, False, False]) == [False, False, False, False, False, True]


def test_sleep_remembers_who_wrote_and_the_prior_saves_the_wait():
    p = PlaybackPolicy(quiet_pings=3)
    pings(p, [False] * 4)
    assert p.may_sleep()
    p.sleep()
    assert p.prior == WRITE
    p.activate()
    assert pings(p, [False, False]) == [True, True]        # a parked call: write at once


def test_prior_write_is_dropped_when_the_core_turns_out_to_write():
    p = PlaybackPolicy(quiet_pings=3)
    pings(p, [False] * 4)
    p.sleep()
    p.activate()
    # the call was bridged meanwhile: one core write is enough to go back to waiting
    assert pings(p, [True, False, False, False]) == [False, False, False, True]


def test_prior_replace_waits():
    p = PlaybackPolicy(quiet_pings=3)
    pings(p, [True, True, True, True])
    p.sleep()
    assert p.prior == REPLACE
    p.activate()
    assert pings(p, [False, False, False]) == [False, False, True]


def test_no_sleep_before_enough_pings():
    p = PlaybackPolicy(quiet_pings=3)
    assert [(p.may_write(False), p.may_sleep())[1] for _ in range(5)] == [False, False, False, True, True]


# ---- Outbox -------------------------------------------------------------------------------------

def test_outbox_keeps_order_and_counts():
    o = Outbox(max_audio_bytes=100, max_text_bytes=50, bytes_per_ms=10)
    o.put_text("meta")
    o.put_audio(b"a" * 40)
    o.put_text("t1")
    o.put_audio(b"b" * 40)
    assert (o.audio_bytes, o.text_bytes, o.queued_ms) == (80, 6, 8)
    assert [o.pop() for _ in range(4)] == ["meta", b"a" * 40, "t1", b"b" * 40]
    assert not o and o.take_events() == []


def test_outbox_drops_oldest_audio_never_text_and_reports_one_episode():
    o = Outbox(max_audio_bytes=100, max_text_bytes=50, bytes_per_ms=10)
    o.put_text("meta")
    for i in range(3):
        o.put_audio(bytes([i]) * 40)
    assert o.take_events() == [("overrun", 4, 4)]            # the episode starts: 4 ms dropped so far
    for i in range(3, 5):
        o.put_audio(bytes([i]) * 40)
    assert o.take_events() == []                             # one event per episode
    assert o.overrun and o.dropped_bytes == 120 and o.audio_bytes == 80
    assert o.pop() == "meta"
    assert o.pop() == bytes([3]) * 40                        # 0, 1, 2 were dropped
    o.put_audio(b"x" * 40)
    assert o.take_events() == []
    o.pop()
    o.pop()
    assert o.take_events() == [("recovered", 12, 12)]
    o.put_audio(b"y" * 40)
    for _ in range(3):
        o.put_audio(b"z" * 40)
    assert o.take_events() == [("overrun", 4, 16)]          # a new episode, total so far


def test_outbox_refuses_text_over_its_bound():
    o = Outbox(max_audio_bytes=100, max_text_bytes=10, bytes_per_ms=10)
    assert o.put_text("12345")
    assert o.put_text("67890")
    assert not o.put_text("x")
    o.pop()
    assert o.put_text("x")


# ---- LatencyPolicy --------------------------------------------------------------------------------

FRAME = 320                  # 20 ms at 8 kHz
RATE_BPS = 16000             # bytes per second at 8 kHz


def latency():
    return LatencyPolicy(8000, FRAME, 20 * 16)        # the cushion: 20 ms


def feed(p, calls, low, debt, rate=1.0):
    """`calls` decisions, each after 0.2 s in which the queue held at least `low` bytes and audio
    came at `rate` times real time."""
    out = None
    for _ in range(calls):
        out = p.decide(low, debt, int(RATE_BPS * 0.2 * rate), 0.2)
    return out


def test_latency_a_real_time_stream_that_fell_behind_catches_up():
    p = latency()
    assert feed(p, 4, 300 * 16, 280 * 16) is None           # a second of history first
    want, sound = feed(p, 1, 300 * 16, 280 * 16)
    assert want == (300 - 20 - 20) * 16 // FRAME * FRAME    # the excess over cushion + frame
    assert sound == 2 * FRAME                               # silence first; at most 2 frames of sound
    p.dropped(want)
    assert p.decide(300 * 16 - want, 280 * 16 - want, RATE_BPS // 5, 0.2) is None   # caught up


def test_latency_never_more_than_the_debt():
    p = latency()
    want, sound = feed(p, 5, 1000 * 16, 100 * 16)
    assert want == 100 * 16 and sound == 2 * FRAME


def test_latency_leaves_audio_sent_ahead_alone():
    p = latency()
    assert feed(p, 10, 3000 * 16, 0) is None                 # no debt: a TTS sentence sent ahead
    p = latency()
    assert feed(p, 10, 3000 * 16, 500 * 16, rate=0.0) is None   # draining a queue sent ahead
    p = latency()
    assert feed(p, 10, 3000 * 16, 500 * 16, rate=4.0) is None   # arriving 4x faster than it plays


def test_latency_a_cushion_is_not_an_excess():
    p = latency()
    assert feed(p, 10, 40 * 16, 500 * 16) is None            # cushion + a frame: as it should be


def test_latency_starts_over_when_playback_stops():
    p = latency()
    feed(p, 4, 300 * 16, 280 * 16)
    assert p.decide(None, 0, 0, 0.2) is None
    assert feed(p, 4, 300 * 16, 280 * 16) is None            # a new second of history first
