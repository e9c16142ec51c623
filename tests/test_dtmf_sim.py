"""DTMF to the server through the real stack on the switch simulator: the receive-DTMF hook and the
DTMF event path (switch/dtmf.py), the loop thread, a real WebSocket server."""
import json
import random
import threading
import time

from audio_stream import protocol, service
from audio_stream.switch import dtmf as dtmf_mod
from audio_stream.testing.sim import (DTMF_APP, DTMF_FLAG_SKIP_PROCESS, DTMF_INBAND_AUDIO, DTMF_UNKNOWN,
                                      wait_until)

FRAME = 160 * 2        # bytes of one 20 ms frame at 8 kHz, streamed mono 8k


def digits_of(conn):
    return [json.loads(t)["data"]["digit"] for t in conn.texts if t.startswith('{"type":"dtmf"')]


def audio_before_each_digit(conn):
    """Bytes of audio the server got before each dtmf message."""
    out, n = [], 0
    for kind, m in conn.messages:
        if kind == "binary":
            n += len(m)
        elif m.startswith('{"type":"dtmf"'):
            out.append(n)
    return out


def start(h, ch, server, mix="mono", rate="8k"):
    assert h.api("%s start %s %s %s" % (ch.uuid, server.url, mix, rate)) == "+OK Success"
    return server.wait_conn()


def test_digits_reach_the_server_in_order_after_the_audio_before_them(h):
    server = h.server()
    ch = h.call(rate=8000, start=False)
    ch.start(speed=1.0, ticks=0)
    conn = start(h, ch, server)
    ticks = 0
    for digit, gap in (("1", 10), ("5", 7), ("9", 1), ("#", 12)):
        ch.run_ticks(gap)
        ticks += gap
        ch.send_dtmf(digit, duration_ms=120)   # RTP: on the session thread at the start of the next frame
        ch.run_ticks(1)
        ticks += 1
        assert server.wait_for(lambda: digit in digits_of(conn), 5), conn.texts
    h.api("%s stop" % ch.uuid)
    assert conn.closed.wait(5)
    assert digits_of(conn) == ["1", "5", "9", "#"]
    assert [json.loads(t) for t in conn.texts][0] == {"type": "dtmf", "data": {"digit": "1", "duration": 120}}
    # the digit came before frame k+1 reached the bug: everything up to frame k is ahead of it, and
    # at most frame k+1 (buffered by the time the loop took the digit)
    k = 0
    for (before, gap) in zip(audio_before_each_digit(conn), (10, 7, 1, 12)):
        k += gap
        assert k * FRAME <= before <= (k + 1) * FRAME, (k, before)
        k += 1
    assert len(conn.audio()) * 2 == ticks * FRAME


def test_dtmf_event_with_channel_headers(h):
    server = h.server()
    ch = h.call(rate=16000)
    start(h, ch, server, "stereo", "16k")
    ch.send_dtmf("7", duration_ms=250)
    ev = h.event("dtmf")
    assert json.loads(ev["_body"]) == {"digit": "7", "duration": 250}
    assert ev["Unique-ID"] == ch.uuid and ev.get("Channel-Name") and ev["Event-Subclass"] == "mod_audio_stream::dtmf"


def test_short_and_long_digits_have_the_cores_durations(h):
    server = h.server()
    ch = h.call(rate=8000)
    conn = start(h, ch, server)
    ch.send_dtmf("1", duration_ms=0)          # the core makes it 50 ms
    ch.send_dtmf("2", duration_ms=100000)     # ... and at most 24 s
    assert server.wait_for(lambda: len(digits_of(conn)) == 2)
    assert [json.loads(t)["data"]["duration"] for t in conn.texts] == [50, 24000]


