"""The media path's cost and timing on the switch simulator: no Python on a media thread while a
call is only streamed out, playback callbacks only while the server's audio plays, nothing lost at
hangup, overload said at once."""
import base64
import json
import time

import numpy as np
import pytest

from audio_stream.policy import PlaybackPolicy
from audio_stream.switch.core import (ABC_CLOSE, ABC_INIT, ABC_READ, ABC_READ_PING, ABC_WRITE,
                                      ABC_WRITE_REPLACE)
from audio_stream.testing.sim import wait_until

from .support import raw_ws_server, tone

QUIET = PlaybackPolicy().quiet_pings
PER_FRAME = (ABC_READ, ABC_WRITE, ABC_WRITE_REPLACE, ABC_READ_PING)


def per_frame_callbacks(ch):
    return {t: ch.callbacks(t) for t in PER_FRAME}


def raw(pcm, rate=8000):
    return json.dumps({"type": "streamAudio", "data": {"audioDataType": "raw", "sampleRate": rate,
                                                        "audioData": base64.b64encode(pcm).decode()}})




@pytest.mark.parametrize("mix", ["mono", "mixed", "stereo"])
@pytest.mark.parametrize("core_writing", [0, 1, 2], ids=["parked", "core-writing", "bridged"])
def test_streaming_out_runs_no_python_per_frame(h, mix, core_writing):
    """Once the control bug has seen who writes the call, a stream that only sends audio costs no
    callback at all: the core buffers the frames and the capture clock reads them."""
    server = h.server()
    ch = h.call(rate=8000, core_writing=core_writing)
    conn = h.start(ch, server, mix)
    t0 = ch.ticks
    assert wait_until(lambda: ch.ticks >= t0 + 10, 5)
    before = per_frame_callbacks(ch)
    assert before[ABC_READ] == before[ABC_WRITE] == 0
    assert before[ABC_READ_PING] <= QUIET + 1         # learning who writes the call, then dormant
    t1 = ch.ticks
    assert wait_until(lambda: ch.ticks >= t1 + 50, 5)
    assert per_frame_callbacks(ch) == before          # 50 frames, not one callback
    assert ch.callbacks(ABC_INIT) == 1
    h.api("%s stop" % ch.uuid)
    assert conn.closed.wait(5)
    assert ch.callbacks(ABC_CLOSE) == 1
    channels = 2 if mix == "stereo" else 1
    assert len(conn.audio()) >= (ch.ticks - t0) * 160 * channels * 0.9


def test_playback_off_costs_no_callback_ever(h):
    server = h.server()
    ch = h.call(rate=8000, STREAM_PLAYBACK="false")
    h.start(ch, server)
    t0 = ch.ticks
    assert wait_until(lambda: ch.ticks >= t0 + 30, 5)
    assert per_frame_callbacks(ch) == dict.fromkeys(PER_FRAME, 0)


@pytest.mark.parametrize("core_writing", [0, 2], ids=["parked", "bridged"])
def test_playback_wakes_then_sleeps_again(h, core_writing):
    server = h.server()
    ch = h.call(rate=8000, core_writing=core_writing, write_hz=300)
    conn = h.start(ch, server)
    assert wait_until(lambda: ch.ticks >= QUIET + 10, 5)
    dormant = per_frame_callbacks(ch)
    server.send(conn, raw(tone(700, 8000, 0.5).tobytes()))
    h.event("playback_stopped", predicate=lambda e: json.loads(e["_body"])["reason"] == "done")
    t = ch.ticks
    assert wait_until(lambda: ch.ticks >= t + QUIET + 3, 5)
    after = per_frame_callbacks(ch)
    # about one callback per frame of audio (25 frames), plus the few it takes to go dormant
    played = after[ABC_READ_PING] - dormant[ABC_READ_PING] + after[ABC_WRITE_REPLACE] - dormant[ABC_WRITE_REPLACE]
    assert 25 <= played <= 2 * (25 + QUIET + 3) + 4
    t = ch.ticks
    assert wait_until(lambda: ch.ticks >= t + 30, 5)
    assert per_frame_callbacks(ch) == after           # dormant again


def test_second_utterance_on_a_parked_call_plays_on_the_next_frame(h):
    """The first audio waits a few frames while the stream learns that nobody else writes the
    call; from then on the next READ_PING writes it."""
    server = h.server()
    ch = h.call(rate=8000, core_writing=0)
    conn = h.start(ch, server)
    latencies = []
    for n in range(4):
        server.send(conn, raw(tone(700, 8000, 0.2).tobytes()))
        assert wait_until(lambda: len(h.events("playback_stopped")) > n, 5)
        latencies.append(json.loads(h.events("playback_started")[n]["_body"])["latency_ms"])
        time.sleep(0.15)
    assert max(latencies[1:]) <= 20 + 8, latencies     # one 20 ms frame (+ scheduling)


