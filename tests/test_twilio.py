"""The Twilio Media Streams dialect (audio_stream/twilio.py) against Twilio's documented shapes,
an open-source Twilio Media Streams library (Pipecat, when installed) and the example bot over a
real WebSocket. Sources: docs/twilio.md."""
import asyncio
import base64
import json
import os
import re
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from audio_stream import protocol as P
from audio_stream import twilio as T
from audio_stream.audio import ULAW

UUID = "5f2c1e0a-3b7d-4c55-9e0f-0123456789ab"


def dialect(metadata=None, **kw):
    return T.TwilioDialect(UUID, metadata, **kw)


def opened(metadata=None, **kw):
    d = dialect(metadata, **kw)
    d.opening()
    return d


def tone(hz=440, seconds=1.0, amplitude=8000, rate=8000):
    n = int(rate * seconds)
    return (amplitude * np.sin(2 * np.pi * hz * np.arange(n) / rate)).astype("<i2")


# ---- a validator of the documented shapes --------------------------------------------------------
# https://www.twilio.com/docs/voice/media-streams/websocket-messages, "WebSocket messages from
# Twilio": every property of each table, its JSON type as in the examples (numbers Twilio sends as
# strings are strings), and nothing else.

S, I, L, O = "string", "integer", "list", "object"
DOCUMENTED = {
    "connected": {"event": S, "protocol": S, "version": S},
    "start": {"event": S, "sequenceNumber": S, "streamSid": S,
              "start": {"streamSid": S, "accountSid": S, "callSid": S, "tracks": L,
                        "customParameters": O,
                        "mediaFormat": {"encoding": S, "sampleRate": I, "channels": I}}},
    "media": {"event": S, "sequenceNumber": S, "streamSid": S,
              "media": {"track": S, "chunk": S, "timestamp": S, "payload": S}},
    "stop": {"event": S, "sequenceNumber": S, "streamSid": S,
             "stop": {"accountSid": S, "callSid": S}},
    "dtmf": {"event": S, "streamSid": S, "sequenceNumber": S, "dtmf": {"track": S, "digit": S}},
    "mark": {"event": S, "sequenceNumber": S, "streamSid": S, "mark": {"name": S}},
}
TYPES = {S: str, L: list, O: dict}


def _conforms(obj, schema, where):
    assert isinstance(obj, dict), where
    assert set(obj) == set(schema), "%s: keys %s, documented %s" % (where, sorted(obj), sorted(schema))
    for k, t in schema.items():
        v = obj[k]
        if isinstance(t, dict):
            _conforms(v, t, where + "." + k)
        elif t == I:
            assert isinstance(v, int) and not isinstance(v, bool), "%s.%s: %r" % (where, k, v)
        else:
            assert isinstance(v, TYPES[t]), "%s.%s: %r is not a %s" % (where, k, v, t)