def test_injected_digits_come_through_the_dtmf_event(h):
    """uuid_send_dtmf on a loopback peer queues the digits with DTMF_FLAG_SKIP_PROCESS: no hook sees
    them; the stream takes them from the DTMF event when the call's application reads them."""
    server = h.server()
    ch = h.call(rate=8000)
    conn = start(h, ch, server)
    assert h.sim.event_bindings() == 1
    calls = ch.dtmf_hook_calls
    ch.send_dtmf("159#", via="queue", flags=DTMF_FLAG_SKIP_PROCESS, source=DTMF_UNKNOWN)
    assert server.wait_for(lambda: digits_of(conn) == ["1", "5", "9", "#"], 5), conn.texts
    assert ch.dtmf_hook_calls == calls
    # '~' (flags 0): the hook sees them too, but passes on only what the caller signalled: no doubles
    ch.send_dtmf("23", via="queue", source=DTMF_APP)
    assert server.wait_for(lambda: digits_of(conn)[4:] == ["2", "3"], 5), conn.texts
    assert ch.dtmf_hook_calls == calls + 2
    ch.send_dtmf("4", via="queue", source=DTMF_INBAND_AUDIO)
    assert server.wait_for(lambda: digits_of(conn)[6:] == ["4"], 5)
    time.sleep(0.2)
    assert digits_of(conn) == ["1", "5", "9", "#", "2", "3", "4"]
    assert len(h.events("dtmf")) == 7


def test_stream_dtmf_false(h):
    server = h.server()
    ch = h.call(rate=8000, STREAM_DTMF="false")
    conn = start(h, ch, server)
    assert ch.dtmf_hooks == 0 and h.sim.event_bindings() == 0
    ch.send_dtmf("12")
    ch.send_dtmf("3", via="queue", flags=DTMF_FLAG_SKIP_PROCESS)
    assert wait_until(lambda: ch.dtmf_dequeued == 3)
    time.sleep(0.2)
    h.api("%s stop" % ch.uuid)
    assert conn.closed.wait(5)
    assert digits_of(conn) == [] and h.events("dtmf") == []
    assert ch.dtmf_hook_calls == 0


def test_hook_removed_on_stop_no_callback_after(h):
    server = h.server()
    ch = h.call(rate=8000)
    conn = start(h, ch, server)
    assert ch.dtmf_hooks == 1
    ch.send_dtmf("1")
    assert server.wait_for(lambda: digits_of(conn) == ["1"])
    assert h.api("%s stop" % ch.uuid) == "+OK Success"
    assert conn.closed.wait(5)
    assert ch.dtmf_hooks == 0 and h.sim.event_bindings() == 0
    calls = ch.dtmf_hook_calls
    ch.send_dtmf("2")
    ch.send_dtmf("3", via="queue", flags=DTMF_FLAG_SKIP_PROCESS)
    assert wait_until(lambda: ch.dtmf_dequeued == 3)
    time.sleep(0.1)
    assert ch.dtmf_hook_calls == calls and len(h.events("dtmf")) == 1
    assert dtmf_mod.live_ports() == 0


def test_restart_after_stop_adds_the_hook_again(h):
    server = h.server()
    ch = h.call(rate=8000)
    start(h, ch, server)
    h.api("%s stop" % ch.uuid)
    assert h.settle()
    assert h.api("%s start %s mono 8k" % (ch.uuid, server.url)) == "+OK Success"
    conn = server.wait_conn(2)
    ch.send_dtmf("8")
    assert server.wait_for(lambda: digits_of(conn) == ["8"])
    assert ch.dtmf_hooks == 1


def test_hangup_ends_the_digits_and_leaves_nothing(h):
    server = h.server()
    ch = h.call(rate=8000)
    conn = start(h, ch, server)
    ch.send_dtmf("6")
    assert server.wait_for(lambda: digits_of(conn) == ["6"])
    ch.hangup()
    assert conn.closed.wait(5) and conn.close_code == 1000
    assert h.settle()
    assert dtmf_mod.live_ports() == 0 and h.sim.event_bindings() == 0
    calls = ch.dtmf_hook_calls
    ch.send_dtmf("7")
    time.sleep(0.1)
    assert ch.dtmf_hook_calls == calls


def test_failed_connect_removes_the_hook(h):
    from .support import free_port
    ch = h.call(rate=8000)
    assert h.api("%s start ws://127.0.0.1:%d/x mono 8k" % (ch.uuid, free_port())) == "+OK Success"
    h.event("error")
    assert wait_until(lambda: ch.dtmf_hooks == 0)
    assert h.settle()
    assert h.sim.event_bindings() == 0


