"""Small pure state machines for decisions taken per frame or per capture pass. No I/O, no threads.

PlaybackPolicy: who puts the server's audio into the call (the core's own writes, replaced, or
our writes), and when the playback bug may go dormant.
"""

# PlaybackPolicy modes (the prior: who wrote the call the last time we played into it)
REPLACE = "replace"   # the core writes frames to the call; our WRITE_REPLACE callback replaces them
WRITE = "write"       # the core writes nothing; we write frames from the READ_PING callback


class PlaybackPolicy:
    """Decides, on each READ_PING of an active playback bug, whether we write a frame ourselves,
    and whether the bug may go dormant (no callbacks at all until the server sends audio again).

    The core calls WRITE_REPLACE for every frame it writes to the call (bridged, playing a file,
    `send_silence_when_idle`) and READ_PING for every frame it reads (the call's own clock). Two
    writers on one session make the core drop frames, so we write ourselves only after
    `quiet_pings` READ_PINGs in a row saw no core write — counted in events, not wall time, so a
    stall cannot fool it. The wait costs `quiet_pings` frames before the first audio; the prior
    (what the last active period saw) removes it: when we were the writer last time, the first
    quiet ping is enough, until a core write shows the call changed.
    """

    def __init__(self, quiet_pings=3):
        self.quiet_pings = quiet_pings
        self.prior = None         # REPLACE, WRITE, or None (never observed)
        self.quiet = 0            # READ_PINGs in a row without a core write
        self.pings = 0            # READ_PINGs since activation
        self.saw_core_write = False

    def activate(self):
        """The bug's callbacks are switched on (loop thread, no callback running)."""
        self.quiet = 0
        self.pings = 0
        self.saw_core_write = False

    def may_write(self, core_wrote):
        """A READ_PING: `core_wrote` = the core wrote a frame since the previous one. True if we
        may write this frame ourselves (if there is audio to play)."""
        self.pings += 1
        if core_wrote:
            self.quiet = 0
            self.saw_core_write = True
            return False
        self.quiet += 1
        need = 1 if (self.prior == WRITE and not self.saw_core_write) else self.quiet_pings
        return self.quiet >= need

    def may_sleep(self):
        """Enough pings seen since activation to know who writes the call (so the prior is
        worth keeping): the bug may go dormant when there is nothing to play."""
        return self.pings > self.quiet_pings

    def sleep(self):
        """Going dormant: remember who writes the call for the next activation."""
        self.prior = WRITE if self.quiet >= self.quiet_pings else REPLACE