def documented(text):
    """Parse one frame we send and check it against the documented table for its event."""
    msg = json.loads(text)
    assert msg.get("event") in DOCUMENTED, msg
    _conforms(msg, DOCUMENTED[msg["event"]], msg["event"])
    ev = msg["event"]
    if ev == "connected":
        assert msg["protocol"] == "Call" and msg["version"] == "1.0.0"
        return msg
    assert msg["sequenceNumber"].isdigit() and int(msg["sequenceNumber"]) >= 1
    assert re.fullmatch(r"MZ[0-9a-f]{32}", msg["streamSid"])
    if ev == "start":
        assert msg["start"]["streamSid"] == msg["streamSid"]
        assert msg["start"]["mediaFormat"] == {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
        assert set(msg["start"]["tracks"]) <= {"inbound", "outbound"} and msg["start"]["tracks"]
        assert all(isinstance(v, str) for v in msg["start"]["customParameters"].values())
    if ev == "media":
        m = msg["media"]
        assert m["track"] in ("inbound", "outbound")
        assert m["chunk"].isdigit() and int(m["chunk"]) >= 1
        assert m["timestamp"].isdigit()
        base64.b64decode(m["payload"], validate=True)
    if ev == "dtmf":
        assert msg["dtmf"]["track"] == "inbound_track"
    return msg


# ---- outbound shapes -----------------------------------------------------------------------------

def test_opening_is_connected_then_start_as_documented():
    d = dialect('{"FirstName":"Jane","LastName":"Doe"}', account_sid="AC" + "1" * 32)
    frames = d.opening()
    assert len(frames) == 2
    connected, start = (documented(f) for f in frames)
    assert connected == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    assert start == {
        "event": "start",
        "sequenceNumber": "1",
        "start": {
            "accountSid": "AC" + "1" * 32,
            "streamSid": d.stream_sid,
            "callSid": UUID,
            "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            "customParameters": {"FirstName": "Jane", "LastName": "Doe"},
        },
        "streamSid": d.stream_sid,
    }
    # key order as in Twilio's examples (some parsers and log readers care)
    assert list(json.loads(frames[1])) == ["event", "sequenceNumber", "start", "streamSid"]
    assert list(json.loads(frames[0])) == ["event", "protocol", "version"]


def test_defaults_account_sid_and_a_new_stream_sid_per_connection():
    a, b = dialect(), dialect()
    assert a.account_sid == "AC" + "0" * 32
    assert re.fullmatch(r"MZ[0-9a-f]{32}", a.stream_sid) and a.stream_sid != b.stream_sid
    assert dialect(stream_sid="MZ" + "a" * 32).stream_sid == "MZ" + "a" * 32
    assert json.loads(dialect().opening()[1])["start"]["customParameters"] == {}


def test_uplink_format():
    f = dialect().uplink_format()
    assert (f.rate, f.channels, f.chunk_ms) == (8000, 1, 20)
    f2 = dialect(tracks=("inbound", "outbound")).uplink_format()
    assert (f2.rate, f2.channels, f2.chunk_ms) == (8000, 2, 20)


def test_media_message_as_documented():
    d = opened()
    pcm = tone(seconds=0.02).tobytes()
    frames = d.media(pcm)
    assert len(frames) == 1
    msg = documented(frames[0])
    assert msg == {
        "event": "media",
        "sequenceNumber": "2",
        "media": {"track": "inbound", "chunk": "1", "timestamp": "0",
                  "payload": base64.b64encode(T.ulaw_encode(pcm)).decode()},
        "streamSid": d.stream_sid,
    }
    assert list(msg) == ["event", "sequenceNumber", "media", "streamSid"]
    assert list(msg["media"]) == ["track", "chunk", "timestamp", "payload"]
    assert len(base64.b64decode(msg["media"]["payload"])) == 160


def test_dtmf_mark_stop_as_documented():
    d = opened()
    dt = documented(d.dtmf("5", 120)[0])
    assert dt == {"event": "dtmf", "streamSid": d.stream_sid, "sequenceNumber": "2",
                  "dtmf": {"track": "inbound_track", "digit": "5"}}
    mk = documented(d.mark_ack("my label")[0])
    assert mk == {"event": "mark", "sequenceNumber": "3", "streamSid": d.stream_sid, "mark": {"name": "my label"}}
    # a cleared mark comes back the same way (Twilio: "sends back mark messages matching any
    # remaining mark messages" on clear)
    cl = documented(d.mark_ack("m2", "cleared")[0])
    assert cl["mark"] == {"name": "m2"} and cl["sequenceNumber"] == "4"
    st_ = documented(d.closing()[0])
    assert st_ == {"event": "stop", "sequenceNumber": "5",
                   "stop": {"accountSid": d.account_sid, "callSid": UUID}, "streamSid": d.stream_sid}


def test_dtmf_digits():
    d = opened()
    for digit in "0123456789*#ABCD":
        assert json.loads(d.dtmf(digit)[0])["dtmf"]["digit"] == digit
    assert json.loads(d.dtmf("a")[0])["dtmf"]["digit"] == "A"
    for bad in ("", "55", "E", "w", None, 5):
        with pytest.raises(ValueError):
            d.dtmf(bad)


def test_mark_ack_rejects_unknown_event_and_error_reply_sends_nothing():
    d = opened()
    with pytest.raises(ValueError):
        d.mark_ack("m", "played")
    assert d.error_reply("bad_message", "x") == []
    assert d.text('{"hello":1}') == ['{"hello":1}']


def test_non_ascii_and_slashes_are_sent_as_is():
    d = dialect('{"name":"Zoë","url":"https://x/y"}')
    start = d.opening()[1]
    assert "Zoë" in start and "https://x/y" in start
    assert json.loads(start)["start"]["customParameters"] == {"name": "Zoë", "url": "https://x/y"}


# ---- sequence, chunk and timestamp progression -------------------------------------------------

def test_sequence_chunk_timestamp_over_many_chunks():
    d = opened()
    pcm = tone(seconds=10).tobytes()
    msgs = []
    for at in range(0, len(pcm), 320):
        msgs += [documented(f) for f in d.media(pcm[at:at + 320])]
    assert len(msgs) == 500
    assert [int(m["sequenceNumber"]) for m in msgs] == list(range(2, 502))
    assert [int(m["media"]["chunk"]) for m in msgs] == list(range(1, 501))
    assert [int(m["media"]["timestamp"]) for m in msgs] == list(range(0, 10000, 20))
    # the other messages continue the one sequence; the next media continues chunk and clock
    tail = [documented(f) for f in d.dtmf("1") + d.mark_ack("x") + d.media(pcm[:320]) + d.closing()]
    assert [int(m["sequenceNumber"]) for m in tail] == [502, 503, 504, 505]
    assert tail[2]["media"]["chunk"] == "501" and tail[2]["media"]["timestamp"] == "10000"
    # the payloads decode to the audio sent (within μ-law's precision)
    got = np.frombuffer(b"".join(T.ulaw_decode(base64.b64decode(m["media"]["payload"])) for m in msgs), "<i2")
    assert len(got) == 80000
    assert np.abs(got.astype(int) - tone(seconds=10).astype(int)).max() <= 8000 / 32 + 8


def test_longer_and_shorter_pieces_become_20ms_messages():
    d = opened()
    frames = d.media(tone(seconds=0.07).tobytes())          # 70 ms → 20, 20, 20, 10
    msgs = [documented(f) for f in frames]
    assert [len(base64.b64decode(m["media"]["payload"])) for m in msgs] == [160, 160, 160, 80]
    assert [m["media"]["timestamp"] for m in msgs] == ["0", "20", "40", "60"]
    nxt = documented(d.media(tone(seconds=0.02).tobytes())[0])
    assert nxt["media"]["timestamp"] == "70" and nxt["media"]["chunk"] == "5"
    assert d.media(b"") == []
    with pytest.raises(ValueError):
        d.media(b"\x00\x01\x02")


def test_skip_moves_timestamps_on():
    d = opened()
    d.media(tone(seconds=0.04).tobytes())
    d.skip(1000)                                            # e.g. paused for a second
    m = documented(d.media(tone(seconds=0.02).tobytes())[0])
    assert m["media"]["timestamp"] == "1040" and m["media"]["chunk"] == "3" and m["sequenceNumber"] == "4"
    with pytest.raises(ValueError):
        d.skip(-1)


def test_both_tracks_chunk_per_track_and_a_shared_clock():
    d = dialect(tracks=("inbound", "outbound"))
    start = json.loads(d.opening()[1])
    assert start["start"]["tracks"] == ["inbound", "outbound"]
    left, right = tone(440, 0.04), tone(1000, 0.04)
    stereo = np.stack([left, right], axis=1).reshape(-1).astype("<i2").tobytes()
    msgs = [documented(f) for f in d.media(stereo)]
    assert [(m["media"]["track"], m["media"]["chunk"], m["media"]["timestamp"], m["sequenceNumber"]) for m in msgs] == [
        ("inbound", "1", "0", "2"), ("outbound", "1", "0", "3"),
        ("inbound", "2", "20", "4"), ("outbound", "2", "20", "5")]
    inbound = b"".join(base64.b64decode(m["media"]["payload"]) for m in msgs if m["media"]["track"] == "inbound")
    outbound = b"".join(base64.b64decode(m["media"]["payload"]) for m in msgs if m["media"]["track"] == "outbound")
    assert inbound == T.ulaw_encode(left.tobytes()) and outbound == T.ulaw_encode(right.tobytes())
    with pytest.raises(ValueError):
        d.media(b"\x00\x00")                                 # half a stereo sample
    with pytest.raises(ValueError):
        dialect(tracks=("outbound",))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=1000), min_size=1, max_size=20))
