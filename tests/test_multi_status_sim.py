"""Several streams on one call, and live status, on the switch simulator."""
import base64
import json
import time


from audio_stream import service
from audio_stream.testing.sim import wait_until

from .support import dominant_hz, tone


def test_named_streams_feed_two_servers_from_one_call(h):
    asr, rec = h.server(), h.server()
    ch = h.call(rate=8000, read_hz=440)
    assert h.api("%s start %s mono 16k" % (ch.uuid, asr.url)) == "+OK Success"
    assert h.api("%s start name=recorder %s mono 8k" % (ch.uuid, rec.url)) == "+OK Success"
    a, r = asr.wait_conn(), rec.wait_conn()
    time.sleep(1.0)
    # commands reach the named one only
    assert h.api("%s send_text name=recorder hello" % ch.uuid) == "+OK Success"
    assert rec.wait_for(lambda: "hello" in r.texts, 3) and "hello" not in a.texts
    assert h.api("%s stop name=recorder" % ch.uuid) == "+OK Success"
    assert r.closed.wait(5) and not a.closed.is_set()
    assert abs(dominant_hz(r.audio(), 8000) - 440) < 5 and abs(dominant_hz(a.audio(), 16000) - 440) < 5
    assert abs(len(r.audio()) / 8000 - len(a.audio()[:len(a.audio())]) / 16000) < 0.2
    names = {e["Stream-Name"] for e in h.events("connect")}
    assert names == {"default", "recorder"}
    assert h.api("%s stop name=recorder" % ch.uuid) == "-ERR no stream named 'recorder' on %s" % ch.uuid
    assert h.api("%s stop" % ch.uuid) == "+OK Success"
    assert a.closed.wait(5)
    assert wait_until(lambda: ch.bug_count == 0)


def test_one_call_one_player_and_a_limit(h):
    """The first stream plays the server's audio into the call; a second one on the same call
    only listens (its server's audio is refused), so the two never fight over the frames."""
    s1, s2 = h.server(), h.server()
    ch = h.call(rate=8000)
    assert h.api("%s start %s mono 8k" % (ch.uuid, s1.url)) == "+OK Success"
    assert h.api("%s start name=b %s mono 8k" % (ch.uuid, s2.url)) == "+OK Success"
    c1, c2 = s1.wait_conn(), s2.wait_conn()
    pcm = base64.b64encode(tone(700, 8000, 0.3).tobytes()).decode()
    msg = json.dumps({"type": "streamAudio", "data": {"audioDataType": "raw", "sampleRate": 8000, "audioData": pcm}})
    s2.send(c2, msg)
    err = h.event("error", predicate=lambda e: e["Stream-Name"] == "b")
    assert "does not play into the call" in json.loads(err["_body"])["message"]["error"]
    s1.send(c1, msg)
    h.event("playback_stopped", predicate=lambda e: e["Stream-Name"] == "default")
    for n in ("c", "d"):
        assert h.api("%s start name=%s %s mono 8k" % (ch.uuid, n, s1.url)) == "+OK Success"
    reply = h.api("%s start name=e %s mono 8k" % (ch.uuid, s1.url))
    assert reply == "-ERR %s already has 4 streams (the most one call may have)" % ch.uuid
    assert h.api("%s start name=b %s mono 8k" % (ch.uuid, s1.url)) == \
        "-ERR already streaming on %s as 'b' (stop it first)" % ch.uuid
    assert h.api("%s start name=bad/name %s mono 8k" % (ch.uuid, s1.url)).startswith("-ERR invalid stream name")


def test_status_and_version(h):
    server = h.server()
    ch = h.call(rate=8000)
    assert h.api("%s start ws://user:secret@127.0.0.1:%d/s?token=abc&x=1 stereo 16k" % (ch.uuid, server.port)) \
        == "+OK Success"
    server.wait_conn()
    time.sleep(0.5)
    doc = json.loads(h.api("status"))
    assert doc["totals"]["live"] == 1 and len(doc["streams"]) == 1
    st = doc["streams"][0]
    assert st["uuid"] == ch.uuid and st["name"] == "default" and st["state"] == "streaming"
    assert st["url"] == "ws://***@127.0.0.1:%d/s?token=***&x=***" % server.port
    assert "secret" not in h.api("status") and "abc" not in h.api("status")
    assert (st["mix"], st["call_rate"], st["rate"]) == ("stereo", 8000, 16000)
    assert st["messages_sent"] >= 10 and st["bytes_sent"] >= 10 * 1280 and st["frames_captured"] >= 10
    assert st["dropped_ms"] == 0 and st["reconnects"] == 0 and st["playback"] == "idle"
    t = doc["totals"]
    assert t["loop_cpu_s"] > 0 and t["path"] in ("accel", "python")
    if t["path"] == "accel":
        # the capture passes ran with the GIL released: part of the loop thread's CPU, and at
        # least that much of its wall time
        assert 0 < t["pass_cpu_s"] <= t["loop_cpu_s"] and t["pass_wall_s"] >= t["pass_cpu_s"]
    else:
        assert "pass_cpu_s" not in t and "pass_wall_s" not in t
    one = json.loads(h.api("%s status" % ch.uuid))
    assert [s["uuid"] for s in one["streams"]] == [ch.uuid]
    other = h.call(rate=8000)
    assert json.loads(h.api("%s status" % other.uuid))["streams"] == []
    assert h.api("version").startswith("audio_stream ")
    assert h.api("status now").startswith("-ERR status takes no arguments")
    h.api("%s stop" % ch.uuid)
    assert wait_until(lambda: not service.busy())
    assert json.loads(h.api("status"))["streams"] == []
