"""One stream's connection to its server, across reconnections (loop thread).

The Link sends the stream's outbox in order, hands what the server sends to the host, and when a
live connection is lost abnormally it tries again (policy.ReconnectPolicy): the audio captured
meanwhile waits in the outbox (bounded), and every new connection starts with the host's opening
texts (the metadata) before it.

The host (the stream) provides: `opening_texts()` (called once per new connection),
`render_audio(chunk)` (the frames to send for one audio chunk), `on_text(str)`, `on_binary(bytes)`,
`link_connected()`, `link_reconnecting(attempt, delay_s, reason)`, `link_reconnected(attempt,
dropped_ms)`, `link_lost(closed, code, reason, error_code)` (the connection is gone for good, not
by our own doing), `log(level, msg)`, and the attributes `media_ended`, `rate` and `channels`.
"""
import asyncio
import time
import uuid as uuidlib

from . import connection, protocol
from .policy import GiveUp, ReconnectPolicy

CLOSE_TIMEOUT = 5.0        # s to send what is left and close, once the stream ends
SEND_BUFFER_MS = 500       # the kernel's send buffer: this much audio (Linux doubles it)
RECEIVE_BATCH = 64         # messages handled before the receiver lets other streams run
STREAM_ID_HEADER = "X-Audio-Stream-Id"
RECONNECT_HEADER = "X-Audio-Stream-Reconnect"

# states, for status and logs
CONNECTING, STREAMING, RECONNECTING, CLOSING, CLOSED = "connecting", "streaming", "reconnecting", "closing", "closed"