def test_any_piece_sizes_keep_the_counters_right(sizes):
    d = opened()
    sent = 0
    msgs = []
    for n in sizes:
        msgs += [json.loads(f) for f in d.media(b"\x01\x00" * n)]
        sent += n
    nbytes = [len(base64.b64decode(m["media"]["payload"])) for m in msgs]
    assert sum(nbytes) == sent and all(0 < b <= 160 for b in nbytes)
    assert [int(m["sequenceNumber"]) for m in msgs] == list(range(2, 2 + len(msgs)))
    assert [int(m["media"]["chunk"]) for m in msgs] == list(range(1, 1 + len(msgs)))
    # each timestamp is the position of the message's first sample
    pos = np.cumsum([0] + nbytes)[:len(nbytes)]
    assert [int(m["media"]["timestamp"]) for m in msgs] == [int(p) * 1000 // 8000 for p in pos]
    assert d.timestamp_ms == sent * 1000 // 8000


# ---- lifecycle ---------------------------------------------------------------------------------

def test_lifecycle():
    d = dialect()
    for call in (lambda: d.media(b"\x00\x00"), lambda: d.dtmf("1"), lambda: d.mark_ack("m"),
                 lambda: d.text("x")):
        with pytest.raises(RuntimeError):
            call()
    d.opening()
    with pytest.raises(RuntimeError):
        d.opening()
    assert len(d.closing()) == 1
    assert d.closing() == []
    assert d.media(b"\x00\x00") == [] and d.dtmf("1") == [] and d.mark_ack("m") == [] and d.text("x") == []
    assert dialect().closing() == []                         # never opened: nothing to stop


def test_constructor_validation():
    with pytest.raises(ValueError):
        T.TwilioDialect("", None)
    with pytest.raises(ValueError):
        T.TwilioDialect(UUID, None, account_sid="")


# ---- customParameters --------------------------------------------------------------------------

@pytest.mark.parametrize("metadata,expected", [
    (None, {}),
    ("", {}),
    ("   ", {}),
    ('{"FirstName":"Jane","RemoteParty":"Bob"}', {"FirstName": "Jane", "RemoteParty": "Bob"}),
    ('{"n":7,"f":1.5,"vip":true,"no":false,"x":null}', {"n": "7", "f": "1.5", "vip": "true", "no": "false", "x": "null"}),
    ('{"obj":{"a":[1,"b"]},"list":[1,2]}', {"obj": '{"a":[1,"b"]}', "list": "[1,2]"}),
    ('{}', {}),
    ("hello world", {"metadata": "hello world"}),
    ("[1,2,3]", {"metadata": "[1,2,3]"}),
    ('"just a string"', {"metadata": '"just a string"'}),
    ("42", {"metadata": "42"}),
    ('{"broken": ', {"metadata": '{"broken": '}),
    ("  {\"a\":\"b\"}  ", {"a": "b"}),
])
def test_custom_parameters(metadata, expected):
    assert T.custom_parameters(metadata) == expected
    assert json.loads(dialect(metadata).opening()[1])["start"]["customParameters"] == expected


def test_custom_parameters_keep_order():
    keys = ["z", "a", "m", "b"]
    cp = T.custom_parameters(json.dumps({k: k for k in keys}))
    assert list(cp) == keys


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(max_size=8), st.recursive(
    st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.text(max_size=10)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3), max_leaves=6),
    max_size=6))
