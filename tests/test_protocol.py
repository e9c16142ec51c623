import base64
import json

from hypothesis import given, strategies as st

from audio_stream import config, protocol as P
from audio_stream.dialects import UplinkFormat


def sa(**data):
    return json.dumps({"type": "streamAudio", "data": data})


def test_stream_audio_raw():
    m = P.parse_text(sa(audioDataType="raw", sampleRate=16000, audioData=base64.b64encode(b"\x01\x02").decode(), x=1))
    assert m == P.StreamAudio("raw", 16000, b"\x01\x02", {"audioDataType": "raw", "sampleRate": 16000, "x": 1})


def test_stream_audio_errors():
    assert isinstance(P.parse_text(sa(audioDataType="raw", audioData="AAAA")), P.BadMessage)
    assert isinstance(P.parse_text(sa(audioDataType="raw", sampleRate="16000", audioData="AAAA")), P.BadMessage)
    assert isinstance(P.parse_text(sa(audioDataType="raw", sampleRate=True, audioData="AAAA")), P.BadMessage)
    assert isinstance(P.parse_text(sa(audioDataType="flac", sampleRate=8000, audioData="AAAA")), P.BadMessage)
    assert "base64" in P.parse_text(sa(audioDataType="raw", sampleRate=8000, audioData="***")).reason
    assert "missing audioData" in P.parse_text(sa(audioDataType="wav")).reason
    assert isinstance(P.parse_text('{"type":"streamAudio","data":[1]}'), P.BadMessage)


def test_pcmu_is_8k_and_wav_rate_optional():
    assert P.parse_text(sa(audioDataType="pcmu", audioData="AAAA")).sample_rate == 8000
    assert P.parse_text(sa(audioDataType="wav", audioData="AAAA")).sample_rate is None


def test_control_messages_and_twilio_aliases():
    assert P.parse_text('{"type":"killAudio"}') == P.KillAudio()
    assert P.parse_text('{"type":"clear"}') == P.KillAudio()
    assert P.parse_text('{"event":"clear","streamSid":"x"}') == P.KillAudio()
    assert P.parse_text('{"type":"mark","data":{"name":"m1"}}') == P.Mark("m1")
    assert P.parse_text('{"event":"mark","mark":{"name":"m2"}}') == P.Mark("m2")
    assert isinstance(P.parse_text('{"type":"mark","data":{}}'), P.BadMessage)
    assert P.parse_text('{"type":"clearMarks"}') == P.ClearMarks()
    assert P.parse_text('{"type":"pausePlayback"}') == P.PausePlayback()
    assert P.parse_text('{"type":"resumePlayback"}') == P.ResumePlayback()


def test_everything_else_passes_through_verbatim():
    for text in ['{"type":"transcript","text":"hi"}', "not json", "[1,2]", '"str"', "", '{"a":1e999999}']:
        assert P.parse_text(text) == P.Passthrough(text)


def test_bodies_match_mod_audio_stream():
    assert P.connect_body() == '{"status":"connected"}'
    assert P.disconnect_body(1000, "bye") == '{"status":"disconnected","message":{"code":1000,"reason":"bye"}}'
    assert P.error_body(6, "x/y") == '{"status":"error","message":{"code":6,"error":"x/y"}}'
    assert json.loads(P.play_body({"audioDataType": "wav", "é": "ü"}, "/tmp/a b")) == \
        {"audioDataType": "wav", "é": "ü", "file": "/tmp/a b"}
    assert P.mark_ack("m", "playout") == '{"type":"mark","data":{"name":"m","event":"playout"}}'


@given(st.one_of(st.text(max_size=200), st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.sampled_from(
        ["type", "event", "data", "audioDataType", "sampleRate", "audioData", "mark", "name"]), c, max_size=5),
    max_leaves=20).map(json.dumps)))
def test_parse_text_total(text):
    m = P.parse_text(text)
    assert type(m) in (P.StreamAudio, P.KillAudio, P.Mark, P.ClearMarks, P.PausePlayback, P.ResumePlayback,
                       P.Passthrough, P.BadMessage)


def test_the_audio_headers_say_what_goes_on_the_wire():
    from audio_stream.twilio import TwilioDialect
    assert P.audio_headers(UplinkFormat(16000, 2, 20)) == {
        "X-Audio-Stream-Encoding": "L16", "X-Audio-Stream-Rate": "16000", "X-Audio-Stream-Channels": "2"}
    twilio = TwilioDialect.for_stream("u", None, "stereo", 8000, config.Settings())
    assert P.audio_headers(twilio.uplink_format()) == {
        "X-Audio-Stream-Encoding": "PCMU", "X-Audio-Stream-Rate": "8000", "X-Audio-Stream-Channels": "2"}


def test_a_server_reads_the_audio_headers_back_or_gets_none():
    from multidict import CIMultiDict          # aiohttp's request headers: case-insensitive
    assert P.audio_format(CIMultiDict(P.audio_headers(UplinkFormat(16000, 2, 20)))) == ("L16", 16000, 2)
    lower = CIMultiDict((k.lower(), v) for k, v in P.audio_headers(UplinkFormat(8000, 1, 20, "PCMU")).items())
    assert P.audio_format(lower) == ("PCMU", 8000, 1)
    good = P.audio_headers(UplinkFormat(8000, 1, 20))
    assert P.audio_format({}) is None
    for name, bad in (("X-Audio-Stream-Encoding", "FLAC"), ("X-Audio-Stream-Rate", "16k"),
                      ("X-Audio-Stream-Rate", "4000"), ("X-Audio-Stream-Channels", "3"),
                      ("X-Audio-Stream-Channels", "")):
        assert P.audio_format(dict(good, **{name: bad})) is None, (name, bad)
