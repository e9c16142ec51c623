"""The accelerated path's downlink: MaskScanner.split takes whole binary audio frames out of what the
server sends, straight into a BinarySink (carry, resampling, the C playback queue), and hands the
rest to aiohttp's parser byte for byte; when it may not take (something parsed waits, a fragmented
message is open, a frame is compressed, too large or masked) the frames go to the parser as before.
"""
import struct

import pytest

from audio_stream import accelerator, audio, playback
from audio_stream.switch import accel

from .support import tone, ws_frame as frame

native = accelerator.native
pytestmark = pytest.mark.skipif(native is None, reason="the compiled accelerator is not built here: %s"
                                % accelerator.why_not)


def text(s):
    return frame(s.encode(), opcode=1)


class Rig:
    """A player queue, a sink into it and a scanner: feed() returns what the parser gets."""

    def __init__(self, rate_in=8000, rate_out=8000, max_ms=60000, max_frame=1 << 20):
        self.q = accel.AccelQueue("u", rate_out, 20, max_ms, 0)
        rs = None
        if rate_in != rate_out:
            rs = accel.resampler(rate_in, rate_out, 1, lead=True)._r      # as AccelPath.binary_sink
        self.sink = native.BinarySink(self.q.p, rs, max_frame)
        self.scanner = native.MaskScanner()
        self.taken = 0
        self.parsed = b""

    def feed(self, data, take=True, limit=1000, pieces=None):
        """Feed `data` whole or cut into `pieces` bytes: (taken frames, parser bytes)."""
        step = pieces or len(data) or 1
        for i in range(0, len(data), step):
            masked, end, out, attention = self.scanner.split(data[i:i + step], limit, self.sink, take)
            assert not masked and end == len(data[i:i + step])
            self.parsed += out or b""
        self.taken += self.sink.take_pending()[0]
        return self.taken, self.parsed


def pcm(n, v=1000):
    return struct.pack("<%dh" % n, *([v] * n))


@pytest.mark.parametrize("pieces", [None, 1, 3, 7, 200])
def test_binary_frames_go_to_the_queue_the_rest_to_the_parser(pieces):
    r = Rig()
    a, b = pcm(160), pcm(80, 2000)
    taken, parsed = r.feed(frame(a) + frame(b), pieces=pieces)
    assert taken == 2 and parsed == b""
    assert r.q.queued == len(a) + len(b)
    taken, parsed = r.feed(text('{"type":"mark"}') + frame(b), pieces=pieces)
    if pieces is None:     # one read: the text goes to the parser first, so the audio after it waits too
        assert taken == 2 and parsed == text('{"type":"mark"}') + frame(b)
    assert r.q.queued + len(parsed) - len(text('{"type":"mark"}')) >= len(a) + len(b)


def test_audio_after_a_parsed_message_is_not_taken_ahead_of_it():
    """A killAudio then new audio in one read: the audio must not reach the queue before the clear
    does (it would be cleared with the old audio)."""
    r = Rig()
    data = text('{"type":"killAudio"}') + frame(pcm(160))
    taken, parsed = r.feed(data)
    assert (taken, parsed) == (0, data) and r.q.queued == 0


def test_nothing_is_taken_while_the_parser_has_messages_waiting():
    r = Rig()
    data = frame(pcm(160)) * 3
    assert r.feed(data, take=False) == (0, data)
    assert r.q.queued == 0


def test_audio_before_a_text_is_taken_and_the_text_parsed():
    r = Rig()
    taken, parsed = r.feed(frame(pcm(160)) + text("hello") + frame(pcm(160)))
    assert taken == 1 and parsed == text("hello") + frame(pcm(160))


