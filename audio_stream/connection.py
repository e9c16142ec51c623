"""The WebSocket client: connect with the stream's options and map failures to error codes.

The only module that knows aiohttp. Runs on the loop thread.
"""
import asyncio
import errno
import http
import os
import re
import socket
import ssl
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from . import protocol
from .accelerator import native
from .version import VERSION

USER_AGENT = "audio_stream/%s (FreeSWITCH mod_python3)" % VERSION


FRAMES_PER_FEED = 256        # frames handed to aiohttp's parser at once (a flood of tiny frames)
QUEUED_MAX = 64              # more parsed messages than this waiting: hold the rest of the bytes
HELD_MAX = 1 << 20           # bytes held back at most (then the server is failed: it floods)


class MaskGuard:
    """In front of aiohttp's frame parser (for our connections only, see GuardedWebSocket); it
    follows frame boundaries from the header bytes: 2 header bytes, 0/2/8 length bytes, a 4-byte
    key when masked, then the payload.

    - RFC 6455 5.1: a client MUST fail the connection when the server masks a frame; aiohttp's
      reader unmasks them silently.
    - Flow control by frames, not bytes: aiohttp counts a parsed message by its payload (older
      versions count an empty ping as 0 bytes), so a flood of tiny frames would be parsed all at
      once, whatever the stream's reader allows. The guard hands the parser FRAMES_PER_FEED frames
      at a time and holds the rest, with the socket's reading paused, until the stream has taken
      what was parsed (`pump()`, after each receive): the server then waits in TCP, not in our
      memory or our loop."""

    def __init__(self, parser, queue):
        self.parser = parser
        self.queue = queue          # where aiohttp's receive() finds messages and errors
        self.hdr = bytearray()      # header bytes of the frame being read
        self.skip = 0               # payload bytes still to pass over
        self.failed = False
        self.held = bytearray()     # bytes not yet handed to the parser
        self.paused = False
        self.sink = None            # take_binary(): binary audio frames go straight to the player
        self.on_taken = None
        self._held_off = False      # reading paused by the stream's allowance (on_taken's answer)
        if native is not None:      # the same walk in C
            scanner = native.MaskScanner()
            self._scan = scanner.scan
            self._split = scanner.split

    def feed_data(self, data):
        if self.failed:
            return True, b""
        if self.held:
            self.held += data
            self._pause()
            if len(self.held) > HELD_MAX:
                self._fail(aiohttp.WSCloseCode.POLICY_VIOLATION, "the server sends more frames than the stream may take")
            return False, b""
        return self._feed(data)

    def feed_eof(self):
        return self.parser.feed_eof()

    def __getattr__(self, name):
        return getattr(self.parser, name)

    def pump(self):
        """After the stream took a message: hand the parser what was held back, if it can take it."""
        if not self.held or self.failed or self._held_off or (self._queued() or 0) > QUEUED_MAX // 2:
            return
        data, self.held = bytes(self.held), bytearray()
        self._feed(data)
        if not self.held:
            self._resume()

    def _feed(self, data):
        """Hand the parser the frames of `data` it may take now, hold the rest. On the accelerated
        path (a sink) whole binary audio frames go to the sink (the C playback queue) as they
        arrive, while nothing parsed waits before them (else they would play ahead of a killAudio
        still queued); everything else to aiohttp's parser."""
        sink = self.sink
        if sink is None:
            masked, end = self._scan(data, FRAMES_PER_FEED)
            out, attention = data[:end], False
        else:
            masked, end, out, attention = self._split(data, FRAMES_PER_FEED, sink, self._queued() == 0)
        if masked:
            self._fail(aiohttp.WSCloseCode.PROTOCOL_ERROR, "the server sent a masked frame")
            return True, b""
        if end < len(data):
            self.held += data[end:]
            self._pause()
        result = self.parser.feed_data(out) if out else (False, b"")
        if sink is None:
            return result
        wait = 0.0
        if attention:                  # the player must act, or enough frames to count and charge
            wait = self.on_taken(*sink.take_pending())
            if wait:                   # over the stream's allowance: the server waits in TCP
                self._held_off = True
                self._pause()
                asyncio.get_event_loop().call_later(wait, self._hold_over)
        if self.held and not wait and not self._queued():
            asyncio.get_event_loop().call_soon(self.pump)    # no receive() may come to pump the rest
        return result

    def _hold_over(self):
        self._held_off = False
        if self.failed:
            return
        if self.held:
            self.pump()
        else:
            self._resume()

    def _resume(self):
        if self.paused and not self._held_off:
            self.paused = False
            try:
                self.queue._protocol.transport.resume_reading()
            except (AttributeError, RuntimeError):
                pass

    def _fail(self, code, message):
        self.failed = True
        self.held = bytearray()
        self.queue.set_exception(aiohttp.WebSocketError(code, message))

    def _queued(self):
        """Parsed messages waiting for receive(); None when this aiohttp does not say."""
        try:
            return len(self.queue._buffer)
        except (AttributeError, TypeError):
            return None

    def _pause(self):
        if not self.paused:
            try:                     # the transport itself: aiohttp's own flow control stays as it was
                self.queue._protocol.transport.pause_reading()
                self.paused = True
            except (AttributeError, RuntimeError):
                pass

    def _scan(self, data, limit):
        """Follow the frames in `data`: (masked, end), `end` just after the `limit`-th complete
        frame (or len(data))."""
        i, n, frames = 0, len(data), 0
        while i < n:
            if self.skip:
                step = min(self.skip, n - i)
                self.skip -= step
                i += step
                if not self.skip:
                    frames += 1
                    if frames >= limit:
                        return False, i
                continue
            self.hdr.append(data[i])
            i += 1
            h = self.hdr
            if len(h) < 2:
                continue
            if h[1] & 0x80:
                return True, i
            size = h[1] & 0x7F
            ext = 2 if size == 126 else 8 if size == 127 else 0
            if len(h) < 2 + ext:
                continue
            self.skip = int.from_bytes(h[2:2 + ext], "big") if ext else size
            self.hdr = bytearray()
            if not self.skip:
                frames += 1
                if frames >= limit:
                    return False, i
        return False, n