class LatencyPolicy:
    """Latency recovery for a server that streams in real time (h11-style: fed what happened, it
    answers; no clock, no queue of its own). Asked every `every_s` while the call plays.

    A real-time server's audio arrives as fast as it plays, so the playback queue holds what the
    jitter allowance put there when the burst started; but each time the queue ran dry (a server,
    a network or a switch that stalled), the audio after it plays that much later, for good: the
    round trip a voice bot hears grows and never comes down. The queue counts that as *debt* (time
    it was dry inside one burst). When, over `window_s`, audio arrived at about the rate it plays
    (a real-time server, not one that sent a sentence ahead) and there is debt, this gives back
    what the window shows was not needed, at most the debt: the least the queue held after a frame
    played, less the *base* (the least it held over any window without debt: where this stream
    started, its phase and its jitter included) and the stream's *margin*, to the sample (a
    server's messages need not be whole frames, and the debt is time). So a stall's backlog goes,
    but the cushion a new burst waited for after a pause (which counts as debt too: the queue
    cannot tell a pause from a stall) stays. Silent frames go first (anywhere in the next second),
    and what silence does not cover, at most `SOUND_FRAMES` frames of sound every `every_s` (a
    20 % speed-up for a moment: 500 ms undone in about 3 s). Audio a server sends ahead never has
    debt, so it is never cut.

    The margin is the adaptive part of the jitter allowance: it starts at 0, so that after a stall
    the stream comes back to exactly the latency it started with. A stream that runs dry again
    within `RELAPSE_S` of catching up is in a spell of stalls its allowance does not cover: it
    keeps one frame more (up to `MAX_MARGIN_FRAMES`) while the spell lasts, and gives a frame back
    after `CALM_S` without running dry, so that the round trip is back where it started about 5 s
    after the last stall. (WebRTC's jitter buffer treats recurring delay peaks the same way.)

    `decide(min_queued, debt, arrived, elapsed)`: min_queued the least queued after a frame played
    since the last call (None: did not play), debt in bytes, arrived = bytes of audio that came
    meanwhile, elapsed s. Returns (bytes to drop, of which at most this many bytes of sound), or
    None. `dropped(n)` says what the queue dropped for it.
    """

    SILENT_PEAK = 328         # -40 dBFS: below this a frame is silence
    REAL_TIME = (0.75, 1.33)  # arrival rate / playout rate of a server streaming in real time
    SOUND_FRAMES = 2          # frames of sound dropped at most per decision
    RELAPSE_S = 10.0          # dry again this soon after catching up: keep a frame more
    CALM_S = 4.0              # this long without running dry: a frame of margin less
    MAX_MARGIN_FRAMES = 2

    def __init__(self, rate, frame_bytes, every_s=0.2, window_s=1.0):
        self.bytes_per_s = rate * 2
        self.frame = frame_bytes
        self.every_s = every_s
        self.window = max(1, int(round(window_s / every_s)))
        self.least = frame_bytes // 4 * 2   # half a frame: less is not worth a cut
        self.history = []         # (min_queued, arrived, elapsed) of the last `window` calls
        self.margin = 0           # bytes kept over the base (latency over where the stream started)
        self.base = None          # the least queued over a window without debt (None: not seen yet)
        self._debt = 0            # the debt as of the last call, less what was dropped since
        self._since_caught_up = None   # s since the debt was last given back in full (None: not yet)
        self._calm = 0.0          # s since the queue last ran dry

    def _ran_dry(self, debt, elapsed):
        if debt > self._debt:                                 # the queue ran dry since the last call
            if self._since_caught_up is not None and self._since_caught_up <= self.RELAPSE_S:
                self.margin = min(self.margin + self.frame, self.MAX_MARGIN_FRAMES * self.frame)
            self._since_caught_up = None
            self._calm = 0.0
        else:
            self._calm += elapsed
            if self._since_caught_up is not None:
                self._since_caught_up += elapsed
            if self.margin and self._calm >= self.CALM_S:
                self.margin -= self.frame
                self._calm = 0.0
        self._debt = debt

    def decide(self, min_queued, debt, arrived, elapsed):
        self._ran_dry(debt, elapsed)
        if min_queued is None:                    # not playing: start over
            self.history = []
            return None
        self.history.append((min_queued, arrived, elapsed))
        if len(self.history) > self.window:
            del self.history[0]
        if len(self.history) < self.window:
            return None
        low = min(h[0] for h in self.history)
        if not debt:                              # at home: the least this stream's jitter left
            self.base = low if self.base is None else min(self.base, low)
        if debt < self.least:
            return None
        spare = self._spare()
        seconds = sum(h[2] for h in self.history)
        rate = sum(h[1] for h in self.history) / (seconds * self.bytes_per_s) if seconds > 0 else 0
        if spare < self.least or not self.REAL_TIME[0] <= rate <= self.REAL_TIME[1]:
            return None
        want = min(spare, debt) & ~1
        return want, min(want, self.SOUND_FRAMES * self.frame)

    def _spare(self):
        """What the window held over home and margin (the frame is the home until one is seen)."""
        low = min(h[0] for h in self.history)
        return low - (self.base if self.base is not None else self.frame) - self.margin

    def dropped(self, nbytes):
        """What the queue dropped for the last decision."""
        if nbytes:
            self.history = [(max(0, q - nbytes), a, e) for q, a, e in self.history]
            self._debt = max(0, self._debt - nbytes)
            if self._spare() < self.least or self._debt < self.least:
                self._since_caught_up = 0.0       # back home (or nothing more owed)


# ---- reconnection --------------------------------------------------------------------------------

# Close codes after which the server expects (or at least allows) the client to come back:
# 1001 going away (a restart), 1006 abnormal (no close frame), 1011 internal error, 1012 service
# restart, 1013 try again later. 1000, 4xxx (the application's own) and the rest end the stream.
RECONNECT_CODES = frozenset((1001, 1006, 1011, 1012, 1013))


class Retry:
    """Reconnect after `delay` seconds; this will be attempt number `attempt` (1, 2, ...)."""

    def __init__(self, attempt, delay):
        self.attempt = attempt
        self.delay = delay

    def __repr__(self):
        return "Retry(attempt=%d, delay=%.3f)" % (self.attempt, self.delay)


class GiveUp:
    """Do not reconnect. `limit`: because the attempts or the time ran out (an error), not because
    the server said goodbye or reconnection is off."""

    def __init__(self, reason, limit=False):
        self.reason = reason
        self.limit = limit

    def __repr__(self):
        return "GiveUp(%r)" % self.reason


