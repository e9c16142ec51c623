"""DTMF to the server, against a real FreeSWITCH (skips without one).

A loopback pair: `originate {origination_uuid=A}loopback/tone/fstest &park()`. The b-leg's DTMF
reaches the a-leg as received digits: mod_loopback's send_dtmf queues them on the other leg's
channel. `uuid_send_dtmf <b> 159#` marks them DTMF_FLAG_SKIP_PROCESS (so no receive hook sees
them): they reach the stream through the DTMF event when the parked a-leg takes them. In-band
tones on an a-leg running `start_dtmf` are detected on its media thread and reach the stream
through the receive hook.
"""
import json
import time

import pytest

from ..support import WSServer
from .conftest import api

pytestmark = pytest.mark.usefixtures("has_reload")




def dtmf_texts(conn):
    return [json.loads(t) for t in conn.texts if t.startswith('{"type":"dtmf"')]


def wait(pred, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_uuid_send_dtmf_on_the_b_leg_reaches_the_a_legs_server(fs, calls, events):
    server = WSServer()
    try:
        a, b = calls.originate("loopback/tone/fstest")
        assert api(fs, "%s start %s mono 8k" % (a, server.url)) == "+OK Success"
        conn = server.wait_conn()
        time.sleep(0.5)
        assert fs.api("uuid_send_dtmf %s 159#" % b).startswith("+OK")
        assert wait(lambda: len(dtmf_texts(conn)) == 4), conn.texts
        got = dtmf_texts(conn)
        assert [m["data"]["digit"] for m in got] == ["1", "5", "9", "#"]
        assert all(m["type"] == "dtmf" and m["data"]["duration"] == 250 for m in got)   # the core's default
        # the audio before the first digit went first
        first = next(i for i, (k, m) in enumerate(conn.messages) if k == "text" and m.startswith('{"type":"dtmf"'))
        assert sum(len(m) for k, m in conn.messages[:first] if k == "binary") >= 0.4 * 16000
        ev = events.wait("mod_audio_stream::dtmf", a, predicate=lambda e: json.loads(e["_body"])["digit"] == "#")
        assert ev is not None and json.loads(ev["_body"]) == {"digit": "#", "duration": 250}
        assert ev.get("Channel-Name", "").startswith("loopback/")
        assert fs.api("uuid_send_dtmf %s ~24@100" % b).startswith("+OK")
        assert wait(lambda: len(dtmf_texts(conn)) == 6), conn.texts
        assert [(m["data"]["digit"], m["data"]["duration"]) for m in dtmf_texts(conn)[4:]] == [("2", 100), ("4", 100)]
        assert api(fs, "%s stop" % a) == "+OK Success"
        assert conn.closed.wait(5)
        fs.api("uuid_send_dtmf %s 7" % b)
        time.sleep(0.3)
        assert len(dtmf_texts(conn)) == 6
        assert len(events.all("mod_audio_stream::dtmf", a)) == 6
    finally:
        server.stop()


def test_in_band_digits_come_through_the_receive_hook(fs, calls):
    server = WSServer()
    try:
        a, b = calls.originate("loopback/park/fstest", "start_dtmf,park inline")
        assert api(fs, "%s start %s mono 8k" % (a, server.url)) == "+OK Success"
        conn = server.wait_conn()
        time.sleep(0.3)
        assert fs.api("uuid_broadcast %s tone_stream://d=200;w=200;3 aleg" % b).startswith("+OK")
        assert wait(lambda: len(dtmf_texts(conn)) == 1), conn.texts
        m = dtmf_texts(conn)[0]
        assert m["data"]["digit"] == "3" and 100 <= m["data"]["duration"] <= 300
        time.sleep(0.5)
        assert len(dtmf_texts(conn)) == 1          # one path per digit: no double from the DTMF event
        api(fs, "%s stop" % a)
        assert conn.closed.wait(5)
    finally:
        server.stop()


def test_stream_dtmf_false_sends_no_digits(fs, calls):
    server = WSServer()
    try:
        a, b = calls.originate("loopback/tone/fstest", variables="STREAM_DTMF=false")
        assert api(fs, "%s start %s mono 8k" % (a, server.url)) == "+OK Success"
        conn = server.wait_conn()
        fs.api("uuid_send_dtmf %s 12" % b)
        fs.api("uuid_send_dtmf %s ~34" % b)
        time.sleep(0.8)
        api(fs, "%s stop" % a)
        assert conn.closed.wait(5)
        assert dtmf_texts(conn) == []
    finally:
        server.stop()


def test_hangup_while_digits_flow(fs, calls):
    """Calls hang up while digits arrive on both paths: the switch survives, every stream ends."""
    server = WSServer()
    try:
        legs = []
        for _ in range(5):
            a, b = calls.originate("loopback/tone/fstest")
            assert api(fs, "%s start %s mono 8k" % (a, server.url)) == "+OK Success"
            legs.append((a, b))
        server.wait_conn(5)
        for i, (a, b) in enumerate(legs):
            for _ in range(3):
                fs.api("uuid_send_dtmf %s 1" % b)
                fs.api("uuid_send_dtmf %s ~2" % b)
            if i % 2:
                fs.api("uuid_kill %s" % b)
            else:
                fs.api("uuid_kill %s" % a)
        assert wait(lambda: all(c.closed.is_set() for c in server.conns), 10)
        assert "is ready" in fs.api("status")
        for a, _ in legs:
            assert api(fs, "%s stop" % a).startswith("-ERR")
    finally:
        server.stop()
