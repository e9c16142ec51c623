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


def latency(home=None):
    """A policy that has seen `home` bytes as the least queued over a second without debt (where
    the stream started), or none."""
    p = LatencyPolicy(8000, FRAME)
    if home is not None:
        assert feed(p, 5, home, 0) is None
        assert p.base == home
        p.history = []
    return p


def feed(p, calls, low, debt, rate=1.0):
    """`calls` decisions, each after 0.2 s in which the queue held at least `low` bytes and audio
    came at `rate` times real time."""
    out = None
    for _ in range(calls):
        out = p.decide(low, debt, int(RATE_BPS * 0.2 * rate), 0.2)
    return out


def catch_up(p, low, debt, seconds=3.0):
    """Decisions for `seconds` over a queue holding `low` and owing `debt` less what was dropped:
    the bytes dropped in all."""
    total = 0
    for _ in range(int(seconds / 0.2)):
        out = feed(p, 1, low - total, debt - total)
        if out is not None:
            p.dropped(out[0])
            total += out[0]
    return total


def test_latency_a_real_time_stream_that_fell_behind_catches_up():
    p = latency(home=FRAME)
    assert feed(p, 4, 300 * 16, 280 * 16) is None           # a second of history first
    want, sound = feed(p, 1, 300 * 16, 280 * 16)
    assert want == 280 * 16                                 # all the debt: the queue never needed it
    assert sound == 2 * FRAME                               # silence first; at most 2 frames of sound
    p.dropped(want)
    assert p.decide(300 * 16 - want, 0, RATE_BPS // 5, 0.2) is None   # caught up


def test_latency_gives_back_only_what_the_window_did_not_need():
    p = latency(home=0)
    assert feed(p, 5, 0, 500 * 16) is None                   # the queue ran to its last byte
    p = latency(home=0)
    want, _ = feed(p, 5, 50 * 16, 500 * 16)
    assert want == 50 * 16                                   # the 50 ms never needed, to the sample
    p = latency(home=0)
    assert feed(p, 5, 9 * 16, 500 * 16) is None              # less than half a frame: not worth it


def test_latency_keeps_the_cushion_the_stream_started_with():
    """A bot that paused 500 ms (debt: the queue cannot tell a pause from a stall) and streams on
    in real time, its new burst's cushion where the first one's was: nothing is cut."""
    p = latency(home=20 * 16)
    assert feed(p, 10, 20 * 16, 500 * 16) is None
    want, _ = feed(p, 5, 35 * 16, 500 * 16)                  # a better phase this time: 15 ms spare
    assert want == 15 * 16


def test_latency_without_a_home_keeps_a_frame():
    p = latency()
    assert feed(p, 5, 20 * 16, 500 * 16) is None
    assert feed(p, 5, 300 * 16, 500 * 16)[0] == 280 * 16


def test_latency_a_queue_short_of_whole_frames_gives_its_frame_back():
    """A server whose messages are not whole frames leaves the queue 32 bytes short of them at home;
    a late message (the call held the short tail: a frame of debt) plays a frame later for good
    unless that frame goes again."""
    p = latency(home=FRAME - 32)
    want, sound = feed(p, 5, 2 * FRAME - 32, FRAME)
    assert want == FRAME and sound == want
    p.dropped(want)
    assert p.decide(FRAME - 32, 0, RATE_BPS // 5, 0.2) is None   # caught up


def test_latency_never_more_than_the_debt():
    p = latency(home=0)
    want, sound = feed(p, 5, 1000 * 16, 100 * 16)
    assert want == 100 * 16 and sound == 2 * FRAME


def test_latency_leaves_audio_sent_ahead_alone():
    p = latency(home=0)
    assert feed(p, 10, 3000 * 16, 0) is None                 # no debt: a TTS sentence sent ahead
    p = latency(home=0)
    assert feed(p, 10, 3000 * 16, 500 * 16, rate=0.0) is None   # draining a queue sent ahead
    p = latency(home=0)
    assert feed(p, 10, 3000 * 16, 500 * 16, rate=4.0) is None   # arriving 4x faster than it plays


def test_latency_a_one_off_stall_comes_back_to_where_it_started():
    """One frame of debt over a queue that held a frame after each play at home: the frame goes,
    the home's frame stays."""
    p = latency(home=FRAME)
    assert catch_up(p, 2 * FRAME, FRAME) == FRAME
    assert p.margin == 0


def test_latency_a_stall_that_recurs_keeps_a_frame_more():
    p = latency(home=0)
    assert catch_up(p, FRAME, FRAME) == FRAME
    feed(p, 10, 0, 0)                                        # 2 s later the queue runs dry again
    feed(p, 1, FRAME, FRAME)
    assert p.margin == FRAME
    assert feed(p, 10, FRAME, FRAME) is None                 # this frame of debt stays
    p = latency(home=0)
    catch_up(p, FRAME, FRAME)
    feed(p, 1, 2 * FRAME, 2 * FRAME)                         # dry again at once: two frames
    assert catch_up(p, 2 * FRAME, 2 * FRAME) == FRAME        # one goes, one is kept
    assert p.margin == FRAME


def test_latency_the_margin_goes_again_after_a_calm_spell():
    p = latency(home=0)
    catch_up(p, FRAME, FRAME)
    feed(p, 1, FRAME, FRAME)                                 # dry again at once
    assert p.margin == FRAME
    feed(p, int(LatencyPolicy.CALM_S / 0.2) + 1, FRAME, FRAME)   # no dry frame for CALM_S
    assert p.margin == 0
    assert catch_up(p, FRAME, FRAME) == FRAME


def test_latency_a_stall_long_after_catching_up_is_no_relapse():
    p = latency(home=0)
    catch_up(p, FRAME, FRAME)
    feed(p, int(LatencyPolicy.RELAPSE_S / 0.2) + 5, 0, 0)
    feed(p, 1, FRAME, FRAME)
    assert p.margin == 0


def test_latency_starts_over_when_playback_stops():
    p = latency()
    feed(p, 4, 300 * 16, 280 * 16)
    assert p.decide(None, 0, 0, 0.2) is None
    assert feed(p, 4, 300 * 16, 280 * 16) is None            # a new second of history first


def test_latency_debt_that_added_no_latency_does_not_undo_the_margin():
    """A tail held at the burst's start left a frame of debt the queue never showed (the queue is
    at home): a later stall's frame goes, and when the stall recurs the margin holds the next one."""
    p = latency(home=FRAME - 32)
    assert feed(p, 5, FRAME - 32, FRAME) is None             # debt, but nothing over home
    assert catch_up(p, 2 * FRAME - 32, 2 * FRAME) == FRAME   # a stall: its frame goes
    feed(p, 1, 2 * FRAME - 32, 2 * FRAME)                    # and it recurs at once
    assert p.margin == FRAME
    assert feed(p, 10, 2 * FRAME - 32, 2 * FRAME) is None
