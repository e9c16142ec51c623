"""One stream's connection to its server, across reconnections (loop thread).

The Link sends the stream's outbox in order, hands what the server sends to its host, and when a
live connection is lost abnormally it tries again (policy.ReconnectPolicy): the audio captured
meanwhile waits in the outbox (bounded), and every new connection starts with the host's opening
texts (the metadata) before it.

What the link does next is decided by `lifecycle.LinkMachine` alone: the host's controls
(`finish`, `fail`, `abandon`), the receiver and the steps of `run()` are its inputs; `run()`
carries out the state's work until the state changes. The host is a `contracts.LinkHost`.
"""
import asyncio
import time
import uuid as uuidlib

from . import connection, lifecycle as L, protocol
from .policy import Allowance, GiveUp, ReconnectPolicy

CLOSE_TIMEOUT = 5.0        # s to send what is left and close, once the stream ends
SEND_BUFFER_MS = 500       # the kernel's send buffer: this much audio (Linux doubles it)
RECEIVE_BATCH = 16         # messages handled before the receiver lets other streams run
INPUT_PER_S = 1000         # the server's allowance (policy.Allowance): units a second, burst 2 s worth;
INPUT_BYTES_PER_UNIT = 4096   # a message costs 1 unit + 1 per this many bytes
IN_FLIGHT_EVERY_S = 0.5    # how often the bytes the server has not acknowledged are sampled
STREAM_ID_HEADER = "X-Audio-Stream-Id"
RECONNECT_HEADER = "X-Audio-Stream-Reconnect"


