"""Hangup at any moment, against a real FreeSWITCH (skips without one): calls that stream and play
the server's audio are hung up at random points (while connecting, while the capture clock reads
them, while a playback frame is being written, right after a stop). The switch must survive, no
bug may stay attached, and every stream must end."""
import asyncio
import base64
import json
import random
import time

import numpy as np

from ..support import WSServer, tone

CHUNK = base64.b64encode(tone(700, 8000, 0.2).tobytes()).decode()
AUDIO = json.dumps({"type": "streamAudio", "data": {"audioDataType": "raw", "sampleRate": 8000,
                                                     "audioData": CHUNK}})


def test_random_hangups_while_streaming_and_playing(fs, calls, events):
    async def chatter(conn, server):
        # play audio into the call all the time, with marks and clears, until it goes away
        try:
            while not conn.ws.closed:
                await conn.ws.send_str(AUDIO)
                if random.random() < 0.3:
                    await conn.ws.send_str('{"type":"mark","data":{"name":"m"}}')
                if random.random() < 0.1:
                    await conn.ws.send_str('{"type":"killAudio"}')
                await asyncio.sleep(random.uniform(0.02, 0.2))
        except Exception:
            pass

    rng = random.Random(11)
    server = WSServer(on_connect=chatter)
    started = 0
    try:
        for rnd in range(6):
            legs = []
            for i in range(8):
                app = "&park()" if i % 2 else "&endless_playback(tone_stream://%(60000,0,300))"
                time.sleep(0.1)             # two sessions a call: stay under the stock 30 per second
                a, b = calls.originate("loopback/tone/fstest", app)
                mix = rng.choice(["mono", "mixed", "stereo"])
                reply = fs.api("python audio_stream %s start %s %s %s" % (a, server.url, mix, rng.choice(["8k", "16k"])))
                assert reply == "+OK Success", reply
                started += 1
                legs.append((a, b))
            for a, b in legs:
                time.sleep(rng.uniform(0, 0.15))
                what = rng.random()
                if what < 0.2:
                    fs.api("python audio_stream %s stop" % a)
                    fs.api("uuid_kill %s" % a)
                else:
                    fs.api("uuid_kill %s" % (a if what < 0.6 else b))
        assert server.wait_for(lambda: len(server.conns) >= started * 0.8, 10)
        assert server.wait_for(lambda: all(c.closed.is_set() for c in server.conns), 15), \
            "%d WebSocket(s) still open after every call ended" % sum(not c.closed.is_set() for c in server.conns)
    finally:
        server.stop()
    assert fs.api("status").find("is ready") >= 0, "the switch is not ready"
    assert fs.api("python audio_stream").startswith("-USAGE")
    # no bug of ours is left on any remaining channel (the calls are gone; any leftover is a leak)
    for u in calls.uuids:
        if calls.exists(u):
            assert "audio_stream" not in fs.api("uuid_buglist %s" % u)


def test_stop_and_hangup_at_the_same_moment(fs, calls):
    """`stop` on one ESL connection while `uuid_kill` runs on another."""
    import threading

    from . import esl
    from .conftest import HOST, PASSWORD, PORT

    other = esl.Connection(HOST, PORT, PASSWORD)
    server = WSServer()
    try:
        for i in range(15):
            time.sleep(0.1)
            a, b = calls.originate("loopback/tone/fstest")
            assert fs.api("python audio_stream %s start %s stereo 16k" % (a, server.url)) == "+OK Success"
            time.sleep(0.05 + (i % 5) * 0.013)
            killer = threading.Thread(target=other.api, args=("uuid_kill %s" % a,))
            killer.start()
            reply = fs.api("python audio_stream %s stop" % a)
            killer.join(10)
            assert reply.startswith("+OK") or reply.startswith("-ERR"), reply
        assert server.wait_for(lambda: all(c.closed.is_set() for c in server.conns), 10)
        for c in server.conns:
            x = c.audio()
            assert len(x) % 2 == 0 and np.all(np.isfinite(x))
    finally:
        server.stop()
        other.close()
    assert fs.api("status").find("is ready") >= 0