@pytest.mark.parametrize("playback", ["true", "false"])
@pytest.mark.parametrize("encoding, rate, frame_bytes", [("L16", "16k", 640), ("PCMU", "8k", 160)])
def test_hangup_delivers_every_frame_captured(h, playback, encoding, rate, frame_bytes):
    """At hangup the core closes every bug under one lock before it frees any: the control bug's
    CLOSE reads what the capture clock had not read yet (and a G.711 stream encodes it too)."""
    server = h.server()
    ch = h.call(rate=16000, start=False, STREAM_PLAYBACK=playback, STREAM_ENCODING=encoding)
    ch.start(speed=2.0, ticks=0)
    conn = h.start(ch, server, "stereo", rate)
    for n in (7, 13, 25):
        ch.run_ticks(n)
    ch.hangup()
    assert conn.closed.wait(5)
    assert len(b"".join(conn.binaries)) == 45 * frame_bytes * 2


def test_overrun_and_recovery_are_events_at_once(h):
    """The server takes 1.5 s to accept the connection and only 0.5 s of audio may wait: the
    oldest audio is dropped, said once when it starts and once when sending catches up."""
    server = h.server(handshake_delay=1.5)
    ch = h.call(rate=8000, STREAM_RECONNECT_BUFFER="500")
    assert h.api("%s start %s mono 8k" % (ch.uuid, server.url)) == "+OK Success"
    over = h.event("buffer_overrun", timeout=1.2)          # before the connection exists
    assert json.loads(over["_body"])["dropped_ms"] <= 40
    conn = server.wait_conn()
    rec = h.event("buffer_recovered", timeout=3)
    dropped = json.loads(rec["_body"])["dropped_ms"]
    assert 800 <= dropped <= 1300, dropped
    assert len(h.events("buffer_overrun")) == 1
    time.sleep(0.3)
    h.api("%s stop" % ch.uuid)
    assert conn.closed.wait(5)
    assert any("dropping the oldest audio" in m for _, m in h.fs.logs())


def test_one_slow_server_does_not_delay_another_stream(h):
    """Stream A's server stops reading (its TCP window fills); stream B's audio keeps flowing at
    the call's pace, and A drops its oldest audio within its bound."""
    import socket

    # a WebSocket server that completes the handshake, then never reads again
    held = []

    def never_reads(c):
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        held.append(c)

    lsock, t = raw_ws_server(never_reads)
    port = lsock.getsockname()[1]
    good = h.server()
    a = h.call(rate=48000, STREAM_RECONNECT_BUFFER="1000", STREAM_MESSAGE_DEFLATE="true")
    b = h.call(rate=8000)
    assert h.api("%s start ws://127.0.0.1:%d/slow stereo 48000" % (a.uuid, port)) == "+OK Success"
    conn_b = h.start(b, good)
    h.event("buffer_overrun", timeout=15)
    n0, t0 = len(conn_b.audio()), time.monotonic()
    time.sleep(1.0)
    rate = (len(conn_b.audio()) - n0) / (time.monotonic() - t0)
    assert rate > 0.9 * 8000, rate
    a.hangup()
    b.hangup()
    for c in held:
        c.close()
    lsock.close()
    t.join(2)


def test_binary_audio_plays_the_same_whether_or_not_python_sees_each_frame(h, monkeypatch):
    """On the accelerated path the server's binary frames go from the socket to the C queue without
    a Python message each (connection.take_binary); the pure path parses every one. Either way each
    utterance plays whole and in order (a dormant player is woken for the next), the latency is
    reported, status counts every message, and a killAudio clears what came before it."""
    from audio_stream import stream as stream_mod
    seen = []
    on_binary = stream_mod.Stream.on_binary
    monkeypatch.setattr(stream_mod.Stream, "on_binary", lambda self, data: (seen.append(len(data)),
                                                                             on_binary(self, data)))
    server = h.server()
    ch = h.call(rate=8000, core_writing=0)
    conn = h.start(ch, server)
    x = tone(700, 8000, 0.2, 6000)
    x[x == 0] = 1
    frames = [x[i:i + 160].tobytes() for i in range(0, len(x), 160)]
    for n in range(3):
        for f in frames:
            server.send(conn, f)
        assert wait_until(lambda: len(h.events("playback_stopped")) > n, 5)
        assert "latency_ms" in json.loads(h.events("playback_started")[n]["_body"])
        time.sleep(0.15)                               # dormant again before the next one
    heard = ch.heard()
    assert np.array_equal(heard[heard != 0], np.tile(x, 3))      # every sample, in order, bit-exact
    status = json.loads(h.api("%s status" % ch.uuid))["streams"][0]
    assert status["messages_received"] >= 3 * len(frames)
    path = status["path"]
    if path == "accel":
        assert len(seen) < len(frames)                 # most never became a Python message
    else:
        assert len(seen) == 3 * len(frames)
    # a long utterance, then a clear: nothing of it plays on
    server.send(conn, tone(700, 8000, 3.0, 6000).tobytes())
    assert wait_until(lambda: len(h.events("playback_started")) > 3, 5)
    server.send(conn, '{"type":"killAudio"}')
    h.event("playback_stopped", predicate=lambda e: json.loads(e["_body"])["reason"] == "cleared")
    assert json.loads(h.api("%s status" % ch.uuid))["streams"][0]["playback_queued_ms"] == 0