def test_custom_parameters_are_strings_that_give_the_values_back(obj):
    cp = T.custom_parameters(json.dumps(obj))
    assert list(cp) == list(obj)
    for k, v in obj.items():
        assert isinstance(cp[k], str)
        assert (cp[k] if isinstance(v, str) else json.loads(cp[k])) == v


# ---- μ-law -------------------------------------------------------------------------------------

def linear_to_ulaw(x):
    """FreeSWITCH's encoder (src/include/g711.h, linear_to_ulaw), one sample at a time."""
    if x < 0:
        linear, mask = 0x84 - x - 1, 0x7F
    else:
        linear, mask = 0x84 + x, 0xFF
    seg = (linear | 0xFF).bit_length() - 1 - 7
    if seg >= 8:
        return 0x7F ^ mask
    return ((seg << 4) | ((linear >> (seg + 3)) & 0xF)) ^ mask


ALL = np.arange(-32768, 32768, dtype="<i2")


def test_ulaw_encoder_is_freeswitch_g711_for_every_value():
    got = np.frombuffer(T.ulaw_encode(ALL.tobytes()), dtype=np.uint8)
    want = np.array([linear_to_ulaw(int(v)) for v in ALL], dtype=np.uint8)
    assert np.array_equal(got, want)


def test_ulaw_round_trip_every_code():
    codes = np.frombuffer(T.ulaw_encode(ULAW.tobytes()), dtype=np.uint8)
    # every code comes back, except 0x7F ("negative zero"), which decodes to 0 and encodes as 0xFF
    assert [i for i in range(256) if codes[i] != i] == [0x7F]
    assert codes[0x7F] == 0xFF
    assert T.ulaw_decode(bytes(range(256))) == ULAW.tobytes()


