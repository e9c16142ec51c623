"""The stream's parts on their own, without threads or a switch: the reconnection policy, the rate
limits and the server's allowance, URL redaction, the player, and the link against a fake socket."""
import asyncio
import base64
import json
import random

import pytest

from audio_stream import audio, config, connection, link as link_mod, protocol
from audio_stream.dialects import UplinkFormat
from audio_stream.outbox import Outbox
from audio_stream.playback import Player
from audio_stream.policy import Allowance, GiveUp, RateLimit, ReconnectPolicy, Retry, Strikes


# ---- policy ---------------------------------------------------------------------------------------

def policy(**kw):
    kw.setdefault("rng", random.Random(1))
    return ReconnectPolicy(**kw)


def test_reconnect_backoff_grows_with_jitter_and_gives_up_after_the_attempts():
    p = policy(max_attempts=4, max_seconds=100, first=0.1, cap=1.0)
    p.opened(0.0)
    d = p.lost(False, 1006, 10.0)
    delays = []
    while isinstance(d, Retry):
        delays.append(d.delay)
        d = p.failed(10.0 + sum(delays))
    assert [0.05 <= x <= 0.1 for x in delays[:1]] == [True]
    assert len(delays) == 4 and all(0.5 * min(1.0, 0.1 * 2 ** i) <= x <= min(1.0, 0.1 * 2 ** i)
                                    for i, x in enumerate(delays))
    assert isinstance(d, GiveUp) and d.limit and "4 attempts" in d.reason


def test_reconnect_gives_up_after_max_seconds():
    p = policy(max_attempts=100, max_seconds=2.0, cap=1.0)
    p.opened(0.0)
    d = p.lost(False, 1006, 10.0)
    t = 10.0
    while isinstance(d, Retry):
        t += d.delay + 0.5
        d = p.failed(t)
    assert isinstance(d, GiveUp) and d.limit and "without a lasting connection" in d.reason


@pytest.mark.parametrize("closed,code,again", [(False, 1006, True), (True, 1001, True), (True, 1011, True),
                                               (True, 1012, True), (True, 1013, True), (True, 1000, False),
                                               (True, 4000, False), (True, 1008, False)])
def test_which_losses_reconnect(closed, code, again):
    p = policy()
    p.opened(0.0)
    assert isinstance(p.lost(closed, code, 10.0), Retry) is again
    assert isinstance(policy(enabled=False).lost(False, 1006, 1.0), GiveUp)


def test_a_reconnection_that_does_not_last_is_one_more_failure():
    p = policy(max_attempts=3, max_seconds=1000)
    p.opened(0.0)
    assert p.lost(True, 1011, 100.0).attempt == 1          # a long-lived connection: a new outage
    for n in (2, 3):
        p.connected(101.0 * n)
        d = p.lost(True, 1011, 101.0 * n + 1.0)             # lived 1 s: the same outage goes on
        assert isinstance(d, Retry) and d.attempt == n
    p.connected(400.0)
    assert isinstance(p.lost(True, 1011, 401.0), GiveUp)
    p2 = policy(max_attempts=3, max_seconds=1000)
    p2.opened(0.0)
    p2.lost(False, 1006, 100.0)
    p2.connected(200.0)
    assert p2.lost(False, 1006, 300.0, no_pong=False).attempt == 1     # lived 100 s: fine again
    p2.connected(300.5)
    assert p2.lost(False, 1006, 400.0, no_pong=True).attempt == 2      # no pong: never a success


def test_rate_limit_and_strikes():
    r = RateLimit(10, 3)
    assert [r.allow(0.0) for _ in range(4)] == [True, True, True, False]
    assert r.take_suppressed() == 1 and r.take_suppressed() == 0
    assert r.allow(0.1) and not r.allow(0.1)                 # 10/s: one more after 0.1 s
    s = Strikes(3, 1.0)
    assert [s.strike(t) for t in (0.0, 0.1, 0.2)] == [False] * 3
    assert s.strike(0.3)                                     # a 4th within 1 s
    assert not s.strike(5.0)                                 # the old ones have expired