class Link:
    def __init__(self, host, url, settings, outbox, http):
        self.host = host
        self.url = url
        self.settings = settings
        self.outbox = outbox
        self.http = http                  # () -> the WebSocket client (connection.client())
        self.id = str(uuidlib.uuid4())    # the same on every connection of this stream
        self.policy = ReconnectPolicy(settings.reconnect, settings.reconnect_attempts, settings.reconnect_max_s)
        self.machine = L.LinkMachine()
        self.allowance = Allowance(INPUT_PER_S, 2 * INPUT_PER_S)
        self.messages_received = 0
        self.bytes_received = 0
        self._in_flight = 0               # connection.in_flight(), sampled every IN_FLIGHT_EVERY_S
        self._in_flight_at = 0.0
        self.ws = None
        self._wake = asyncio.Event()
        self._finish = (1000, b"", CLOSE_TIMEOUT, 0.0)   # how it ends: (code, message, drain_s, linger_s)
        self._loss = None                 # (closed, code, reason, error_code) of the last connection
        self._fail_code = None
        self._decision = None
        self._last_reason = None
        self._dropped_before = 0
        self._receiver = None
        self._sink = None          # connection.take_binary's, for the open connection
        self._action = None               # the last action the machine asked for
        self._deadline = None
        self._linger_until = None
        self.messages_sent = 0
        self.bytes_sent = 0
        self.frame = None                 # (data, chunk_bytes) -> masked frames: the direct path
        self._direct = None               # the transport, while the direct path may be used

    @property
    def state(self):
        return self.machine.state

    def _input(self, inp, *args):
        action = self.machine.on(inp, *args)
        if action != L.IGNORE and action != L.DEFER:
            self._action = action
        if action == L.L_REFINISH:
            self._refinish(*args)
        elif action == L.L_DRAIN:
            self._set_finish(*args)
        self._wake.set()
        return action

    # ---- the host's controls (loop thread) ------------------------------------------------------
    def wake(self):
        self._wake.set()

    def finish(self, code=1000, message=b"", drain_s=CLOSE_TIMEOUT, linger_s=0.0, force=False):
        """Send what is queued (at most `drain_s`), wait up to `linger_s` for the server to close
        (graceful-shutdown), then close with `code`. A later call only shortens the linger,
        unless `force`."""
        self._input(L.FINISH, code, message, drain_s, linger_s, force)

    def fail(self, code, reason, error_code):
        """Close the connection with `code` because of what the server did; no reconnection."""
        if self.machine.state == L.L_OPEN:
            self._fail_code = code
            self._loss = (False, None, reason, error_code)
        self._input(L.FAIL)

    def abandon(self):
        """Stop now without sending anything more (the host gave up)."""
        self._input(L.ABANDON_LINK)

    def _set_finish(self, code, message, drain_s, linger_s, force=False):
        self._finish = (code, message, drain_s, linger_s)
        self._deadline = time.monotonic() + drain_s
        self._linger_until = None

    def _refinish(self, code, message, drain_s, linger_s, force=False):
        """A later finish (a stop or a hangup during graceful-shutdown, the switch going away):
        it may only make the end come sooner, unless `force`."""
        if force or linger_s < self._finish[3]:
            now = time.monotonic()
            self._finish = (code, message, drain_s, linger_s)
            if self.machine.state == L.L_LINGERING:
                self._deadline = now + drain_s        # what is left, and the close, from now on
                self._linger_until = min(self._linger_until or now, now + linger_s)
            else:
                self._deadline = min(self._deadline or now + drain_s, now + drain_s)

    def send_audio_now(self, data, chunk_bytes):
        """The capture clock's direct path: write complete chunks of audio as binary messages at
        once, when nothing waits before them and the socket takes data. True if sent; False: the
        caller queues them in the outbox (and wakes the link)."""
        transport = self._direct
        if transport is None or self.outbox or transport.get_write_buffer_size():
            return False
        if transport.is_closing():
            self._stop_direct()
            return False
        transport.write(self.frame(data, chunk_bytes))
        self.messages_sent += -(-len(data) // chunk_bytes)
        self.bytes_sent += len(data)
        return True

    def _stop_direct(self):
        if self._direct is not None:
            self._direct = None
            self.host.connection_down()

    # ---- running ----------------------------------------------------------------------------------
    async def run(self):
        """Connect, serve, reconnect while it makes sense. Raises connection.ConnectError when
        the first connection cannot be made."""
        m = self.machine
        try:
            try:
                ws = await self._open(0)
            except connection.ConnectError:
                self._input(L.OPEN_FAILED)
                raise
            if self._input(L.OPENED) == L.L_CONNECTED:
                self.policy.opened(time.monotonic())
                self.host.link_connected()
                for inp, args in m.take_deferred():
                    self._input(inp, *args)
            else:                                  # abandoned meanwhile
                connection.abort(ws)
            steps = {L.L_OPEN: self._serve, L.L_LOST: self._decide, L.L_RECONNECTING: self._reconnect,
                     L.L_CLOSING: self._drain_to_close, L.L_LINGERING: self._linger}
            while m.state != L.L_CLOSED:
                await steps[m.state]()
        finally:
            await self._stop_receiver()
            if self.ws is not None and not self.ws.closed:
                connection.abort(self.ws)

    async def _open(self, attempt):
        headers = {STREAM_ID_HEADER: self.id}
        headers.update(protocol.audio_headers(self.host.uplink_format()))
        if attempt:
            headers[RECONNECT_HEADER] = str(attempt)
        ws = await connection.connect(self.http(), self.url, self.settings, headers)
        connection.tune_socket(ws, max(16384, self.outbox.bytes_per_ms * SEND_BUFFER_MS))
        connection.never_wait_for_drain(ws)
        for text in reversed(self.host.opening_texts()):
            self.outbox.put_text_front(text)
        self.ws = ws
        self._loss = None
        self._fail_code = None
        sink = self._sink = self.host.binary_sink()
        if sink is not None:
            connection.take_binary(ws, sink, self._taken)
        self._receiver = asyncio.ensure_future(self._receive(ws))
        self._wake.set()
        return ws

    async def _serve(self):
        """OPEN: send the outbox as the socket takes it, until the state changes. Meanwhile the
        capture clock may send audio itself (send_audio_now, or the host's direct path from C)
        whenever nothing waits in the outbox."""
        if self.frame is not None:
            self._direct = connection.direct_writer(self.ws)
            if self._direct is not None:
                self.host.connection_up(self.ws)
        try:
            await self._serve_open()
        finally:
            self._stop_direct()

    async def _serve_open(self):
        m, ws, outbox = self.machine, self.ws, self.outbox
        while m.state == L.L_OPEN:
            await self._wake.wait()
            self._wake.clear()
            if m.state != L.L_OPEN:
                return
            try:
                if not await self._drain(ws, outbox):
                    await self._writable(ws, None)
                    self._wake.set()          # go round again: send what is left
            except connection.SEND_ERRORS as e:
                if self._receiver is not None:      # the receiver may know why (a close frame, a FIN)
                    await asyncio.wait([self._receiver], timeout=0.2)
                if m.state == L.L_OPEN:
                    self._loss = (False, 1006, connection.lost_reason(e), protocol.ERR_IO)
                    self._input(L.LOST)

    async def _decide(self):
        """LOST: the connection ended. Ask the policy whether to try again."""
        await self._stop_receiver()
        if self._fail_code is not None and self.ws is not None and not self.ws.closed:
            await self._close(self.ws, self._fail_code, b"policy violation")
        closed, code, reason, err = self._loss
        if not closed and self._in_flight:        # what the server never acknowledged went nowhere
            self.outbox.lost(self._in_flight)
        self._in_flight = 0
        if self.machine.state != L.L_LOST:
            if self._action == L.L_ENDED:         # the stream was ending anyway: say what happened
                self.host.link_lost(closed, code, reason, err)
            return
        if code is None:
            decision = GiveUp(reason)
        else:
            decision = self.policy.lost(closed, code, time.monotonic(), no_pong=err == protocol.ERR_PING_TIMEOUT)
        if isinstance(decision, GiveUp):
            self._input(L.GIVE_UP)
            if decision.limit:      # it kept failing: say so, with what happened last
                self.host.link_lost(False, 1006, "%s: every connection was lost within %g s of its handshake; last: %s"
                                    % (decision.reason, self.policy.stable_s, reason), protocol.ERR_CONNECT_FAILED)
            else:
                self.host.link_lost(closed, code, reason, err)
            return
        self._decision = decision
        # a close frame's reason is the server's text, often empty: the reconnecting event and log
        # line say what happened
        self._last_reason = ("the server closed the connection with %d%s" % (code, ": " + reason if reason else "")
                             if closed else reason)
        self._dropped_before = self.outbox.dropped_bytes
        self._input(L.RETRY)

    async def _reconnect(self):
        """RECONNECTING: wait out the backoff, connect again; the policy decides after a failure."""
        m, decision = self.machine, self._decision
        self.host.link_reconnecting(decision.attempt, decision.delay, self._last_reason)
        await self._sleep(decision.delay)
        if m.state != L.L_RECONNECTING:
            self._not_reconnecting()
            return
        try:
            ws = await self._open(decision.attempt)
        except connection.ConnectError as e:
            self._last_reason = "%s (code %d)" % (e.message, e.code)
            if self._input(L.OPEN_FAILED) != L.L_ATTEMPT_FAILED:
                self._not_reconnecting()
                return
            decision = self.policy.failed(time.monotonic())
            if isinstance(decision, GiveUp):
                self._input(L.GIVE_UP)
                self.host.link_lost(False, 1006, "%s; last: %s" % (decision.reason, self._last_reason),
                                    protocol.ERR_CONNECT_FAILED)
            else:
                self._decision = decision
                self._input(L.RETRY)
            return
        if self._input(L.OPENED) != L.L_RECONNECTED:
            connection.abort(ws)
            self._not_reconnecting()
            return
        self.policy.connected(time.monotonic())
        self.host.link_reconnected(decision.attempt, self.outbox.ms(self.outbox.dropped_bytes - self._dropped_before))

    def _not_reconnecting(self):
        if self.machine.state == L.L_CLOSED:
            self.host.log("INFO", "not reconnecting: the stream ended while the server was away")

    async def _drain_to_close(self):
        """CLOSING: send what is left by the deadline, else drop the connection."""
        m, ws, outbox = self.machine, self.ws, self.outbox
        try:
            while m.state == L.L_CLOSING:
                if await self._drain(ws, outbox):
                    self._input(L.DRAINED)
                    return
                if not await self._writable(ws, self._deadline):
                    if self._input(L.DEADLINE) == L.L_ABORT:
                        self.host.log("WARNING", "the server did not take the last %d ms of audio within %g s: "
                                      "dropping the connection" % (outbox.queued_ms, self._finish[2]))
                        connection.abort(ws)
                    return
        except connection.SEND_ERRORS:
            self._input(L.LOST)

    async def _linger(self):
        """LINGERING: graceful-shutdown keeps receiving until the server closes, the time is up, or
        the host shortens the wait (a `stop`, the switch going away). Then the close frame."""
        m = self.machine
        if self._linger_until is None:
            self._linger_until = time.monotonic() + self._finish[3]
            if self._finish[3] > 0:                   # the close after a linger gets its own time
                self._deadline = None
        while m.state == L.L_LINGERING:
            left = self._linger_until - time.monotonic()
            if left <= 0 or self._receiver is None or self._receiver.done():
                self._input(L.DEADLINE if left <= 0 or self._receiver is None else L.LOST)
                break
            self._wake.clear()
            waiter = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait([waiter, self._receiver], timeout=left, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
            if m.state == L.L_LINGERING and self.outbox:   # e.g. the stop text of a `stop` that ended it
                try:
                    await self._drain(self.ws, self.outbox)
                except connection.SEND_ERRORS:
                    self._input(L.LOST)
        if self._action == L.L_CLOSE and self.ws is not None and not self.ws.closed:
            code, message = self._finish[:2]
            # the close frame within what is left of the deadline: a stream lets go of its
            # connection within drain_s of its end, whatever the server does
            left = CLOSE_TIMEOUT if self._deadline is None else self._deadline - time.monotonic()
            await self._close(self.ws, code, message, max(0.2, left))

    async def _writable(self, ws, deadline):
        """Wait until the socket takes data again. Returns False at the deadline; returns early
        (True) when the state changes or the host wakes the link."""
        m = self.machine
        state = m.state
        while connection.backlogged(ws):
            if m.state != state or ws.closed:
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

    async def _drain(self, ws, outbox):
        """Send the outbox until it is empty (True) or the socket stops taking data (False):
        a server that does not keep up only ever holds up its own stream."""
        backlogged = connection.backlogged
        render = self.host.render_audio
        now = time.monotonic()
        if now - self._in_flight_at > IN_FLIGHT_EVERY_S:
            self._in_flight_at = now
            self._in_flight = connection.in_flight(ws)
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
        if self._direct is not None and not backlogged(ws):
            self.host.direct_ready()          # nothing waits any more: the capture may send itself
        return True

    async def _sleep(self, delay):
        """Wait `delay` seconds, or less if the state changes meanwhile."""
        m = self.machine
        deadline = time.monotonic() + delay
        while m.state == L.L_RECONNECTING:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), left)
            except asyncio.TimeoutError:
                return

    async def _receive(self, ws):
        """Everything the server sends, each message paid for from the stream's allowance."""
        event = None
        host = self.host
        allowance = self.allowance
        clock = time.monotonic
        n = 0
        try:
            while True:
                event = await connection.receive(ws)
                kind = event[0]
                if kind == connection.CLOSED or kind == connection.LOST or kind == connection.FAILED:
                    break
                data = event[1]
                size = len(data) if data else 0
                self.messages_received += 1
                self.bytes_received += size
                try:
                    if kind == connection.TEXT:
                        host.on_text(data)
                    elif kind == connection.BINARY:
                        host.on_binary(data)
                    elif kind == connection.PING:
                        await connection.pong(ws, data)
                except connection.SEND_ERRORS:
                    pass                      # the connection is going: the next receive says how
                except Exception as e:  # our bug: say so, keep the connection
                    host.log("ERR", "cannot handle a message from the server: %r" % (e,))
                wait = allowance.take(1 + size // INPUT_BYTES_PER_UNIT, clock())
                n += 1
                if wait:
                    await asyncio.sleep(wait)     # over its allowance: the server waits in TCP
                elif n % RECEIVE_BATCH == 0:
                    await asyncio.sleep(0)        # a busy server must not hold up the other streams
        except asyncio.CancelledError:
            raise
        except Exception as e:
            host.log("ERR", "receive failed: %r" % (e,))
            event = (connection.LOST, protocol.ERR_IO, "receive failed: %r" % (e,))
        if self._sink is not None:      # count what the sink took and no batch counted yet
            self._taken(*self._sink.take_pending())
        if ws is not self.ws:
            return
        self._stop_direct()
        kind, code, text = event
        if self._loss is None:
            if kind == connection.CLOSED:
                self._loss = (True, code, text, protocol.ERR_IO)
            elif kind == connection.FAILED:
                self._loss = (False, None, text, code)       # not worth another attempt
            else:
                self._loss = (False, 1006, text, code)
        self._input(L.LOST)

    def received(self):
        """(messages, bytes) received, frames the sink took and nobody counted yet included."""
        messages, nbytes = self.messages_received, self.bytes_received
        if self._sink is not None:
            frames, more = self._sink.pending
            messages, nbytes = messages + frames, nbytes + more
        return messages, nbytes

    def _taken(self, frames, nbytes):
        """connection.take_binary took `frames` binary frames (`nbytes` payload) into the player:
        counted and paid for as _receive() does messages; returns how long to stop reading."""
        self.messages_received += frames
        self.bytes_received += nbytes
        self.host.binary_taken(frames, nbytes)
        return self.allowance.take(frames + nbytes // INPUT_BYTES_PER_UNIT, time.monotonic())

    async def _stop_receiver(self):
        r, self._receiver = self._receiver, None
        if r is not None and not r.done():
            r.cancel()
            try:
                await r
            except (asyncio.CancelledError, Exception):
                pass

    async def _close(self, ws, code, message=b"", timeout=CLOSE_TIMEOUT):
        try:
            await asyncio.wait_for(ws.close(code=code, message=message), timeout)
        except (asyncio.TimeoutError, Exception):
            connection.abort(ws)
