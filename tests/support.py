"""Test support shared by the simulator tests and the real-switch tests: a real aiohttp WebSocket
server on 127.0.0.1 running on its own thread, audio analysis helpers, and a stand-in FreeSWITCH
event socket."""
import asyncio
import socket
import struct
import threading
import time

import numpy as np
import aiohttp
from aiohttp import WSMsgType, web

from .fake_esl import FakeESL

# set on Ctrl-C (tests/conftest.py): fixtures then clean up what they can and check nothing, since
# a test cut short leaves its streams, threads and sockets as they were
interrupted = threading.Event()


def dominant_hz(x, rate, seconds=None):
    """Frequency of the strongest component of int16 samples (last `seconds`, default all)."""
    x = np.asarray(x, dtype=np.float64)
    if seconds:
        x = x[-int(rate * seconds):]
    if len(x) < 64 or np.abs(x - x.mean()).max() < 50:
        return 0.0
    spec = np.abs(np.fft.rfft((x - x.mean()) * np.hanning(len(x))))
    return float(np.argmax(spec) * rate / len(x))


def tone(hz, rate, seconds, amplitude=8000):
    n = int(rate * seconds)
    return (amplitude * np.sin(2 * np.pi * hz * np.arange(n) / rate)).astype("<i2")


class Conn:
    """One WebSocket connection as the server saw it."""

    def __init__(self, request, ws):
        self.request = request
        self.ws = ws
        self.path = request.path
        self.headers = dict(request.headers)
        self.messages = []      # ("text", str) / ("binary", bytes) in arrival order
        self.pings = []         # arrival times of pings (servers made with autoping=False)
        self.closed = threading.Event()
        self.close_code = None
        self.opened_at = time.monotonic()

    @property
    def texts(self):
        return [m for k, m in self.messages if k == "text"]

    @property
    def binaries(self):
        return [m for k, m in self.messages if k == "binary"]

    def audio(self):
        return np.frombuffer(b"".join(self.binaries), dtype="<i2")


class WSServer:
    """`on_connect(conn, server)` (optional coroutine) runs when a client connects, before the
    receive loop; it may send messages or close. `reject` = HTTP status to refuse upgrades."""

    def __init__(self, on_connect=None, on_message=None, reject=None, handshake_delay=0.0, autoping=True,
                 pong=True, port=0):
        """autoping=False: pings are recorded in conn.pings and answered only if `pong`."""
        self.autoping = autoping
        self.pong = pong
        self.handshake_delay = handshake_delay
        self.on_connect = on_connect
        self.on_message = on_message
        self.reject = reject
        self.want_port = port
        self.conns = []
        self.cond = threading.Condition()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.port = self.call(self._start())

    def call(self, coro, timeout=10):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def later(self, fn, *args):
        self.loop.call_soon_threadsafe(fn, *args)

    async def _start(self):
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handler)
        # aiohttp < 3.9 (Debian 12's 3.8.4) hands unknown AppRunner options to every request
        # handler, which then fails: shutdown_timeout is an AppRunner option from 3.9 on
        new = tuple(int(x) for x in aiohttp.__version__.split(".")[:2]) >= (3, 9)
        self.runner = web.AppRunner(app, **({"shutdown_timeout": 2.0} if new else {}))
        await self.runner.setup()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.want_port))
        port = sock.getsockname()[1]
        await web.SockSite(self.runner, sock).start()
        return port

    @property
    def url(self):
        return "ws://127.0.0.1:%d/stream" % self.port

    async def _handler(self, request):
        if self.reject:
            return web.Response(status=self.reject, text="rejected")
        if self.handshake_delay:
            await asyncio.sleep(self.handshake_delay)
        ws = web.WebSocketResponse(max_msg_size=0, autoping=self.autoping)
        await ws.prepare(request)
        conn = Conn(request, ws)
        with self.cond:
            self.conns.append(conn)
            self.cond.notify_all()
        if self.on_connect:
            await self.on_connect(conn, self)
        async for m in ws:
            with self.cond:
                if m.type == WSMsgType.TEXT:
                    conn.messages.append(("text", m.data))
                elif m.type == WSMsgType.BINARY:
                    conn.messages.append(("binary", m.data))
                elif m.type == WSMsgType.PING:
                    conn.pings.append(time.monotonic())
                self.cond.notify_all()
            if m.type == WSMsgType.PING and self.pong:
                await ws.pong(m.data)
            if self.on_message:
                await self.on_message(conn, m, self)
        conn.close_code = ws.close_code
        conn.closed.set()
        with self.cond:
            self.cond.notify_all()
        return ws

    def wait_conn(self, n=1, timeout=10):
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.conns) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("no WebSocket connection within %g s" % timeout)
                self.cond.wait(left)
            return self.conns[n - 1]

    def wait_for(self, predicate, timeout=10):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
            return True

    def send(self, conn, data):
        async def go():
            if isinstance(data, (bytes, bytearray)):
                await conn.ws.send_bytes(bytes(data))
            else:
                await conn.ws.send_str(data)
        self.call(go())

    def close_conn(self, conn, code=1000, message=b""):
        self.call(conn.ws.close(code=code, message=message))

    def kill(self):
        """Die like a SIGKILLed server: every connection reset, no close frame, then stop."""
        def abort_all():
            for c in self.conns:
                t = c.request.transport
                if t is not None:
                    t.abort()
        self.loop.call_soon_threadsafe(abort_all)
        time.sleep(0.05)
        self.stop()

    def stop(self):
        if self.loop.is_closed():
            return
        try:
            self.call(self.runner.cleanup())
            self.call(self.loop.shutdown_default_executor())
        except Exception:
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()