class Link:
    def __init__(self, host, url, settings, outbox, http):
        self.host = host
        self.url = url
        self.settings = settings
        self.outbox = outbox
        self.http = http                  # () -> the aiohttp ClientSession
        self.id = str(uuidlib.uuid4())    # the same on every connection of this stream
        self.policy = ReconnectPolicy(settings.reconnect, settings.reconnect_attempts, settings.reconnect_max_s)
        self.state = CONNECTING
        self.ws = None
        self._wake = asyncio.Event()
        self._loss = None
        self._finish = None               # (code, message, drain_s, linger_s) once the host ends it
        self._abandoned = False
        self._receiver = None
        self._fail_code = None
        self.messages_sent = 0
        self.bytes_sent = 0

    # ---- the host's controls (loop thread) ------------------------------------------------------
    def wake(self):
        self._wake.set()

    def finish(self, code=1000, message=b"", drain_s=CLOSE_TIMEOUT, linger_s=0.0, force=False):
        """Send what is queued (at most `drain_s`), wait up to `linger_s` for the server to close
        (graceful-shutdown), then close with `code`. A later call only shortens the linger,
        unless `force`."""
        if force or self._finish is None or linger_s < self._finish[3]:
            self._finish = (code, message, drain_s, linger_s)
        self._wake.set()

    def fail(self, code, reason, error_code):
        """Close the connection with `code` because of what the server did; no reconnection."""
        if self._loss is None:
            self._fail_code = code
            self._loss = (False, None, reason, error_code)
        self._wake.set()

    def abandon(self):
        """Stop now without sending anything more (the host gave up)."""
        self._abandoned = True
        self._wake.set()

    # ---- running ----------------------------------------------------------------------------------
    async def run(self):
        """Connect, serve, reconnect while it makes sense. Raises connection.ConnectError when
        the first connection cannot be made."""
        ws = await self._open(0)
        self.host.link_connected()
        try:
            while ws is not None:
                loss = await self._serve(ws)
                ws = await self._recover(loss) if loss is not None else None
        finally:
            self.state = CLOSED
            await self._stop_receiver()
            if self.ws is not None and not self.ws.closed:
                connection.abort(self.ws)

    async def _open(self, attempt):
        headers = {STREAM_ID_HEADER: self.id}
        headers.update(protocol.audio_headers(self.settings.protocol, self.host.rate, self.host.channels))
        if attempt:
            headers[RECONNECT_HEADER] = str(attempt)
        ws = await connection.connect(self.http(), self.url, self.settings, headers)
        connection.bound_send_buffer(ws, max(16384, self.outbox.bytes_per_ms * SEND_BUFFER_MS))
        for text in reversed(self.host.opening_texts()):
            self.outbox.put_text_front(text)
        self._wake.set()
        return ws

    async def _serve(self, ws):
        """One connection. Returns None when it ended by our doing, else the loss
        (closed, code, reason, error_code)."""
        self.ws = ws
        self._loss = None
        self.state = STREAMING
        self._receiver = asyncio.ensure_future(self._receive(ws))
        outbox = self.outbox
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._abandoned:
                return None
            if self._loss is not None:
                # lost while we were closing anyway: nothing to recover
                return None if self._finish is not None else self._loss
            if self._finish is None:
                try:
                    if not await self._drain(ws, outbox):
                        await self._writable(ws, None)
                        self._wake.set()          # go round again: send what is left
                except connection.SEND_ERRORS as e:
                    await asyncio.sleep(0)        # the receiver may know why (a close frame)
                    return self._loss or (False, 1006, connection.lost_reason(e), protocol.ERR_IO)
                continue
            drain_s, linger_s = self._finish[2:]
            self.state = CLOSING
            deadline = time.monotonic() + drain_s
            try:
                while not await self._drain(ws, outbox):
                    if not await self._writable(ws, deadline):
                        self.host.log("WARNING", "the server did not take the last %d ms of audio within %g s: "
                                      "dropping the connection" % (outbox.queued_ms, drain_s))
                        connection.abort(ws)
                        return None
            except connection.SEND_ERRORS:
                return None
            await self._linger(linger_s)
            code, message = self._finish[:2]
            await self._close(ws, code, message)
            return None

    async def _writable(self, ws, deadline):
        """Wait until the socket takes data again. Returns False at the deadline; returns early
        (True) when the host wakes the link (it may be ending, or a loss came in)."""
        while connection.backlogged(ws):
            if self._loss is not None or self._abandoned or ws.closed:
                return True
            step = 0.02
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                step = min(step, left)
            elif self._wake.is_set():
                return True
            await asyncio.sleep(step)
        return True

    async def _linger(self, linger_s):
        """graceful-shutdown: keep receiving until the server closes, the time is up, or the host
        shortens the wait (a `stop`, the switch going away)."""
        deadline = time.monotonic() + linger_s
        while self._loss is None and not self._abandoned and self._receiver is not None:
            left = min(deadline, time.monotonic() + self._finish[3]) - time.monotonic()
            if left <= 0:
                return
            self._wake.clear()
            waiter = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait([waiter, self._receiver], timeout=left, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
            if self._receiver.done():
                return
            if self.outbox:                     # e.g. the stop text of a `stop` that ended it
                try:
                    await self._drain(self.ws, self.outbox)
                except connection.SEND_ERRORS:
                    return

    async def _drain(self, ws, outbox):
        """Send the outbox until it is empty (True) or the socket stops taking data (False):
        a server that does not keep up only ever holds up its own stream."""
        backlogged = connection.backlogged
        render = self.host.render_audio
        while outbox:
            if backlogged(ws):
                self.host.outbox_drained()
                return False
            item = outbox.pop()
            self.messages_sent += 1
            self.bytes_sent += len(item)
            cls = item.__class__
            if cls is bytes:
                for frame in render(item):
                    if frame.__class__ is bytes:
                        await ws.send_bytes(frame)
                    else:
                        await ws.send_str(frame)
            elif cls is str:
                await ws.send_str(item)
            else:                               # outbox.Deferred: rendered now, in sending order
                for text in item.render():
                    await ws.send_str(text)
        self.host.outbox_drained()
        return True

    async def _recover(self, loss):
        """The connection was lost. Returns a new connection, or None (then the host has been
        told, through link_lost)."""
        closed, code, reason, err = loss
        await self._stop_receiver()
        if self._fail_code is not None and self.ws is not None and not self.ws.closed:
            await self._close(self.ws, self._fail_code, b"policy violation")
        if self.host.media_ended or self._finish is not None:
            decision = GiveUp("the stream was ending")
        elif code is None:
            decision = GiveUp(reason)
        else:
            decision = self.policy.lost(closed, code, time.monotonic())
        if isinstance(decision, GiveUp):
            self.host.link_lost(closed, code, reason, err)
            return None
        dropped_before = self.outbox.dropped_bytes
        last = reason
        while not isinstance(decision, GiveUp):
            self.state = RECONNECTING
            self.host.link_reconnecting(decision.attempt, decision.delay, last)
            await self._sleep(decision.delay)
            if self._abandoned or self._finish is not None or self.host.media_ended:
                self.host.log("INFO", "not reconnecting: the stream ended while the server was away")
                return None
            try:
                ws = await self._open(decision.attempt)
            except connection.ConnectError as e:
                last = "%s (code %d)" % (e.message, e.code)
                decision = self.policy.failed(time.monotonic())
                continue
            self.policy.connected()
            self.host.link_reconnected(decision.attempt, self.outbox.ms(self.outbox.dropped_bytes - dropped_before))
            return ws
        self.host.link_lost(False, 1006, "%s; last: %s" % (decision.reason, last), protocol.ERR_CONNECT_FAILED)
        return None

    async def _sleep(self, delay):
        """Wait `delay` seconds, or less if the host ends the stream meanwhile."""
        deadline = time.monotonic() + delay
        while not (self._abandoned or self._finish is not None or self.host.media_ended):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), left)
            except asyncio.TimeoutError:
                return

    async def _receive(self, ws):
        event = None
        host = self.host
        n = 0
        try:
            while True:
                event = await connection.receive(ws)
                kind = event[0]
                try:
                    if kind == connection.TEXT:
                        host.on_text(event[1])
                    elif kind == connection.BINARY:
                        host.on_binary(event[1])
                    else:
                        break
                except Exception as e:  # our bug: say so, keep the connection
                    host.log("ERR", "cannot handle a message from the server: %r" % (e,))
                n += 1
                if n % RECEIVE_BATCH == 0:
                    await asyncio.sleep(0)    # a flooding server must not hold up the other streams
        except asyncio.CancelledError:
            raise
        except Exception as e:
            host.log("ERR", "receive failed: %r" % (e,))
            event = (connection.LOST, protocol.ERR_IO, "receive failed: %r" % (e,))
        kind, code, text = event
        if kind == connection.CLOSED:
            self._loss = (True, code, text, protocol.ERR_IO)
        elif kind == connection.FAILED:
            self._loss = (False, None, text, code)       # not worth another attempt
        else:
            self._loss = (False, 1006, text, code)
        self._wake.set()

    async def _stop_receiver(self):
        r, self._receiver = self._receiver, None
        if r is not None and not r.done():
            r.cancel()
            try:
                await r
            except (asyncio.CancelledError, Exception):
                pass

    async def _close(self, ws, code, message=b""):
        try:
            await asyncio.wait_for(ws.close(code=code, message=message), CLOSE_TIMEOUT)
        except (asyncio.TimeoutError, Exception):
            connection.abort(ws)