def test_digits_while_connecting_follow_the_metadata(h):
    server = h.server(handshake_delay=0.4)
    ch = h.call(rate=8000)
    assert h.api("%s start %s mono 8k hello" % (ch.uuid, server.url)) == "+OK Success"
    ch.send_dtmf("42")
    assert wait_until(lambda: len(h.events("dtmf")) == 2)
    conn = server.wait_conn()
    assert server.wait_for(lambda: digits_of(conn) == ["4", "2"])
    assert conn.messages[0] == ("text", "hello")


def test_no_digits_while_paused_nor_sensitive_ones(h):
    server = h.server()
    ch = h.call(rate=8000)
    conn = start(h, ch, server)
    assert h.api("%s pause" % ch.uuid) == "+OK Success"
    ch.send_dtmf("12")
    ch.send_dtmf("3", via="queue", flags=DTMF_FLAG_SKIP_PROCESS)
    assert wait_until(lambda: ch.dtmf_dequeued == 3)
    time.sleep(0.1)
    assert h.api("%s resume" % ch.uuid) == "+OK Success"
    ch.set_var("sensitive_dtmf", "true")
    ch.send_dtmf("4")
    ch.send_dtmf("5", via="queue", flags=DTMF_FLAG_SKIP_PROCESS)
    assert wait_until(lambda: ch.dtmf_dequeued == 5)
    ch.set_var("sensitive_dtmf", None)
    ch.send_dtmf("6")
    assert server.wait_for(lambda: digits_of(conn) == ["6"])
    time.sleep(0.1)
    assert digits_of(conn) == ["6"] and len(h.events("dtmf")) == 1


def test_a_burst_of_injected_digits_arrives_whole_and_in_order(h):
    server = h.server()
    ch = h.call(rate=8000)
    conn = start(h, ch, server)
    ch.send_dtmf("*" * 40, via="queue", flags=DTMF_FLAG_SKIP_PROCESS)
    assert server.wait_for(lambda: len(digits_of(conn)) == 40, 5)
    assert set(digits_of(conn)) == {"*"}


def test_two_ports_on_one_call_share_one_hook(h):
    """The hook is per session; every port of the call gets each digit (several streams per call)."""
    ch = h.call(rate=8000)
    got = {1: [], 2: []}
    done = threading.Event()

    class L:
        def __init__(self, n):
            self.n = n

        def dtmf(self, digit, ms):
            got[self.n].append(digit)
            if len(got[1]) == 2 and len(got[2]) >= 1:
                done.set()
    notify = service.loop().call_soon_threadsafe
    p1, p2 = dtmf_mod.DtmfPort(h.be, L(1), notify), dtmf_mod.DtmfPort(h.be, L(2), notify)
    s = h.be.core.locate(ch.uuid)
    try:
        assert p1.attach(s) is None and p2.attach(s) is None
    finally:
        h.be.core.unlock(s)
    assert ch.dtmf_hooks == 1 and h.sim.event_bindings() == 1
    ch.send_dtmf("1")
    assert wait_until(lambda: got[1] == ["1"] and got[2] == ["1"])
    p2.detach()
    p2.detach()
    assert ch.dtmf_hooks == 1
    ch.send_dtmf("2", via="queue", flags=DTMF_FLAG_SKIP_PROCESS)
    assert done.wait(5) and got == {1: ["1", "2"], 2: ["1"]}
    p1.detach()
    assert ch.dtmf_hooks == 0 and h.sim.event_bindings() == 0 and dtmf_mod.live_ports() == 0