def test_ulaw_accuracy():
    back = np.frombuffer(T.ulaw_decode(T.ulaw_encode(ALL.tobytes())), "<i2").astype(int)
    err = np.abs(back - ALL.astype(int))
    # within half a quantisation step everywhere below the clipping point (±32124)
    inside = np.abs(ALL.astype(int)) <= 32124
    assert (err[inside] <= (np.abs(ALL[inside].astype(int)) + 0x84) / 32 + 1).all()
    assert err.max() == 32768 - 32124                       # -32768, clipped
    x = tone(1000, 1.0, 16000).astype(float)
    y = np.frombuffer(T.ulaw_decode(T.ulaw_encode(x.astype("<i2").tobytes())), "<i2").astype(float)
    snr = 10 * np.log10((x ** 2).sum() / ((x - y) ** 2).sum())
    assert snr > 35, snr


def test_ulaw_agrees_with_audioop():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop", reason="audioop left the standard library in Python 3.13")
    theirs = np.frombuffer(audioop.lin2ulaw(ALL.tobytes(), 2), dtype=np.uint8)
    ours = np.frombuffer(T.ulaw_encode(ALL.tobytes()), dtype=np.uint8)
    assert np.array_equal(np.frombuffer(audioop.ulaw2lin(bytes(range(256)), 2), "<i2"), ULAW)
    differ = ours != theirs
    # Sun's encoder (audioop, Pipecat) drops the two low bits first, which moves a few negative
    # values at the top of each step to the next code: one step apart, and ours is never farther
    # from the input
    assert differ.sum() == 508 and (ALL[differ] < 0).all()
    assert (np.abs(ours[differ].astype(int) - theirs[differ].astype(int)) == 1).all()
    x = ALL.astype(int)
    assert (np.abs(ULAW[ours[differ]] - x[differ]) <= np.abs(ULAW[theirs[differ]] - x[differ])).all()


# ---- inbound: parse ----------------------------------------------------------------------------

def frame(d, event, **fields):
    msg = {"event": event, "streamSid": d.stream_sid}
    msg.update(fields)
    return json.dumps(msg)


def test_parse_media():
    d = opened()
    ulaw = T.ulaw_encode(tone(seconds=0.1).tobytes())
    m = d.parse(frame(d, "media", media={"payload": base64.b64encode(ulaw).decode()}))
    assert m == P.StreamAudio("pcmu", 8000, ulaw, {"audioDataType": "pcmu", "sampleRate": 8000})
    # the stream plays it through audio.decode("pcmu", …) like any pcmu streamAudio
    from audio_stream import audio
    assert audio.decode(m.audio_type, m.payload, m.sample_rate) == (T.ulaw_decode(ulaw), 8000)
    # other media fields are kept in data; an empty payload is empty audio
    m2 = d.parse(frame(d, "media", media={"payload": "", "track": "outbound"}))
    assert m2 == P.StreamAudio("pcmu", 8000, b"", {"audioDataType": "pcmu", "sampleRate": 8000, "track": "outbound"})


def test_parse_mark_and_clear():
    d = opened()
    assert d.parse(frame(d, "mark", mark={"name": "my label"})) == P.Mark("my label")
    assert d.parse(frame(d, "clear")) == P.KillAudio()
    # Twilio's own key order and spacing (the docs' example)
    assert d.parse('{ \n "event": "clear",\n "streamSid": "%s"\n}' % d.stream_sid) == P.KillAudio()


@pytest.mark.parametrize("fields,reason", [
    ({"media": {}}, "media.payload"),
    ({"media": {"payload": 5}}, "media.payload"),
    ({"media": "AAAA"}, "media object"),
    ({}, "media object"),
    ({"media": {"payload": "***"}}, "base64"),
    ({"media": {"payload": "AAA"}}, "base64"),
])
def test_parse_bad_media(fields, reason):
    d = opened()
    m = d.parse(frame(d, "media", **fields))
    assert isinstance(m, P.BadMessage) and reason in m.reason


@pytest.mark.parametrize("mark", [None, {}, {"name": ""}, {"name": 5}, "m1", ["m1"]])
def test_parse_bad_mark(mark):
    d = opened()
    fields = {} if mark is None else {"mark": mark}
    m = d.parse(frame(d, "mark", **fields))
    assert isinstance(m, P.BadMessage) and "mark.name" in m.reason


@pytest.mark.parametrize("event,fields", [
    ("media", {"media": {"payload": "AAAA"}}), ("mark", {"mark": {"name": "m"}}), ("clear", {})])