def ws_frame(payload, opcode=2, fin=True, rsv=0, masked=False):
    """A WebSocket frame as a server would write it (RFC 6455 5.2); `masked` adds a key (servers
    must not)."""
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    bit = 0x80 if masked else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    return head + (b"\x01\x02\x03\x04" if masked else b"") + payload


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def accept_ws_handshake(c):
    """Answer a client's WebSocket upgrade request on socket `c` by hand (101 with its accept key).
    False when the client closed before its request was complete."""
    import base64
    import hashlib

    req = b""
    while b"\r\n\r\n" not in req:
        got = c.recv(4096)
        if not got:
            return False
        req += got
    key = [ln.split(b":", 1)[1].strip() for ln in req.split(b"\r\n")
           if ln.lower().startswith(b"sec-websocket-key")][0]
    acc = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Accept: " + acc + b"\r\n\r\n")
    return True


def drain(c, until, every_s=0.2):
    """Read (and throw away) what the client on socket `c` sends until `until` is set or it
    closes (looking at `until` every `every_s`)."""
    c.settimeout(every_s)
    while not until.is_set():
        try:
            if not c.recv(65536):
                return
        except socket.timeout:
            continue
        except OSError:
            return


def raw_ws_server(after_handshake, host="127.0.0.1"):
    """A bare TCP server that completes one WebSocket handshake by hand, then calls
    `after_handshake(sock)` on its own thread (to misbehave: stop reading, send masked frames...).
    Returns (listening socket, thread); close the socket and join the thread when done."""
    lsock = socket.socket()
    lsock.bind((host, 0))
    lsock.listen(1)

    def serve():
        c, _ = lsock.accept()
        if accept_ws_handshake(c):
            after_handshake(c)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return lsock, t


def worst_gap(conns, seconds):
    """The longest time between two audio messages arriving on any of `conns` over `seconds`."""
    arrivals = [[] for _ in conns]
    seen = [0] * len(conns)
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        for i, c in enumerate(conns):
            m = len(c.binaries)
            if m != seen[i]:
                arrivals[i].append(time.monotonic())
                seen[i] = m
        time.sleep(0.002)
    return max(float(np.diff(a).max()) for a in arrivals)


CONTROL_FLOODS = {"ping": b"\x89\x00", "pong": b"\x8a\x00", "binary": b"\x82\x02\x00\x00"}


def flooding_server(frame):
    """A raw WebSocket server that sends `frame` (bytes of one frame) as fast as TCP lets it,
    until `stop` is set. Returns (listening socket, thread, stop)."""
    stop = threading.Event()

    def flood(c):
        c.settimeout(5)
        chunk = frame * (65536 // len(frame))
        try:
            while not stop.is_set():
                c.sendall(chunk)
        except OSError:
            pass
        c.close()
    lsock, t = raw_ws_server(flood)
    return lsock, t, stop


class FakeEventSocket(FakeESL):
    """FakeESL answering `api` commands from a dict (FreeSWITCH's "Command not found" otherwise);
    `asked`: the api commands, in order."""

    def __init__(self, replies):
        super().__init__(lambda cmd: replies.get(cmd, "-ERR %s Command not found!" % cmd))

    @property
    def asked(self):
        return self.apis