def test_hangup_races_with_digits_flowing(h):
    """Digits arrive on the session thread and from other threads while calls hang up at random
    moments: no crash, no violation, nothing left attached (the fixture checks)."""
    server = h.server()
    rnd = random.Random(13)
    stop = threading.Event()
    chans = []
    for _ in range(6):
        ch = h.call(rate=8000, speed=4.0)
        assert h.api("%s start %s mono 8k" % (ch.uuid, server.url)) == "+OK Success"
        chans.append(ch)

    def pound():
        while not stop.is_set():
            for ch in chans:
                if ch.state != 2:
                    try:
                        ch.send_dtmf("1", via="queue")
                        ch.send_dtmf("2", via="queue", flags=DTMF_FLAG_SKIP_PROCESS)
                        ch.send_dtmf("3")
                    except RuntimeError:
                        pass
            time.sleep(0.001)
    t = threading.Thread(target=pound)
    t.start()
    try:
        for ch in chans:
            time.sleep(rnd.uniform(0.0, 0.15))
            if rnd.random() < 0.5:
                ch.hangup()
            else:
                h.api("%s stop" % ch.uuid)
    finally:
        stop.set()
        t.join()
    assert h.settle(10)
    assert dtmf_mod.live_ports() == 0


def test_protocol_builders():
    assert protocol.NativeDialect.dtmf("5", 120) == ['{"type":"dtmf","data":{"digit":"5","duration":120}}']
    assert protocol.dtmf_body("#", 250) == '{"digit":"#","duration":250}'


def test_every_named_stream_of_a_call_gets_the_digits(h):
    asr, rec = h.server(), h.server()
    ch = h.call(rate=8000)
    assert h.api("%s start %s mono 16k" % (ch.uuid, asr.url)) == "+OK Success"
    assert h.api("%s start name=recorder %s mono 8k" % (ch.uuid, rec.url)) == "+OK Success"
    a, r = asr.wait_conn(), rec.wait_conn()
    assert ch.dtmf_hooks == 1 and h.sim.event_bindings() == 1        # one per call, one per process
    ch.send_dtmf("1")
    ch.send_dtmf("2", via="queue", flags=DTMF_FLAG_SKIP_PROCESS)
    assert asr.wait_for(lambda: digits_of(a) == ["1", "2"]) and rec.wait_for(lambda: digits_of(r) == ["1", "2"])
    assert wait_until(lambda: len(h.events("dtmf")) == 4)
    assert sorted(e["Stream-Name"] for e in h.events("dtmf")) == ["default", "default", "recorder", "recorder"]
    assert h.api("%s stop name=recorder" % ch.uuid) == "+OK Success"
    assert r.closed.wait(5)
    assert ch.dtmf_hooks == 1                                         # the default stream still listens
    ch.send_dtmf("3")
    assert asr.wait_for(lambda: digits_of(a) == ["1", "2", "3"])
    assert digits_of(r) == ["1", "2"]
    assert h.api("%s stop" % ch.uuid) == "+OK Success"
    assert a.closed.wait(5) and ch.dtmf_hooks == 0


def test_twilio_mode_sends_twilios_dtmf_message(h):
    server = h.server()
    ch = h.call(rate=8000, STREAM_PROTOCOL="twilio")
    assert h.api("%s start %s mono 8k" % (ch.uuid, server.url)) == "+OK Success"
    conn = server.wait_conn()
    assert server.wait_for(lambda: len(conn.texts) >= 2)
    ch.send_dtmf("5")
    ch.send_dtmf("#", via="queue", flags=DTMF_FLAG_SKIP_PROCESS)
    dtmf = lambda: [json.loads(t) for t in conn.texts if '"dtmf"' in t]   # noqa: E731
    assert server.wait_for(lambda: len(dtmf()) == 2), conn.texts
    sid = json.loads(conn.texts[1])["streamSid"]
    first = dtmf()[0]
    assert first["event"] == "dtmf" and first["streamSid"] == sid
    assert first["dtmf"] == {"track": "inbound_track", "digit": "5"} and dtmf()[1]["dtmf"]["digit"] == "#"
    assert json.loads(h.event("dtmf")["_body"]) == {"digit": "5", "duration": 100}
    # every message is numbered when it is sent, so the numbers follow the order on the wire
    h.api("%s stop" % ch.uuid)
    assert conn.closed.wait(5)
    seqs = [int(json.loads(t)["sequenceNumber"]) for t in conn.texts[1:]]
    assert seqs == list(range(1, len(seqs) + 1))
    assert json.loads(conn.texts[-1])["event"] == "stop"
