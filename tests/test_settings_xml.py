"""audio_stream.conf parsing and validation, and the Loader's cache. Pure: no switch."""
import re
from pathlib import Path

import pytest

from audio_stream import config, settings_xml
from audio_stream.config import settings_from
from audio_stream.settings_xml import Loader, XmlSettings, parse

ROOT = Path(__file__).resolve().parent.parent


def conf(settings="", limits="", extra=""):
    return ('<configuration name="audio_stream.conf"><settings>%s</settings><limits>%s</limits>%s</configuration>'
            % (settings, limits, extra))


def p(name, value):
    return '<param name="%s" value="%s"/>' % (name, value)


def test_no_file_is_the_built_in_defaults():
    for text in (None, "", "   "):
        c = parse(text)
        assert c == XmlSettings() and not c.found and c.count == 0


def test_defaults_and_limits():
    c = parse(conf(p("STREAM_BUFFER_SIZE", "60") + p("stream_heart_beat", "15") + p("STREAM_DTMF", "false"),
                   p("max_streams", "3") + p("max-message-size", "65536")))
    assert c.found and c.problems == ()
    assert c.defaults == {"STREAM_BUFFER_SIZE": "60", "STREAM_HEART_BEAT": "15", "STREAM_DTMF": "false"}
    assert c.max_streams == 3 and c.max_message_size == 65536 and c.count == 5
    s = settings_from(lambda n: None, 20, defaults=c.defaults)
    assert s.buffer_ms == 60 and s.heart_beat == 15 and s.dtmf is False


def test_channel_variables_override_the_file():
    c = parse(conf(p("STREAM_BUFFER_SIZE", "60") + p("STREAM_PLAYBACK", "false")))
    s = settings_from({"STREAM_BUFFER_SIZE": "100"}.get, 20, defaults=c.defaults)
    assert s.buffer_ms == 100 and s.playback is False


def test_a_file_default_follows_the_ptime_like_the_built_in_one():
    c = parse(conf(p("STREAM_BUFFER_SIZE", "40")))
    assert settings_from(lambda n: None, 30, defaults=c.defaults).buffer_ms == 60


@pytest.mark.parametrize("name,value,why", [
    ("STREAM_BUFFER_SIZE", "abc", "is not an integer"),
    ("STREAM_BUFFER_SIZE", "0", "out of range"),
    ("STREAM_HEART_BEAT", "-1", "out of range"),
    ("STREAM_CONNECT_TIMEOUT", "x", "is not a number"),
    ("STREAM_EXTRA_HEADERS", "{bad", "not valid JSON"),
    ("STREAM_PLAYBACK_BUFFER", "1", "out of range"),
    ("STREAM_SAMPLE_RATE", "7999", "out of range"),
])
def test_a_bad_value_is_one_line_and_the_built_in_default(name, value, why):
    c = parse(conf(p(name, value) + p("STREAM_DTMF", "false")))
    assert name not in c.defaults and c.defaults == {"STREAM_DTMF": "false"}
    assert len(c.problems) == 1 and why in c.problems[0] and "audio_stream.conf" in c.problems[0]
    assert "built-in default" in c.problems[0] or "not set" in c.problems[0]
    settings_from(lambda n: None, 20, defaults=c.defaults)     # usable as it is


def test_unknown_names_sections_and_elements_are_reported():
    c = parse(conf(p("STREAM_NOPE", "1") + "<foo/>" + '<param name="STREAM_DTMF"/>',
                   p("max_calls", "5") + p("max_streams", "-1") + p("max_message_size", "10"),
                   "<other/>"))
    assert c.defaults == {} and c.max_streams == 0 and c.max_message_size is None
    text = "\n".join(c.problems)
    for needle in ("unknown setting 'STREAM_NOPE'", "<foo> in <settings>", "without name or value",
                   "unknown limit 'max_calls'", "max_streams=-1 is out of range", "max_message_size=10 is out of range",
                   "unknown section <other>"):
        assert needle in text, needle
    assert len(c.problems) == 7