def test_allowance_makes_the_reader_wait_for_what_it_is_over():
    a = Allowance(100, 10)
    assert [a.take(1, 0.0) for _ in range(10)] == [0.0] * 10
    assert a.take(1, 0.0) == pytest.approx(0.01)
    assert a.take(5, 0.0) == pytest.approx(0.06)
    assert a.take(1, 1.0) == 0.0                             # refilled
    assert a.waited == pytest.approx(0.07)


# ---- connection.redact --------------------------------------------------------------------------------

@pytest.mark.parametrize("url,shown", [
    ("ws://alice:s3cret@host:8080/path?token=abc&x=1", "ws://***@host:8080/path?token=***&x=***"),
    ("wss://host/p", "wss://host/p"),
    ("ws://user@host/?flag", "ws://***@host/?flag"),
    ("ws://[::1]:99/a?k=v#frag", "ws://[::1]:99/a?k=***"),
])
def test_redact(url, shown):
    assert connection.redact(url) == shown


# ---- the player ---------------------------------------------------------------------------------------

class Port:
    """The control port (contracts.ControlMedia): the player only hands it to the stream."""


class Host:
    uuid = "u"
    rate = 8000
    be = None

    def __init__(self, **settings):
        self.settings = config.Settings(**settings)
        self.events, self.marks, self.bads, self.wakes = [], [], [], 0

    def fire(self, name, body):
        self.events.append((name, json.loads(body)))

    def send_mark(self, name, event):
        self.marks.append((name, event))

    def bad(self, reason, kind="bad_message"):
        self.bads.append((kind, reason))

    def log(self, level, message):
        pass

    def wake_playback(self):
        self.wakes += 1


def audio_msg(ms=100):
    pcm = b"\x01\x00" * (8 * ms)
    data = {"audioDataType": "raw", "sampleRate": 8000, "audioData": base64.b64encode(pcm).decode()}
    return protocol.parse_text(json.dumps({"type": "streamAudio", "data": data}))


def player(host, plays=True):
    queue = audio.PlaybackQueue(8000, host.settings.playback_buffer_ms) if plays else None
    return Player(host, 8000, queue, plays)


def test_player_queues_wakes_and_answers_marks():
    host = Host()
    p = player(host)
    p.port = Port()
    p.handle(protocol.Mark("early"))                          # nothing queued: acknowledged at once
    assert host.marks == [("early", "playout")]
    assert p.queue.sleep_if_idle()                            # the playback bug went dormant
    p.handle(audio_msg())
    assert p.queue.queued_ms == 100 and host.wakes == 1
    p.handle(protocol.Mark("after"))
    assert host.marks == [("early", "playout")]               # waits for the audio before it
    p.handle(protocol.BinaryAudio(b"\x00\x00" * 80))
    assert p.queue.queued_ms == 110


def test_player_clear_ends_the_episode_once_and_acknowledges_marks_cleared():
    host = Host()
    p = player(host)
    p.port = Port()
    p.handle(audio_msg())
    p.handle(protocol.Mark("m"))
    p.playback_started(0.0)
    p.handle(protocol.KillAudio())
    assert p.queue.queued_ms == 0 and not p.queue.playing
    assert host.marks == [("m", "cleared")]
    p.playback_done()                                         # the media thread's late word: ignored
    names = [n for n, _ in host.events]
    assert names.count("playback_started") == 1 and names.count("playback_stopped") == 1
    assert ("playback_stopped", {"reason": "cleared"}) in host.events


def test_player_refuses_what_does_not_fit_and_listens_only_when_another_plays():
    host = Host(playback_buffer_ms=50)
    p = player(host)
    p.port = Port()
    p.handle(audio_msg(100))
    assert host.bads and host.bads[0][0] == "playback_buffer_full" and p.queue.queued_ms == 0
    host2 = Host()
    p2 = player(host2, plays=False)
    p2.handle(audio_msg())
    assert host2.bads[0][0] == "playback_not_available"


# ---- the link, against a fake socket ------------------------------------------------------------------

class FakeWS:
    def __init__(self):
        self.sent = []
        self.closed = False
        self.close_code = None
        self.inbox = asyncio.Queue()

    async def send_str(self, s):
        self.sent.append(s)

    async def send_bytes(self, b):
        self.sent.append(b)

    async def close(self, code=1000, message=b""):
        self.closed, self.close_code = True, code

    def get_extra_info(self, name):
        return None


