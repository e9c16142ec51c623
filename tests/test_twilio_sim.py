"""STREAM_PROTOCOL=twilio through the real stack on the switch simulator: what a Twilio Media
Streams server sees, and what it sends, played into the call."""
import base64
import json
import time

import numpy as np

from audio_stream import service, twilio
from audio_stream.testing.sim import wait_until

from .support import dominant_hz, tone


def texts(conn):
    return [json.loads(t) for t in conn.texts]


def test_a_twilio_server_sees_connected_start_media_stop(h):
    server = h.server()
    ch = h.call(rate=16000, read_hz=440, STREAM_PROTOCOL="twilio", STREAM_TWILIO_ACCOUNT_SID="AC123")
    assert h.api('%s start %s mono 8k {"caller":"Jane"}' % (ch.uuid, server.url)) == "+OK Success"
    conn = server.wait_conn()
    time.sleep(1.0)
    assert h.api("%s stop" % ch.uuid) == "+OK Success"
    assert conn.closed.wait(5) and conn.close_code == 1000
    assert not conn.binaries
    msgs = texts(conn)
    assert msgs[0] == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    start = msgs[1]
    assert start["event"] == "start" and start["sequenceNumber"] == "1"
    sid = start["streamSid"]
    assert start["start"]["callSid"] == ch.uuid and start["start"]["accountSid"] == "AC123"
    assert start["start"]["customParameters"] == {"caller": "Jane"}
    assert start["start"]["mediaFormat"] == {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
    media = [m for m in msgs if m["event"] == "media"]
    assert len(media) >= 40
    seqs = [int(m["sequenceNumber"]) for m in msgs[1:]]
    assert seqs == list(range(1, len(seqs) + 1))
    assert [int(m["media"]["chunk"]) for m in media] == list(range(1, len(media) + 1))
    assert [int(m["media"]["timestamp"]) for m in media] == [20 * i for i in range(len(media))]
    assert all(m["streamSid"] == sid and m["media"]["track"] == "inbound" for m in media)
    payload = b"".join(base64.b64decode(m["media"]["payload"]) for m in media)
    assert all(len(base64.b64decode(m["media"]["payload"])) == 160 for m in media[:-1])
    pcm = np.frombuffer(twilio.ulaw_decode(payload), "<i2")
    assert abs(dominant_hz(pcm, 8000, 0.5) - 440) < 5      # 16 kHz call, resampled to Twilio's 8 kHz
    assert msgs[-1]["event"] == "stop" and msgs[-1]["streamSid"] == sid


def test_a_twilio_server_plays_marks_and_clears(h):
    server = h.server()
    ch = h.call(rate=8000, STREAM_PROTOCOL="twilio")
    assert h.api("%s start %s mono 8k" % (ch.uuid, server.url)) == "+OK Success"
    conn = server.wait_conn()
    assert server.wait_for(lambda: len(conn.texts) >= 2, 3)
    sid = json.loads(conn.texts[1])["streamSid"]
    x = tone(700, 8000, 0.5)
    ulaw = twilio.ulaw_encode(x.tobytes())
    server.send(conn, json.dumps({"event": "media", "streamSid": sid,
                                  "media": {"payload": base64.b64encode(ulaw).decode()}}))
    server.send(conn, json.dumps({"event": "mark", "streamSid": sid, "mark": {"name": "hello"}}))
    assert server.wait_for(lambda: any(json.loads(t).get("event") == "mark" for t in conn.texts), 5)
    ack = [json.loads(t) for t in conn.texts if json.loads(t).get("event") == "mark"][0]
    assert ack["mark"] == {"name": "hello"} and ack["streamSid"] == sid
    heard = ch.heard()
    first = int(np.argmax(np.abs(heard.astype(int)) > 500))
    assert abs(dominant_hz(heard[first:first + 3000], 8000) - 700) < 5
    # a long one, then clear: its mark comes back at once
    server.send(conn, json.dumps({"event": "media", "streamSid": sid,
                                  "media": {"payload": base64.b64encode(twilio.ulaw_encode(
                                      tone(500, 8000, 5.0).tobytes())).decode()}}))
    server.send(conn, json.dumps({"event": "mark", "streamSid": sid, "mark": {"name": "long"}}))
    time.sleep(0.3)
    server.send(conn, json.dumps({"event": "clear", "streamSid": sid}))
    assert server.wait_for(lambda: sum(json.loads(t).get("event") == "mark" for t in conn.texts) == 2, 3)
    assert json.loads(h.events("mark")[-1]["_body"]) == {"name": "long", "event": "cleared"}
    # another stream's sid is refused, not played
    server.send(conn, json.dumps({"event": "media", "streamSid": "MZnope", "media": {"payload": "AAAA"}}))
    h.event("error", predicate=lambda e: "streamSid" in e["_body"])
    h.api("%s stop" % ch.uuid)
    assert conn.closed.wait(5)


def test_twilio_mode_refuses_what_it_cannot_do(h):
    server = h.server()
    ch = h.call(rate=8000, STREAM_PROTOCOL="twilio")
    assert h.api("%s start %s mixed 8k" % (ch.uuid, server.url)).startswith("-ERR STREAM_PROTOCOL=twilio has no mixed")
    assert h.api("%s start %s mono 16k" % (ch.uuid, server.url)).startswith("-ERR STREAM_PROTOCOL=twilio streams 8 kHz")
    ch.set_var("STREAM_PLAYBACK", "false")
    assert "file mode" in h.api("%s start %s mono 8k" % (ch.uuid, server.url))
    ch.set_var("STREAM_PROTOCOL", "sip")
    assert h.api("%s start %s mono 8k" % (ch.uuid, server.url)).startswith("-ERR STREAM_PROTOCOL='sip' is not one of")
    assert ch.bug_count == 0


def test_twilio_stereo_sends_both_tracks_and_reconnects_with_a_new_stream_sid(h):
    server = h.server()
    ch = h.call(rate=8000, core_writing=1, read_hz=440, write_hz=1000, STREAM_PROTOCOL="twilio")
    assert h.api("%s start %s stereo 8k" % (ch.uuid, server.url)) == "+OK Success"
    conn = server.wait_conn()
    time.sleep(0.5)
    server.close_conn(conn, 1012)
    conn2 = server.wait_conn(2)
    time.sleep(0.5)
    h.api("%s stop" % ch.uuid)
    assert conn2.closed.wait(5)
    first, second = texts(conn), texts(conn2)
    assert first[1]["start"]["tracks"] == ["inbound", "outbound"]
    assert second[0]["event"] == "connected" and second[1]["event"] == "start"
    assert second[1]["streamSid"] != first[1]["streamSid"]
    media = [m for m in second if m["event"] == "media"]
    inbound = b"".join(base64.b64decode(m["media"]["payload"]) for m in media if m["media"]["track"] == "inbound")
    outbound = b"".join(base64.b64decode(m["media"]["payload"]) for m in media if m["media"]["track"] == "outbound")
    assert abs(dominant_hz(np.frombuffer(twilio.ulaw_decode(inbound), "<i2"), 8000) - 440) < 10
    assert abs(dominant_hz(np.frombuffer(twilio.ulaw_decode(outbound), "<i2"), 8000) - 1000) < 10
    assert wait_until(lambda: service.get(ch.uuid) is None)