def test_empty_value_is_unset_and_a_second_line_wins():
    c = parse(conf(p("STREAM_HEART_BEAT", "5") + p("STREAM_HEART_BEAT", "7") + p("STREAM_PLAYBACK", "")))
    assert c.defaults == {"STREAM_HEART_BEAT": "7"}
    assert c.problems == ("audio_stream.conf: STREAM_HEART_BEAT is set twice: the last one counts",)


def test_comments_and_xml_escapes():
    text = ('<configuration name="audio_stream.conf"><!-- c --><settings><!-- x -->'
            '<param name="STREAM_EXTRA_HEADERS" value="{&quot;X-A&quot;:&quot;a&amp;b&quot;}"/></settings>'
            '</configuration>')
    c = parse(text)
    assert c.problems == () and settings_from(lambda n: None, 20, defaults=c.defaults).extra_headers == (("X-A", "a&b"),)


def test_not_well_formed():
    c = parse("<configuration><settings>")
    assert c.found and c.error and "not well-formed" in c.error and c.defaults == {}


def test_max_message_size_caps_the_stream():
    c = parse(conf(limits=p("max_message_size", "2048")))
    logged = []
    s = c.limit(settings_from({"STREAM_MAX_MESSAGE": "100000"}.get, 20), lambda *a: logged.append(a))
    assert s.max_message == 2048 and logged and "max_message_size" in logged[0][1]
    s = c.limit(settings_from({"STREAM_MAX_MESSAGE": "1024"}.get, 20), lambda *a: logged.append(a))
    assert s.max_message == 1024 and len(logged) == 1


def test_the_shipped_file_parses_and_sets_nothing():
    text = (ROOT / "conf" / "autoload_configs" / "audio_stream.conf.xml").read_text()
    c = parse(text)
    assert c.found and c.problems == () and c.count == 0


def test_the_shipped_file_documents_every_variable():
    text = (ROOT / "conf" / "autoload_configs" / "audio_stream.conf.xml").read_text()
    for name in config.VARIABLES:
        assert 'name="%s"' % name in text, name
    for name in ("max_streams", "max_message_size"):
        assert 'name="%s"' % name in text


def test_variables_lists_every_variable_config_reads():
    source = (ROOT / "audio_stream" / "config.py").read_text()
    used = set(re.findall(r'"(STREAM_[A-Z_]+)"', source))
    assert used == set(config.VARIABLES), used ^ set(config.VARIABLES)


class Reader:
    def __init__(self, text):
        self.text, self.reads = text, 0

    def __call__(self):
        self.reads += 1
        if isinstance(self.text, Exception):
            raise self.text
        return self.text


def test_loader_parses_and_logs_only_when_the_text_changes():
    loader, logs = Loader(), []
    log = lambda level, msg: logs.append((level, msg))    # noqa: E731
    r = Reader(conf(p("STREAM_HEART_BEAT", "x") + p("STREAM_DTMF", "false")))
    a = loader.get(r, log)
    b = loader.get(r, log)
    assert a is b and r.reads == 2 and a.defaults == {"STREAM_DTMF": "false"}
    assert [lvl for lvl, _ in logs] == ["WARNING"]
    loader.get(r, log, force=True)                       # reload: parsed and logged again
    assert len(logs) == 2
    r.text = conf(p("STREAM_DTMF", "true"))             # reloadxml changed it
    assert loader.get(r, log).defaults == {"STREAM_DTMF": "true"} and len(logs) == 2
    r.text = None                                        # the file went away
    assert loader.get(r, log) == XmlSettings()


def test_loader_survives_a_failing_read():
    loader, logs = Loader(), []
    r = Reader(RuntimeError("boom"))
    assert loader.get(r, lambda *a: logs.append(a)) == XmlSettings()
    assert loader.get(r, lambda *a: logs.append(a)) == XmlSettings()
    assert len(logs) == 1 and "boom" in logs[0][1]


def test_current_reads_through_the_backend():
    class Core:
        def config_xml(self, name):
            assert name == "audio_stream.conf"
            return conf(p("STREAM_BUFFER_SIZE", "40"))

    class Be:
        core = Core()

        def log(self, *a):
            pass
    old = settings_xml.LOADER
    settings_xml.LOADER = Loader()
    try:
        assert settings_xml.current(Be()).defaults == {"STREAM_BUFFER_SIZE": "40"}
    finally:
        settings_xml.LOADER = old