class LinkHost:
    def __init__(self):
        self.seen = []

    def opening_texts(self):
        return ["meta"]

    def uplink_format(self):
        return UplinkFormat(8000, 1, 20)

    def connection_up(self, ws):
        pass

    def connection_down(self):
        pass

    def direct_ready(self):
        pass

    def render_audio(self, chunk):
        return (chunk,)

    def on_text(self, text):
        self.seen.append(("text", text))

    def binary_sink(self):
        return None

    def on_binary(self, data):
        self.seen.append(("binary", data))

    def link_connected(self):
        self.seen.append("connected")

    def link_reconnecting(self, attempt, delay, reason):
        self.seen.append(("reconnecting", attempt))

    def link_reconnected(self, attempt, dropped_ms):
        self.seen.append(("reconnected", attempt))

    def link_lost(self, closed, code, reason, err):
        self.seen.append(("lost", code))

    def outbox_drained(self):
        pass

    def log(self, level, message):
        pass


@pytest.fixture
def fake_net(monkeypatch):
    sockets = []

    async def connect(client, url, settings, extra=None):
        ws = FakeWS()
        ws.headers = extra
        sockets.append(ws)
        return ws

    async def receive(ws):
        return await ws.inbox.get()

    monkeypatch.setattr(connection, "connect", connect)
    monkeypatch.setattr(connection, "receive", receive)
    monkeypatch.setattr(connection, "backlogged", lambda ws: False)
    return sockets


def run(coro):
    return asyncio.new_event_loop().run_until_complete(coro)


def test_link_sends_in_order_reconnects_and_finishes(fake_net):
    async def scenario():
        host = LinkHost()
        outbox = Outbox(10000, 10000, 16)
        outbox.put_audio(b"a1")
        ln = link_mod.Link(host, "ws://x/", config.Settings(), outbox, lambda: None)
        ln.finish(1000, b"", 1.0, 0.0)                        # before the first connection: deferred
        task = asyncio.ensure_future(ln.run())
        await asyncio.wait_for(task, 2)
        ws = fake_net[0]
        assert ws.sent == ["meta", b"a1"] and ws.close_code == 1000
        assert host.seen == ["connected"] and ln.state == "closed"

        host2 = LinkHost()
        outbox2 = Outbox(10000, 10000, 16)
        ln2 = link_mod.Link(host2, "ws://x/", config.Settings(), outbox2, lambda: None)
        task = asyncio.ensure_future(ln2.run())
        while len(fake_net) < 2:
            await asyncio.sleep(0.01)
        await fake_net[1].inbox.put((connection.TEXT, "hi"))
        await fake_net[1].inbox.put((connection.CLOSED, 1012, "restart"))
        while len(fake_net) < 3:
            await asyncio.sleep(0.01)
        assert fake_net[2].headers[link_mod.RECONNECT_HEADER] == "1"
        assert fake_net[2].headers[link_mod.STREAM_ID_HEADER] == fake_net[1].headers[link_mod.STREAM_ID_HEADER]
        outbox2.put_audio(b"a2")
        ln2.wake()
        await asyncio.sleep(0.05)
        ln2.finish()
        await asyncio.wait_for(task, 2)
        assert fake_net[2].sent == ["meta", b"a2"] and fake_net[2].close_code == 1000
        assert host2.seen == ["connected", ("text", "hi"), ("reconnecting", 1), ("reconnected", 1)]
    run(scenario())


def test_link_a_deliberate_close_is_reported_and_not_retried(fake_net):
    async def scenario():
        host = LinkHost()
        ln = link_mod.Link(host, "ws://x/", config.Settings(), Outbox(1000, 1000, 16), lambda: None)
        task = asyncio.ensure_future(ln.run())
        while not fake_net:
            await asyncio.sleep(0.01)
        await fake_net[0].inbox.put((connection.CLOSED, 4000, "bye"))
        await asyncio.wait_for(task, 2)
        assert host.seen == ["connected", ("lost", 4000)] and len(fake_net) == 1
    run(scenario())