class ReconnectPolicy:
    """When a live connection is lost, whether and when to try again (h11-style: the caller
    feeds it what happened and the time, it answers; no clock, no I/O of its own).

    Backoff with jitter: the first retry within `first` seconds, then doubling up to `cap`, each
    delay drawn from [0.5, 1] of its nominal value. It gives up after `max_attempts` failed
    attempts in a row or `max_seconds` since the connection was lost, whichever comes first.

    A reconnection that ends within `stable_s` of its handshake, or because the server did not
    answer a ping, was not a success: its loss is one more failed attempt of the same outage (the
    backoff keeps growing and the limits apply), so a server that accepts and drops every
    connection cannot keep a stream reconnecting forever.
    """

    def __init__(self, enabled=True, max_attempts=10, max_seconds=60.0, first=0.1, cap=5.0, rng=None,
                 stable_s=5.0):
        import random
        self.enabled = enabled
        self.max_attempts = max_attempts
        self.max_seconds = max_seconds
        self.first = first
        self.cap = cap
        self.stable_s = stable_s
        self.rng = rng or random.Random()
        self.attempt = 0          # attempts since the connection was lost
        self.lost_at = None       # when the current outage began (None: none)
        self.opened_at = None     # when the current connection was made
        self.reconnects = 0       # successful reconnections over the stream's life

    @staticmethod
    def abnormal(closed, code):
        """A loss worth reconnecting after: no close frame at all, or a close frame whose code
        says "come back" (RECONNECT_CODES)."""
        return not closed or code in RECONNECT_CODES

    def opened(self, now):
        """A connection was made (the first one, or a reconnection: see connected())."""
        self.opened_at = now

    def lost(self, closed, code, now, no_pong=False):
        """The connection ended: `closed` = the server sent a close frame with `code` (else it
        was lost: reset, timeout, no pong (`no_pong`), I/O error). Returns Retry or GiveUp."""
        if not self.enabled:
            return GiveUp("reconnection is off (STREAM_NO_RECONNECT)")
        if not self.abnormal(closed, code):
            return GiveUp("the server closed the connection with %s" % code)
        lived = now - self.opened_at if self.opened_at is not None else 0.0
        self.opened_at = None
        if self.lost_at is None or (lived >= self.stable_s and not no_pong):
            self.lost_at = now            # a new outage
            self.attempt = 0
        return self._next(now)            # else: a reconnection that did not last, one more failure

    def failed(self, now):
        """A reconnection attempt failed. Returns Retry or GiveUp."""
        return self._next(now)

    def _next(self, now):
        if self.attempt >= self.max_attempts:
            return GiveUp("gave up after %d attempts" % self.attempt, limit=True)
        nominal = min(self.cap, self.first * (2 ** self.attempt))
        delay = nominal * self.rng.uniform(0.5, 1.0)
        if now + delay - self.lost_at > self.max_seconds:
            return GiveUp("gave up after %.0f s without a lasting connection" % (now - self.lost_at), limit=True)
        self.attempt += 1
        return Retry(self.attempt, delay)

    def connected(self, now=None):
        """A reconnection attempt succeeded (the outage ends only once it lasts: see lost())."""
        self.reconnects += 1
        if now is not None:
            self.opened_at = now


# ---- flood control -------------------------------------------------------------------------------

class RateLimit:
    """Token bucket: `allow(now)` at most `rate` times per second on average, `burst` at once.
    `suppressed` counts the refusals since `take_suppressed()` last read them; `counter` (an
    object with `inc()`, e.g. a metrics counter) counts every refusal."""

    def __init__(self, rate, burst, counter=None):
        self.rate = float(rate)
        self.burst = float(burst)
        self.tokens = float(burst)
        self.at = None
        self.suppressed = 0
        self.counter = counter

    def allow(self, now):
        if self.at is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        self.suppressed += 1
        if self.counter is not None:
            self.counter.inc()
        return False

    def take_suppressed(self):
        n, self.suppressed = self.suppressed, 0
        return n


class Allowance:
    """One stream's budget for what its server sends: every message (text, binary, ping, pong,
    close) costs `cost` units, refilled at `rate` a second up to `burst`. `take()` answers how
    long the reader must wait before it reads on (0.0: go on), so a server that floods waits in
    TCP, and the work one server causes per second is bounded whatever it sends."""

    def __init__(self, rate, burst):
        self.rate = float(rate)
        self.burst = float(burst)
        self.tokens = float(burst)
        self.at = None
        self.waited = 0.0             # seconds the reader was held back, over the stream's life

    def take(self, cost, now):
        if self.at is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        self.tokens -= cost
        if self.tokens >= 0:
            return 0.0
        wait = -self.tokens / self.rate
        self.waited += wait
        return wait


class Strikes:
    """More than `limit` strikes within `window` seconds: the server keeps sending garbage."""

    def __init__(self, limit, window):
        from collections import deque
        self.limit = limit
        self.window = window
        self.times = deque()

    def strike(self, now):
        """Count one; True when the limit is passed."""
        times = self.times
        times.append(now)
        while times and now - times[0] > self.window:
            times.popleft()
        return len(times) > self.limit
