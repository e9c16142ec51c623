import pytest
from hypothesis import given, strategies as st

from audio_stream.config import ConfigError, settings_from, switch_true


def make(vars_, ptime=20):
    return settings_from(lambda n: vars_.get(n), ptime)


def test_defaults():
    s = make({})
    assert (s.buffer_ms, s.heart_beat, s.deflate, s.suppress_log, s.playback) == (20, 0, False, False, True)
    assert s.extra_headers == () and s.sample_rate is None and s.playback_buffer_ms == 60000


def test_mod_audio_stream_variables():
    s = make({"STREAM_BUFFER_SIZE": "100", "STREAM_HEART_BEAT": "15", "STREAM_MESSAGE_DEFLATE": "true",
              "STREAM_SUPPRESS_LOG": "yes", "STREAM_EXTRA_HEADERS": '{"Authorization": "Bearer x", "X-A": "1"}'})
    assert s.buffer_ms == 100 and s.heart_beat == 15 and s.deflate is False and s.suppress_log
    assert s.extra_headers == (("Authorization", "Bearer x"), ("X-A", "1"))


def test_deflate_is_off_unless_asked_for():
    assert make({}).deflate is False
    assert make({"STREAM_MESSAGE_DEFLATE": "true"}).deflate is False     # mod_audio_stream: true disables
    assert make({"STREAM_MESSAGE_DEFLATE": "false"}).deflate is True     # ... and false is its default: on
    assert make({"STREAM_MESSAGE_DEFLATE": "0"}).deflate is True


def test_default_buffer_follows_a_30ms_ptime():
    assert make({}, ptime=30).buffer_ms == 30
    assert make({}, ptime=10).buffer_ms == 20
    assert make({}, ptime=60).buffer_ms == 60


def test_buffer_size_multiple_of_ptime():
    assert make({"STREAM_BUFFER_SIZE": "60"}, ptime=30).buffer_ms == 60
    with pytest.raises(ConfigError, match="not a multiple of the call's 30 ms ptime"):
        make({"STREAM_BUFFER_SIZE": "40"}, ptime=30)
    with pytest.raises(ConfigError, match="not an integer"):
        make({"STREAM_BUFFER_SIZE": "fast"})
    with pytest.raises(ConfigError, match="out of range"):
        make({"STREAM_BUFFER_SIZE": "0"})


@pytest.mark.parametrize("raw,why", [("{bad", "not valid JSON"), ("[1]", "JSON object"),
                                     ('{"A": 1}', "not a string"), ('{"A B": "x"}', "not a valid header name"),
                                     ('{"A": "x\\r\\nInjected: 1"}', "CR, LF"),
                                     ('{"x-audio-stream-rate": "8000"}', "part of the WebSocket handshake"),
                                     ('{"X-Audio-Stream-Encoding": "PCMA"}', "part of the WebSocket handshake")])
def test_extra_headers_rejected(raw, why):
    with pytest.raises(ConfigError, match=why):
        make({"STREAM_EXTRA_HEADERS": raw})


@pytest.mark.parametrize("v,expected", [("true", True), ("YES", True), ("on", True), ("t", True), ("1", True),
                                        ("enabled", True), ("false", False), ("0", False), ("no", False),
                                        ("", False), (None, False), ("maybe", False)])
def test_switch_true(v, expected):
    assert switch_true(v) is expected


def test_playback_and_rates():
    s = make({"STREAM_PLAYBACK": "false", "STREAM_SAMPLE_RATE": "24000", "STREAM_PLAYBACK_BUFFER": "5000"})
    assert s.playback is False and s.sample_rate == 24000 and s.playback_buffer_ms == 5000
    with pytest.raises(ConfigError, match="STREAM_SAMPLE_RATE"):
        make({"STREAM_SAMPLE_RATE": "7"})


def test_empty_value_means_default():
    assert make({"STREAM_BUFFER_SIZE": ""}).buffer_ms == 20


@given(st.dictionaries(st.sampled_from(["STREAM_BUFFER_SIZE", "STREAM_HEART_BEAT", "STREAM_EXTRA_HEADERS",
                                        "STREAM_PLAYBACK_BUFFER", "STREAM_SAMPLE_RATE", "STREAM_MAX_MESSAGE",
                                        "STREAM_CONNECT_TIMEOUT"]), st.text(max_size=40)))
def test_any_values_give_settings_or_config_error(vars_):
    try:
        make(vars_)
    except ConfigError as e:
        assert str(e)


def test_stream_dtmf():
    assert make({}).dtmf is True
    assert make({"STREAM_DTMF": "false"}).dtmf is False
    assert make({"STREAM_DTMF": "off"}).dtmf is False
    assert make({"STREAM_DTMF": "1"}).dtmf is True