def test_stream_sid_must_match(event, fields):
    d = opened()
    other = dict(fields, event=event, streamSid="MZ" + "f" * 32)
    m = d.parse(json.dumps(other))
    assert isinstance(m, P.BadMessage) and "not this stream's" in m.reason and m.text == json.dumps(other)
    missing = dict(fields, event=event)
    m = d.parse(json.dumps(missing))
    assert isinstance(m, P.BadMessage) and "without a streamSid" in m.reason
    nulled = dict(fields, event=event, streamSid=None)
    assert isinstance(d.parse(json.dumps(nulled)), P.BadMessage)
    lenient = opened(check_stream_sid=False)
    assert not isinstance(lenient.parse(json.dumps(other)), P.BadMessage)
    assert not isinstance(lenient.parse(json.dumps(missing)), P.BadMessage)


@pytest.mark.parametrize("text", [
    "not json", "", "[1,2]", '"media"', "42", "null",
    '{"event":"connected","protocol":"Call","version":"1.0.0"}',
    '{"event":"start","start":{}}', '{"event":"stop"}', '{"event":"dtmf","dtmf":{"digit":"1"}}',
    '{"event":"sendDigits"}', '{"event":5}', '{"hello":"world"}',
    # mod_audio_stream's own messages mean nothing in Twilio mode
    '{"type":"streamAudio","data":{"audioDataType":"raw","sampleRate":8000,"audioData":"AAAA"}}',
    '{"type":"killAudio"}', '{"type":"mark","data":{"name":"m"}}',
])
def test_everything_else_passes_through(text):
    assert opened().parse(text) == P.Passthrough(text)


def test_parse_binary_is_refused():
    m = opened().parse_binary(b"\x00" * 320)
    assert isinstance(m, P.BadMessage) and "binary" in m.reason and "320" in m.text


def test_parse_before_opening_uses_the_stream_sid_already_chosen():
    d = dialect()
    assert d.parse(frame(d, "clear")) == P.KillAudio()


# ---- Pipecat: an open-source Twilio Media Streams library, run on our frames --------------------
# pipecat-ai (PyPI; github.com/pipecat-ai/pipecat): src/pipecat/runner/utils.py
# (_detect_transport_type_from_message, parse_telephony_websocket) and
# src/pipecat/serializers/twilio.py (TwilioFrameSerializer). Not a dependency of this project:
# these tests run where it is installed (pip install pipecat-ai) and skip elsewhere.

def _pipecat():
    try:
        from pipecat.frames.frames import (InputAudioRawFrame, InputDTMFFrame, InterruptionFrame,
                                           OutputAudioRawFrame, StartFrame)
        from pipecat.runner.utils import parse_telephony_websocket
        from pipecat.serializers.twilio import TwilioFrameSerializer
    except Exception as e:    # ImportError, or a broken install
        pytest.skip("pipecat-ai is not installed (%s: %s); pip install pipecat-ai to run it on our frames"
                    % (type(e).__name__, e))
    return locals()


class _FakeStarletteWS:
    """What parse_telephony_websocket reads: iter_text() over the frames we send."""

    def __init__(self, frames):
        self._frames = frames

    async def _gen(self):
        for f in self._frames:
            yield f

    def iter_text(self):
        return self._gen()


def test_pipecat_detects_twilio_and_reads_the_call_data():
    pc = _pipecat()
    d = dialect('{"from_number":"+15550100","to_number":"+15550101","user":"42"}')
    kind, call = asyncio.run(pc["parse_telephony_websocket"](_FakeStarletteWS(d.opening())))
    assert kind == "twilio"
    assert call["stream_id"] == d.stream_sid and call["call_id"] == UUID
    assert call["body"] == {"from_number": "+15550100", "to_number": "+15550101", "user": "42"}


def test_pipecat_serializer_reads_our_media_and_dtmf_and_we_read_its_output():
    pc = _pipecat()
    d = opened()
    s = pc["TwilioFrameSerializer"](d.stream_sid, call_sid=UUID,
                                    params=pc["TwilioFrameSerializer"].InputParams(auto_hang_up=False))

    async def run():
        await s.setup(pc["StartFrame"](audio_in_sample_rate=8000, audio_out_sample_rate=8000))
        pcm = tone(seconds=0.02).tobytes()
        f = await s.deserialize(d.media(pcm)[0])
        assert isinstance(f, pc["InputAudioRawFrame"]) and f.sample_rate == 8000
        # Pipecat decodes with audioop.ulaw2lin: the same table as ours
        assert f.audio == T.ulaw_decode(T.ulaw_encode(pcm))
        for digit in "0123456789*#":
            k = await s.deserialize(d.dtmf(digit)[0])
            assert isinstance(k, pc["InputDTMFFrame"]) and k.button.value == digit
        # A-D have no KeypadEntry: Pipecat drops them (docs/twilio.md)
        assert await s.deserialize(d.dtmf("A")[0]) is None
        for other in d.mark_ack("m") + d.closing():
            assert await s.deserialize(other) is None
        # and the other way: what Pipecat sends to Twilio, our parse understands
        out = await s.serialize(pc["OutputAudioRawFrame"](audio=pcm, sample_rate=8000, num_channels=1))
        m = d.parse(out)
        assert isinstance(m, P.StreamAudio) and m.audio_type == "pcmu" and len(m.payload) == 160
        assert d.parse(await s.serialize(pc["InterruptionFrame"]())) == P.KillAudio()

    asyncio.run(run())


