"""The echo bot with the real switch: a call whose caller says a tone in bursts is streamed to the
bot, which plays each burst back (our own writes on a parked leg) and gets its mark back."""
from ..servers import Spawned


def test_echo_bot_on_a_real_call(fs, events, calls):
    bot = Spawned("audio_stream.examples.echo_bot", "--pause", "0.5")
    try:
        # a-leg plays 0.7 s of 440 Hz every 2 s into the loopback; the parked b-leg hears it
        a, b = calls.originate("loopback/park/fstest", "&endless_playback(tone_stream://%(700,1300,440))")
        assert fs.api("python audio_stream %s start %s mono 8k {\"rate\":8000}" % (b, bot.url)) == "+OK Success"
        assert events.wait("mod_audio_stream::connect", uuid=b, timeout=10)
        assert bot.wait_line(r"call 1: heard 0\.\d+ s: playing it back, then mark echo-1", timeout=10), bot.lines
        started = events.wait("mod_audio_stream::playback_started", uuid=b, timeout=10)
        assert started and '"latency_ms"' in started["_body"]
        mark = events.wait("mod_audio_stream::mark", uuid=b, timeout=10)
        assert mark["_body"] == '{"name":"echo-1","event":"playout"}'
        assert bot.wait_line(r"call 1: mark echo-1 playout", timeout=5), bot.lines
        assert fs.api("python audio_stream %s stop" % b) == "+OK Success"
        assert bot.wait_line(r"call 1: closed with 1000", timeout=10), bot.lines
    finally:
        assert bot.stop() == 0
