"""The start/stop race on the switch simulator: the window between registering a stream and its
bugs being on the call is widened on purpose (a slow CapturePort.attach); whatever comes in that
window (stop, graceful-shutdown, status, a hangup) waits for the attach, and nothing is left on
the call or in the process."""
import json
import threading
import time

import pytest

from audio_stream import service
from audio_stream.switch import accel, dtmf, media
from audio_stream.testing.sim import wait_until

WINDOW_S = 0.3


@pytest.fixture(params=["before", "after"], ids=["before-capture-bug", "after-capture-bug"])
def slow_attach(monkeypatch, request):
    """The window widened before the capture bug is added, or after it (the control bug and the
    DTMF hook not yet)."""
    entered = threading.Event()

    def slowed(original):
        def attach(self, session):
            if request.param == "before":
                entered.set()
                time.sleep(WINDOW_S)
            result = original(self, session)
            if request.param == "after":
                entered.set()
                time.sleep(WINDOW_S)
            return result
        return attach

    for cls in (media.CaptureSource, accel.AccelCapture):       # both media paths
        monkeypatch.setattr(cls, "attach", slowed(cls.attach))
    return entered


def start_in_background(h, line):
    replies = []
    t = threading.Thread(target=lambda: replies.append(h.api(line)))
    t.start()
    return t, replies


@pytest.mark.parametrize("command", ["stop", "graceful-shutdown"])
def test_a_command_during_the_attach_waits_for_it(h, slow_attach, command):
    server = h.server()
    ch = h.call(rate=8000, STREAM_GRACEFUL_TIMEOUT=1, STREAM_DTMF="true")
    t, replies = start_in_background(h, "%s start %s mono 8k meta" % (ch.uuid, server.url))
    assert slow_attach.wait(5)
    doc = json.loads(h.api("%s status" % ch.uuid))
    assert [s["state"] for s in doc["streams"]] == ["attaching"]
    assert h.api("%s %s" % (ch.uuid, command)) == "+OK Success"
    t.join(5)
    assert replies == ["+OK Success"]
    conn = server.wait_conn()
    assert conn.closed.wait(5) and conn.close_code == 1000
    assert conn.messages[0] == ("text", "meta")
    assert wait_until(lambda: ch.bug_count == 0), "a bug was left on the call"
    assert h.settle()
    assert service.get(ch.uuid) is None
    assert media.live_ports() == 0 and dtmf.live_ports() == 0


def test_a_hangup_during_the_attach(h, slow_attach):
    server = h.server()
    ch = h.call(rate=8000)
    t, replies = start_in_background(h, "%s start %s mono 8k" % (ch.uuid, server.url))
    assert slow_attach.wait(5)
    ch.hangup()
    t.join(5)
    assert replies and (replies[0] == "+OK Success" or replies[0].startswith("-ERR")), replies
    assert h.settle()
    assert media.live_ports() == 0


def test_many_starts_and_stops_racing(h):
    """No widened window: start on one thread, stop on another, many times over."""
    server = h.server()
    ch = h.call(rate=8000)
    for i in range(20):
        t, replies = start_in_background(h, "%s start %s mono 8k" % (ch.uuid, server.url))
        time.sleep(0.0005 * (i % 5))
        stop = h.api("%s stop" % ch.uuid)
        t.join(5)
        assert replies[0] == "+OK Success" or replies[0].startswith("-ERR already streaming")
        assert stop == "+OK Success" or stop.startswith("-ERR not streaming")
        if stop.startswith("-ERR"):
            h.api("%s stop" % ch.uuid)
        assert wait_until(lambda: service.get(ch.uuid) is None, 5)
    assert h.settle()
    assert wait_until(lambda: ch.bug_count == 0)
    assert media.live_ports() == 0