class GuardedWebSocket(aiohttp.ClientWebSocketResponse):
    """aiohttp's client WebSocket with MaskGuard in front of its parser (ClientSession's
    ws_response_class: aiohttp assigns `_parser`, then hands `_parser` to the connection)."""

    @property
    def _parser(self):
        return self.__dict__.get("_guarded_parser")

    @_parser.setter
    def _parser(self, parser):
        self.__dict__["_guarded_parser"] = MaskGuard(parser, self._reader) if parser is not None else None

    async def receive(self, *args, **kw):
        msg = await super().receive(*args, **kw)
        guard = self.__dict__.get("_guarded_parser")
        if guard is not None and guard.held:
            guard.pump()
        return msg


def client():
    """A new aiohttp ClientSession for every stream's connections (loop thread): no connection
    pool, our GuardedWebSocket, and one TCP connection per attempt."""
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True),
                                    ws_response_class=GuardedWebSocket)
    # aiohttp retries a GET once when the server drops the connection ("Server disconnected"):
    # one attempt must be one connection (the reconnection policy decides about retries)
    session._retry_connection = False
    return session


class ConnectError(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


def tls_context(settings):
    """An SSLContext for wss:// from STREAM_TLS_*; raises ConnectError(7) when it cannot be built."""
    what = "the system's CA certificates"
    try:
        ca = (settings.tls_ca_file or "SYSTEM").strip()
        if ca.upper() == "NONE":
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif ca.upper() == "SYSTEM":
            ctx = ssl.create_default_context()
        else:
            what = "STREAM_TLS_CA_FILE %s" % ca
            ctx = ssl.create_default_context(cafile=ca)
        if settings.tls_no_hostname_check:
            ctx.check_hostname = False
        if settings.tls_cert_file:
            what = "STREAM_TLS_CERT_FILE %s / STREAM_TLS_KEY_FILE %s" % (settings.tls_cert_file,
                                                                       settings.tls_key_file or "(none)")
            ctx.load_cert_chain(settings.tls_cert_file, settings.tls_key_file or None)
        return ctx
    except (OSError, ssl.SSLError, ValueError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror and not isinstance(e, ssl.SSLError) else e
        raise ConnectError(protocol.ERR_TLS_INIT_FAILED, "TLS setup failed: %s: %s" % (what, reason)) from None


def _describe(exc):
    """A reason a person can act on: 'Connection refused' rather than 'Connect call failed'."""
    if isinstance(exc, OSError) and isinstance(exc.errno, int) and exc.errno > 0 and not isinstance(exc, ssl.SSLError):
        return os.strerror(exc.errno)
    if isinstance(exc, socket.gaierror):
        return "cannot resolve host: %s" % (exc.strerror or exc)
    return str(exc) or exc.__class__.__name__


# A connection whose peer vanished (a blackhole: packets dropped, no FIN, no RST) must not be
# taken for a live one. Without a heartbeat (STREAM_HEART_BEAT=0, the default, as mod_audio_stream)
# TCP itself tells: audio not acknowledged for USER_TIMEOUT_S fails the connection (TCP_USER_TIMEOUT),
# and an idle one (a paused stream) is probed after KEEPALIVE_IDLE_S. Invisible on the wire.
USER_TIMEOUT_S = 10
KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT = 10, 5, 2


def tune_socket(ws, nbytes):
    """Cap the kernel's send buffer for this connection (Linux doubles the value): autotuning
    lets a loopback or LAN socket soak up ~4 MB, minutes of audio that a stalled server would
    hide before anyone noticed; about a second of audio rides out jitter. And the blackhole
    limits above."""
    sock = ws.get_extra_info("socket")
    if sock is None:
        return
    options = [(socket.SOL_SOCKET, socket.SO_SNDBUF, int(nbytes)), (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for name, value in (("TCP_USER_TIMEOUT", USER_TIMEOUT_S * 1000), ("TCP_KEEPIDLE", KEEPALIVE_IDLE_S),
                        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_S), ("TCP_KEEPCNT", KEEPALIVE_COUNT)):
        if hasattr(socket, name):
            options.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    for level, opt, value in options:
        try:
            sock.setsockopt(level, opt, value)
        except OSError:
            pass


def in_flight(ws):
    """Bytes written but not yet acknowledged by the server (our buffer + the kernel's send
    queue): what is lost if the connection dies now. 0 when it cannot tell."""
    n = 0
    try:
        n = ws._writer.transport.get_write_buffer_size()
    except AttributeError:
        pass
    sock = ws.get_extra_info("socket")
    if sock is not None:
        try:
            import fcntl
            import struct
            import termios
            n += struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
        except (OSError, ValueError, ImportError):
            pass
    return n


# what a send can raise when the connection is gone under it
SEND_ERRORS = (aiohttp.ClientError, ConnectionError, OSError, RuntimeError)


def lost_reason(exc):
    """A reason a person can act on for a connection that went away under a send or a receive."""
    if isinstance(exc, ConnectionResetError) and exc.errno == errno.ECONNRESET:
        return "connection lost: the server went away (connection reset)"
    if isinstance(exc, ConnectionResetError):     # aiohttp's: the transport is closing (a FIN)
        return "connection lost: the server closed the connection without a close frame"
    if isinstance(exc, BrokenPipeError):
        return "connection lost: the server went away (broken pipe)"
    return "connection lost while sending: %s" % _describe(exc)


def backlogged(ws):
    """True while the socket has not taken everything written so far (the kernel's send buffer
    is full: the server does not keep up). Sending more would then wait, so the caller stops
    and keeps its bounded outbox instead. False when it cannot tell (aiohttp internals moved)."""
    try:
        transport = ws._writer.transport      # aiohttp has no public accessor
        return transport.get_write_buffer_size() > 0
    except AttributeError:
        return False


def direct_writer(ws):
    """The transport to write pre-framed binary messages to, or None when that is not safe: the
    connection negotiated permessage-deflate (frames must be compressed), or aiohttp's internals
    moved. aiohttp writes an uncompressed frame to the transport at once, in one call, so whole
    frames written here and by aiohttp never interleave."""
    try:
        if ws.compress:
            return None
        transport = ws._writer.transport      # aiohttp has no public accessor
        transport.get_write_buffer_size
        return transport
    except AttributeError:
        return None


def socket_for_direct(ws):
    """The connection's socket file descriptor when complete frames may be written to it from C
    (plain TCP, no permessage-deflate), else None (TLS must go through the SSL transport)."""
    transport = direct_writer(ws)
    if transport is None or transport.get_extra_info("sslcontext") is not None or \
            transport.get_extra_info("ssl_object") is not None:
        return None
    sock = transport.get_extra_info("socket")
    try:
        return sock.fileno() if sock is not None else None
    except (OSError, ValueError):
        return None


def watch_writes(ws, on_buffered, on_closing):
    """Call `on_buffered()` whenever a write to this connection's transport leaves data in its
    buffer (the socket did not take it all: a server that does not keep up, or a control frame
    aiohttp sent meanwhile), and `on_closing()` before it closes or aborts. Returns the
    transport's own write (for what must go out ahead of anything else). The direct path relies
    on it: writes from C happen only while the transport holds nothing."""
    transport = ws._writer.transport
    write, close, abort_ = transport.write, transport.close, transport.abort

    def watched_write(data):
        write(data)
        if transport.get_write_buffer_size():
            on_buffered()

    def watched_close():
        on_closing()
        close()

    def watched_abort():
        on_closing()
        abort_()

    transport.write, transport.close, transport.abort = watched_write, watched_close, watched_abort
    return write


async def pong(ws, payload):
    """Answer a ping, unless the server does not read what we send (then it gets no pong)."""
    if not backlogged(ws) and not ws.closed:
        await ws.pong(payload)


def abort(ws):
    """Drop a connection that would not close cleanly (a server that stopped reading)."""
    try:
        transport = ws._writer.transport      # aiohttp has no public way to abort a WebSocket
        if transport is not None:
            transport.abort()
    except AttributeError:
        pass
    # and hand the connection back to aiohttp's connector now: left to the garbage collector, it is
    # reported as "Unclosed connection" through the loop's exception handler (the switch's console)
    response = getattr(ws, "_response", None)
    if response is not None:
        response.close()


_SSL_REPR = re.compile(r"\s*ssl:(<[^>]*>|default|None|True|False)")   # aiohttp's "ssl:<SSLContext …>"


def redact(url):
    """The URL without credentials: user:password@ and the values of the query string."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid url>"
    netloc = parts.netloc.rsplit("@", 1)[-1]
    if "@" in parts.netloc:
        netloc = "***@" + netloc
    query = "&".join(kv.split("=", 1)[0] + ("=***" if "=" in kv else "") for kv in parts.query.split("&")) \
        if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _printable(text, limit=120):
    text = _SSL_REPR.sub("", str(text))
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= limit else text[:limit] + "..."


async def connect(client, url, settings, extra=None):
    """Open the WebSocket or raise ConnectError with a code from protocol.ERR_*. Messages show
    the URL without its credentials."""
    shown = redact(url)
    is_tls = url.lower().startswith("wss://")
    ctx = tls_context(settings) if is_tls else None
    headers = {"User-Agent": USER_AGENT}
    headers.update(settings.extra_headers)
    if extra:
        headers.update(extra)
    try:
        ws = await asyncio.wait_for(
            client.ws_connect(url, headers=headers, ssl=ctx if is_tls else False,
                            compress=15 if settings.deflate else 0,
                            heartbeat=settings.heart_beat or None,
                            max_msg_size=settings.max_message * 4, autoping=False),
            settings.connect_timeout)
    except asyncio.TimeoutError:
        raise ConnectError(protocol.ERR_TIMEOUT, "connection to %s timed out after %g s"
                           % (shown, settings.connect_timeout)) from None
    except aiohttp.ClientConnectorCertificateError as e:
        raise ConnectError(protocol.ERR_SSL_HANDSHAKE_FAILED,
                           "TLS certificate rejected: %s" % _describe(e.certificate_error)) from None
    except aiohttp.ClientSSLError as e:
        raise ConnectError(protocol.ERR_SSL_ERROR, "TLS error with %s: %s"
                           % (shown, _printable(_describe(getattr(e, "os_error", None) or e)))) from None
    except aiohttp.WSServerHandshakeError as e:
        if e.status == 101:
            # the server agreed to upgrade, but its answer is not a valid WebSocket handshake
            raise ConnectError(protocol.ERR_INVALID_HEADER, "invalid WebSocket handshake from %s: %s"
                               % (shown, _printable(e.message))) from None
        try:
            phrase = http.HTTPStatus(e.status).phrase
        except ValueError:
            phrase = _printable(e.message)
        raise ConnectError(protocol.ERR_CONNECT_FAILED, "WebSocket handshake rejected: HTTP %s %s"
                           % (e.status, phrase)) from None
    except aiohttp.ServerDisconnectedError:
        raise ConnectError(protocol.ERR_CONNECT_FAILED, "cannot connect to %s: the server closed the connection "
                           "during the handshake" % shown) from None
    except aiohttp.ClientResponseError as e:
        if _TOO_LONG.search(str(e)):
            raise ConnectError(protocol.ERR_INVALID_HEADER, "cannot connect to %s: the server's HTTP answer has "
                               "a line or header too long to read (%s)" % (shown, _printable(e, 80))) from None
        raise ConnectError(protocol.ERR_CONNECT_FAILED, "cannot connect to %s: not an HTTP/WebSocket server "
                           "there (its answer is not HTTP)" % shown) from None
    except aiohttp.ClientConnectorError as e:
        raise ConnectError(protocol.ERR_CONNECT_FAILED, "cannot connect to %s: %s"
                           % (shown, _printable(_describe(e.os_error)))) from None
    except (aiohttp.ClientError, OSError, ValueError) as e:
        raise ConnectError(protocol.ERR_CONNECT_FAILED, "cannot connect to %s: %s"
                           % (shown, _printable(_describe(e)))) from None
    _guard(ws)
    return ws


def take_binary(ws, sink, on_taken):
    """Binary frames from the server go to `sink` (an _accel.BinarySink) without a message each;
    `on_taken(frames, nbytes)`, called when the player must act (wake, refused) or every
    `sink.batch` frames, counts them and answers how long to stop reading (0: go on). False when
    this connection cannot (no guard, no accelerator)."""
    guard = ws.__dict__.get("_guarded_parser")
    if guard is None or native is None:
        return False
    guard.on_taken = on_taken
    guard.sink = sink
    return True


def _guard(ws):
    """aiohttp < 3.9 (Debian 12's 3.8.4) hands its frame parser to the connection without going
    through the response's `_parser`: put MaskGuard in front of it there."""
    if ws.__dict__.get("_guarded_parser") is not None:
        return
    try:
        proto = ws._conn.protocol
        parser = proto._payload_parser
        if parser is not None and not isinstance(parser, MaskGuard):
            guard = MaskGuard(parser, ws._reader)
            proto._payload_parser = guard
            ws.__dict__["_guarded_parser"] = guard
    except AttributeError:
        pass


_TOO_LONG = re.compile(r"too long|Got more than \d+ bytes", re.I)


def never_wait_for_drain(ws):
    """aiohttp's send_*() waits, inside the call, until the kernel takes a large message: with a
    server that stopped reading, forever, and nothing could then end the connection in time. The
    link paces itself instead (backlogged() before every message), so the writer never waits."""
    try:
        ws._writer._limit = 1 << 62           # aiohttp has no public way to say so
    except AttributeError:
        pass


# ---- receiving: what the stream needs to know, without aiohttp's types --------------------------

TEXT, BINARY, PING, PONG, CLOSED, LOST, FAILED = "text", "binary", "ping", "pong", "closed", "lost", "failed"


async def receive(ws):
    """The next event from the server: (TEXT, str), (BINARY, bytes), (PING, payload), (PONG,
    payload) (the caller answers pings: see pong()), (CLOSED, code, reason) for a close frame,
    (LOST, error_code, message) when the connection went away without one, or (FAILED,
    error_code, message) when we failed it because of what the server sent (a message over the
    size limit, a protocol violation): trying again would fail the same way."""
    msg = await ws.receive()
    t = msg.type
    if t == aiohttp.WSMsgType.TEXT:
        return TEXT, msg.data
    if t == aiohttp.WSMsgType.BINARY:
        return BINARY, msg.data
    if t == aiohttp.WSMsgType.PING:
        return PING, msg.data
    if t == aiohttp.WSMsgType.PONG:
        return PONG, msg.data
    if t == aiohttp.WSMsgType.CLOSE:
        return CLOSED, msg.data, msg.extra or ""
    exc = msg.data if isinstance(msg.data, BaseException) else ws.exception()
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return LOST, protocol.ERR_PING_TIMEOUT, "no pong from the server within the heartbeat"
    if isinstance(exc, aiohttp.WebSocketError):
        if exc.code == 1009:
            return FAILED, protocol.ERR_IO, "message over the size limit (4 x STREAM_MAX_MESSAGE): closed with 1009"
        text = _printable(exc)
        if "mask" in text.lower():
            return FAILED, protocol.ERR_SERVER_MASKED, "the server sent a masked frame (RFC 6455 forbids it): %s" % text
        return FAILED, protocol.ERR_PROTOCOL, "the server broke the WebSocket protocol: %s" % text
    if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
        return LOST, protocol.ERR_IO, lost_reason(exc)
    return LOST, protocol.ERR_IO, "connection lost: %s" % (_printable(exc) if exc else "closed without a close frame")