def test_twilio_openai_sample_expectations():
    """twilio-samples/speech-assistant-openai-realtime-api-python main.py reads
    data['start']['streamSid'], int(data['media']['timestamp']) and data['media']['payload'] (sent
    on to OpenAI as audio/pcmu), and pops a mark per mark event: mirrored here."""
    d = dialect()
    frames = d.opening() + d.media(tone(seconds=0.1).tobytes()) + d.mark_ack("responsePart")
    stream_sid, latest = None, 0
    marks = ["responsePart"]
    for text in frames:
        data = json.loads(text)
        if data["event"] == "media":
            latest = int(data["media"]["timestamp"])
            assert len(base64.b64decode(data["media"]["payload"])) == 160
        elif data["event"] == "start":
            stream_sid = data["start"]["streamSid"]
        elif data["event"] == "mark":
            marks.pop(0)
    assert stream_sid == d.stream_sid and latest == 80 and marks == []


# ---- the example bot over a real WebSocket -----------------------------------------------------

class Bot:
    def __init__(self, *args):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "audio_stream.examples.twilio_bot", "--port", "0", "--check", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self.lines = []
        line = self.proc.stdout.readline()
        self.lines.append(line)
        m = re.search(r"listening on ws://([\d.]+):(\d+)/", line)
        assert m, "the bot did not start: %r" % (line + self.stop())
        self.url = "ws://%s:%s/media" % m.groups()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            out, _ = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        self.lines += out.splitlines(True)
        return "".join(self.lines)


@pytest.fixture
def bot_factory():
    bots = []

    def make(*args):
        b = Bot(*args)
        bots.append(b)
        return b
    yield make
    for b in bots:
        b.stop()


async def _drive(url, d, script, headers=None):
    import aiohttp
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url, headers=headers) as ws:
            async def recv(timeout=5.0):
                msg = await asyncio.wait_for(ws.receive(), timeout)
                assert msg.type == aiohttp.WSMsgType.TEXT, msg
                return d.parse(msg.data), json.loads(msg.data)

            async def send(frames):
                for f in frames:
                    documented(f)
                    await ws.send_str(f)
            await script(ws, send, recv)
            return ws.close_code


def test_bot_echoes_marks_and_clears(bot_factory):
    bot = bot_factory("--greet", "--echo-ms", "500")
    d = dialect('{"caller":"Jane","n":3}')
    caller = tone(440, 1.0)
    seen = {}

    async def script(ws, send, recv):
        await send(d.opening())
        # --greet: one media message (the chime) and the mark "greeting", addressed to our stream
        m, raw = await recv()
        assert isinstance(m, P.StreamAudio) and m.audio_type == "pcmu" and m.sample_rate == 8000
        assert raw["streamSid"] == d.stream_sid and len(m.payload) == 4800
        assert await recv() == (P.Mark("greeting"), {"event": "mark", "streamSid": d.stream_sid,
                                                      "mark": {"name": "greeting"}})
        await send(d.mark_ack("greeting"))
        # one second of the caller in 20 ms media messages → two 500 ms echoes, each with a mark
        pcm = caller.tobytes()
        for at in range(0, len(pcm), 320):
            await send(d.media(pcm[at:at + 320]))
        echoed = b""
        for n in (1, 2):
            m, _ = await recv()
            assert isinstance(m, P.StreamAudio)
            echoed += m.payload
            assert (await recv())[0] == P.Mark("echo-%d" % n)
        seen["echoed"] = echoed
        # the audio before echo-1 "played", echo-2 was cleared: both come back as Twilio marks
        await send(d.mark_ack("echo-1"))
        # a digit: the bot interrupts with clear
        await send(d.dtmf("5", 100))
        m, raw = await recv()
        assert m == P.KillAudio() and raw == {"event": "clear", "streamSid": d.stream_sid}
        await send(d.mark_ack("echo-2", "cleared"))
        await send(d.closing())
        # the bot closes after stop, as Twilio's samples do
        msg = await asyncio.wait_for(ws.receive(), 5)
        assert msg.type.name in ("CLOSE", "CLOSED", "CLOSING")

    asyncio.run(_drive(bot.url, d, script))
    assert seen["echoed"] == T.ulaw_encode(caller.tobytes())
    out = bot.stop()
    assert "PROTOCOL ERROR" not in out, out
    assert "Connected Message received" in out and "Start Message received" in out
    assert '"customParameters":{"caller":"Jane","n":"3"}' in out
    assert "DTMF 5 received; sending clear" in out
    assert "50 media messages, last timestamp 980 ms, 2 echoes, marks back: greeting,echo-1,echo-2" in out