@pytest.mark.parametrize("what", ["fragmented", "compressed", "masked-skip", "too-large", "continuation"])
def test_frames_it_may_not_take_go_to_the_parser(what):
    r = Rig(max_frame=1000)
    if what == "fragmented":
        first = frame(b"ab", opcode=1, fin=False)
        assert r.feed(first) == (0, first)
        # a data frame inside a fragmented message is the server's error: aiohttp says so, not us
        then = frame(pcm(10))
        assert r.feed(then) == (0, first + then)
        end = frame(b"c", opcode=0, fin=True)
        r.feed(end)
        taken, parsed = r.feed(frame(pcm(10)))
        assert taken == 1 and parsed == first + then + end       # the message is complete: taken again
        assert r.q.queued == 20
        return
    elif what == "compressed":
        data = frame(b"xx", rsv=0x40)
        assert r.feed(data) == (0, data)
    elif what == "too-large":
        data = frame(pcm(501))
        assert r.feed(data) == (0, data)
    elif what == "continuation":
        data = frame(pcm(4), fin=False)            # binary without FIN: a fragmented message
        assert r.feed(data) == (0, data)
    else:
        data = frame(pcm(3), opcode=9)             # a ping: the parser's
        assert r.feed(data) == (0, data)
    assert r.q.queued == 0


def test_a_masked_frame_is_reported():
    r = Rig()
    masked, end, out, attention = r.scanner.split(frame(b"ab", masked=True), 100, r.sink, True)
    assert masked and end == 2 and not attention and r.sink.pending == (0, 0)


def test_the_frame_limit_counts_taken_frames_too():
    r = Rig()
    data = frame(pcm(10)) * 5
    masked, end, out, attention = r.scanner.split(data, 3, r.sink, True)
    assert (masked, end, out, r.sink.take_pending()) == (False, 3 * len(frame(pcm(10))), None, (3, 60))


def test_attention_when_the_player_must_act_or_a_batch_is_pending():
    r = Rig(max_ms=100)
    r.sink.batch = 3
    one = frame(pcm(10))
    assert r.scanner.split(one * 2, 100, r.sink, True)[3] is False      # 2 pending, nothing to do
    assert r.scanner.split(one, 100, r.sink, True)[3] is True           # 3 pending: count them
    assert r.sink.take_pending() == (3, 60)
    assert r.scanner.split(frame(pcm(800)), 100, r.sink, True)[3] is True   # refused: at once
    assert r.sink.take_flags()[0] & playback.SINK_REFUSED
    assert r.scanner.split(text("x"), 100, r.sink, True)[3] is False    # nothing taken


def test_an_odd_byte_is_carried_to_the_next_frame():
    r = Rig()
    r.feed(frame(b"\x01\x02\x03") + frame(b"\x04\x05\x06"))
    assert r.q.queued == 6
    r.feed(frame(b"\x07"))
    assert r.q.queued == 6            # half a sample waits
    r.sink.reset()                    # a clear: the half sample goes with it
    r.feed(frame(b"\x08\x09"))
    assert r.q.queued == 8


def test_the_server_rate_is_resampled_like_the_python_path():
    r = Rig(rate_in=16000, rate_out=8000)
    x = tone(440, 16000, 0.2).astype("<i2").tobytes()
    step = 640
    for i in range(0, len(x), step):
        r.feed(frame(x[i:i + step]))
    ref = audio.Downlink(8000, accel.resampler)
    expect = b"".join(ref.binary(x[i:i + step], 16000) for i in range(0, len(x), step))
    assert r.q.queued == len(expect)
    assert r.sink.take_came() == len(expect)
    assert r.sink.take_came() == 0


def test_a_full_queue_refuses_and_says_how_much():
    r = Rig(max_ms=100)                       # 100 ms at 8 kHz: 1600 bytes
    r.feed(frame(pcm(800)))
    assert r.q.queued == 1600
    r.feed(frame(pcm(160)))
    flags, refused = r.sink.take_flags()
    assert flags & playback.SINK_REFUSED and refused == 320 and r.q.queued == 1600
    assert r.sink.take_flags() == (0, 320)


def test_the_python_side_push_shares_carry_and_counts():
    r = Rig()
    assert r.sink.push(b"\x01\x02\x03") == 1
    r.feed(frame(b"\x04"))
    assert r.q.queued == 4
    assert r.sink.take_arrived() is not None and r.sink.take_arrived() is None


def test_a_disabled_sink_takes_nothing():
    r = Rig()
    r.sink.enabled = False
    data = frame(pcm(10))
    assert r.feed(data) == (0, data)


def test_flag_values_match_the_extension():
    assert (playback.SINK_WAKE, playback.SINK_REFUSED) == (native.SINK_WAKE, native.SINK_REFUSED)
