import pytest
from hypothesis import given, strategies as st

from audio_stream import commands
from audio_stream.commands import CommandError, parse

U = "0b7e8f2a-1c2d-4e5f-8a9b-0c1d2e3f4a5b"


def reply(line):
    with pytest.raises(CommandError) as e:
        parse(line)
    return e.value.reply


def test_start_full():
    c = parse('%s start wss://ai.example.com:8443/path?x=1 stereo 16k {"a": 1, "b": "two words"}' % U)
    assert (c.uuid, c.name, c.url, c.mix, c.rate) == (U, "start", "wss://ai.example.com:8443/path?x=1", "stereo", 16000)
    assert c.text == '{"a": 1, "b": "two words"}'


@pytest.mark.parametrize("word,rate", [("8k", 8000), ("16k", 16000), ("24000", 24000), ("32k", 32000),
                                       ("44100", 44100), ("44.1k", 44100), ("48000", 48000), ("48K", 48000)])
def test_rates(word, rate):
    assert parse("%s start ws://h/ mono %s" % (U, word)).rate == rate


def test_rate_defaults_to_8k_like_mod_audio_stream():
    assert parse("%s start ws://h/ mono" % U).rate == 8000


@pytest.mark.parametrize("word", ["7999", "48001", "0", "-8000", "16x", "k", "1.5", "8000.5"])
def test_bad_rates(word):
    assert reply("%s start ws://h/ mono %s" % (U, word)).startswith("-ERR invalid sample rate")


@pytest.mark.parametrize("url", ["ws://127.0.0.1:8080/x", "wss://[::1]:9000/a", "ws://user:pw@host/p",
                                 "WS://Host.Example/", "ws://a-b.c/"])
def test_good_urls(url):
    assert parse("%s start %s mono 8k" % (U, url)).url == url


@pytest.mark.parametrize("url", ["http://h/", "ws:/h", "ws://", "ws://h:port/", "ws://h:99999/",
                                 "ftp://x", "ws://-bad-/", "ws://h:0/"])
def test_bad_urls(url):
    assert reply("%s start %s mono 8k" % (U, url)).startswith("-ERR invalid websocket url")


def test_mix_case_insensitive_and_unknown():
    assert parse("%s start ws://h/ MIXED 8k" % U).mix == "mixed"
    assert reply("%s start ws://h/ quad 8k" % U) == "-ERR unknown mix 'quad': must be mono, mixed or stereo"


def test_usage_and_missing_args():
    assert reply("").startswith("-USAGE:")
    assert reply("   ").startswith("-USAGE:")
    assert reply(U).startswith("-ERR missing command")
    assert reply("%s start" % U).startswith("-ERR start needs")
    assert reply("%s start ws://h/" % U).startswith("-ERR start needs")
    assert reply("%s send_text" % U) == "-ERR send_text needs the text to send"
    assert reply("%s dance" % U).startswith("-ERR unknown command 'dance'")
    for line in ("%s dance" % U, U):     # the docs' spelling, mod_audio_stream's: graceful-shutdown
        assert "graceful-shutdown, send_text" in reply(line) and "graceful_shutdown" not in reply(line)
    assert parse("%s graceful-shutdown bye" % U) == parse("%s graceful_shutdown bye" % U)
    assert reply("%s pause now" % U) == "-ERR pause takes no arguments (but name=<name>)"


def test_commands_case_insensitive_and_text_kept():
    assert parse("%s STOP" % U).name == "stop"
    assert parse("%s Stop  final words here" % U).text == "final words here"
    assert parse("%s send_text  {\"k\": \"v v\"}" % U).text == '{"k": "v v"}'
    assert parse("%s playback-clear" % U).name == "playback_clear"
    for name in ("pause", "resume", "playback_pause", "playback_resume", "playback_clear"):
        assert parse("%s %s" % (U, name)).name == name


def test_invalid_utf8_surrogates():
    assert reply("%s send_text bad \udcff" % U) == "-ERR the command line is not valid UTF-8"


def test_bad_uuid():
    assert reply("../etc start ws://h/ mono").startswith("-ERR invalid uuid")


@given(st.text(max_size=300))
def test_parse_never_raises_anything_else(line):
    try:
        c = parse(line)
    except CommandError as e:
        assert e.reply.startswith(("-ERR ", "-USAGE: "))
    else:
        assert c.name in commands.COMMANDS + commands.GLOBAL_COMMANDS


def test_reload_has_no_uuid():
    from audio_stream.commands import Command
    assert parse("reload") == Command(None, "reload")
    assert parse("  Reload ") == Command(None, "reload")
    with pytest.raises(CommandError, match="reload takes no arguments"):
        parse("reload now")