def test_bot_records_and_checks_both_tracks(bot_factory, tmp_path):
    bot = bot_factory("--mode", "listen", "--record", str(tmp_path))
    d = dialect(tracks=("inbound", "outbound"))
    left, right = tone(440, 0.5), tone(1000, 0.5)
    stereo = np.stack([left, right], axis=1).reshape(-1).astype("<i2").tobytes()

    async def script(ws, send, recv):
        await send(d.opening())
        for at in range(0, len(stereo), 640):
            await send(d.media(stereo[at:at + 640]))
        d.skip(200)
        await send(d.media(stereo[:640]))
        await send(d.closing())
        msg = await asyncio.wait_for(ws.receive(), 5)
        assert msg.type.name in ("CLOSE", "CLOSED", "CLOSING")

    asyncio.run(_drive(bot.url, d, script))
    out = bot.stop()
    assert "PROTOCOL ERROR" not in out, out
    assert "52 media messages, last timestamp 700 ms, 0 echoes" in out
    import wave
    with wave.open(str(tmp_path / ("%s.wav" % UUID))) as w:
        got = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    assert len(got) == 4160            # the inbound track only
    assert np.abs(got[:4000].astype(int) - left.astype(int)).max() <= 8000 / 32 + 8


def test_bot_check_reports_a_broken_sequence(bot_factory):
    """The bot's --check is what the end-to-end tests rely on: show that it does catch things."""
    bot = bot_factory("--mode", "listen")
    d = dialect()

    async def script(ws, send, recv):
        await send(d.opening())
        frames = d.media(tone(seconds=0.06).tobytes())
        await ws.send_str(frames[0])
        await ws.send_str(frames[2])                      # skips a sequenceNumber and a chunk
        await ws.send_str(json.dumps({"event": "media", "sequenceNumber": "5", "streamSid": d.stream_sid,
                                      "media": {"track": "inbound", "chunk": 4, "timestamp": "60", "payload": ""}}))
        await send(d.closing())
        await asyncio.wait_for(ws.receive(), 5)

    asyncio.run(_drive(bot.url, d, script))
    out = bot.stop()
    assert "PROTOCOL ERROR: sequenceNumber 4 after 2" in out
    assert "PROTOCOL ERROR: media.chunk '3' after 1" in out
    assert "PROTOCOL ERROR: media.chunk 4" in out


def test_bot_help():
    r = subprocess.run([sys.executable, "-m", "audio_stream.examples.twilio_bot", "--help"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "--echo-ms" in r.stdout and "customParameters" in r.stdout


def test_bot_does_not_record_audio_that_is_not_what_twilio_sends(bot_factory, tmp_path):
    bot = bot_factory("--mode", "listen", "--record", str(tmp_path))
    d = dialect()

    async def script(ws, send, recv):
        await send(d.opening())
        await send(d.media(tone(440, 0.2).tobytes()))
        await send(d.closing())
        await asyncio.wait_for(ws.receive(), 5)
    headers = {"X-Audio-Stream-Encoding": "L16", "X-Audio-Stream-Rate": "16000", "X-Audio-Stream-Channels": "1"}
    asyncio.run(_drive(bot.url, d, script, headers=headers))
    out = bot.stop()
    assert "Not recording this stream: its audio is L16 16000 Hz, 1 channel (the X-Audio-Stream-* headers), " \
           "not μ-law at 8000 Hz" in out, out
    assert not list(tmp_path.iterdir())


def test_bot_errors_are_one_line(tmp_path):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "audio_stream.examples.twilio_bot", "--port", str(port)],
                           capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "address already in use" in r.stderr.lower(), r.stderr
    r = subprocess.run([sys.executable, "-m", "audio_stream.examples.twilio_bot", "--record", "/proc/nope"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and r.stderr == "error: cannot create the directory /proc/nope: No such file or directory\n"
