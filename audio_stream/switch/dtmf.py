"""The digits a call receives, handed to its streams on the loop thread: one Python call per digit.

Each digit takes exactly one of two paths, chosen by where it came from (`switch_dtmf_t.source`):

- **Signalled by the caller** (RTP telephone events, SIP INFO, in-band detection: sources RTP,
  ENDPOINT, INBAND_AUDIO). A receive-DTMF hook on the session (`switch_core_event_hook_add_recv_dtmf`,
  one per session, shared by every stream of the call). `switch_channel_queue_dtmf` calls it under
  the channel's `dtmf_mutex`, on whichever thread got the digit (the session thread for RTP, inside
  its frame read and before that frame reaches the media bugs; sofia's thread for INFO; the media
  thread for in-band), as soon as the digit arrives and whatever the call's application is doing.
  The core has no lock around the hook list: we change a session's list only under `_lock`, and an
  unlinked node stays valid in the session's pool, so a hook call in progress is never cut short.
  Hooks are not removed at hangup (they die with the session); the core stops calling them once
  the channel is down. The callback object is `HOOK` below: this module is imported once and never
  reloaded, so it lives as long as the process.
- **Injected by an application** (`uuid_send_dtmf` on a loopback peer, `uuid_recv_dtmf`, the
  `send_dtmf` application: sources UNKNOWN and APP). These carry DTMF_FLAG_SKIP_PROCESS unless the
  digits start with `~`, and the core calls no hook for them. They are taken from the DTMF event the
  core fires when the call's application takes the digit from the channel's queue
  (`switch_channel_dequeue_dtmf`: park, playback, bridge... one per frame read), through
  mod_python3's `EventConsumer` (its handler is C: it copies the event into a queue on the dispatch
  thread, no Python there). The loop thread pops that queue every `EVENT_TICK_S` while any stream
  listens; the consumer exists only then.

Digits flagged sensitive (DTMF_FLAG_SENSITIVE, or the channel variable `sensitive_dtmf`) are
never passed on: the core fires no DTMF event for them and the hook drops them.

Durations are the core's, in samples at 8 kHz (its minimum, default and maximum are 50, 250 and
24000 ms): we pass them on in ms.
"""
import asyncio
import threading

from . import core as C

HOOK_SOURCES = frozenset((C.DTMF_RTP, C.DTMF_ENDPOINT, C.DTMF_INBAND_AUDIO))
EVENT_SOURCES = frozenset(("UNKNOWN", "APP"))     # DTMF-Source of the digits the hook cannot see
DIGITS = frozenset("0123456789*#ABCD")            # not w/W (pauses) nor F (flash)
EVENT_TICK_S = 0.020
EVENT_MAX_PER_TICK = 256

_lock = threading.Lock()    # changes to _ports and to the sessions' hook lists (never taken by callbacks)
_ports = {}                 # uuid -> tuple of DtmfPort; replaced whole, read without the lock
_hook_core = [None]         # the Core whose library calls HOOK (one per process)


def _digit(raw):
    d = raw.upper()
    return d if d in DIGITS and len(d) == 1 else None


def _on_recv_dtmf(session, dtmf, direction):
    """switch_recv_dtmf_hook_t: any thread, the channel's dtmf_mutex held. Never raises, never
    blocks, always SUCCESS (another status would stop the core's walk and drop the digit)."""
    try:
        if direction != C.DTMF_RECV:
            return C.SUCCESS
        d = dtmf.contents
        if d.source not in HOOK_SOURCES or d.flags & C.DTMF_FLAG_SENSITIVE:
            return C.SUCCESS
        core = _hook_core[0]
        raw_uuid = core.switch_core_session_get_uuid(session)
        ports = _ports.get(raw_uuid.decode("utf-8", "surrogateescape")) if raw_uuid else None
        if not ports:
            return C.SUCCESS
        digit = _digit(d.digit.decode("latin-1"))
        if digit is None or _sensitive(core, session):
            return C.SUCCESS
        ms = d.duration // C.DTMF_SAMPLES_PER_MS
        for port in ports:
            port.notify(port.listener.dtmf, digit, ms)
    except BaseException:  # never let an exception cross into the core
        pass
    return C.SUCCESS


HOOK = C.RECV_DTMF_HOOK(_on_recv_dtmf)


def _sensitive(core, session):
    # switch_channel_queue_dtmf marks the queued copy sensitive when this variable is true, but hands
    # the hooks the digit as it came: honour it here (no copy into the session pool: dup FALSE)
    ch = core.switch_core_session_get_channel(session)
    value = core.switch_channel_get_variable_dup(ch, b"sensitive_dtmf", 0, -1) if ch else None
    return value is not None and C.switch_true(value.decode("latin-1"))


class _EventPath:
    """The application-injected digits: one EventConsumer("DTMF") while any port is attached."""

    def __init__(self):
        self.consumer = None
        self.generation = 0

    def start(self, be, notify):
        """Under _lock, when the first port attaches. None, or why injected digits are not seen."""
        self.generation += 1
        try:
            self.consumer = be.fs.EventConsumer("DTMF")
        except Exception as e:
            self.consumer = None
            return "cannot bind the DTMF event: %r" % (e,)
        notify(self.tick, self.generation)
        return None

    def stop(self):
        """Under _lock, when the last port detaches: unbind (waits for a delivery in progress)."""
        consumer, self.consumer = self.consumer, None
        self.generation += 1
        if consumer is not None:
            consumer.cleanup()

    def tick(self, generation):
        """Loop thread: hand on what the consumer queued, then come back in EVENT_TICK_S."""
        consumer = self.consumer
        if generation != self.generation or consumer is None:
            return
        try:
            for _ in range(EVENT_MAX_PER_TICK):
                ev = consumer.pop(0)
                if ev is None:
                    break
                _on_event(ev)
        finally:
            if generation == self.generation:
                asyncio.get_running_loop().call_later(EVENT_TICK_S, self.tick, generation)


def _on_event(ev):
    if ev.getHeader("DTMF-Source") not in EVENT_SOURCES:
        return                                   # the hook has passed it on already
    ports = _ports.get(ev.getHeader("Unique-ID") or "")
    if not ports:
        return
    digit = _digit(ev.getHeader("DTMF-Digit") or "")
    if digit is None:
        return
    try:
        ms = int(ev.getHeader("DTMF-Duration") or 0) // C.DTMF_SAMPLES_PER_MS
    except ValueError:
        ms = 0
    for port in ports:
        port.notify(port.listener.dtmf, digit, ms)


_events = _EventPath()


class DtmfPort:
    """One stream's view of its call's digits: `notify(listener.dtmf, digit, duration_ms)` per digit
    (`notify` hands a call to the loop thread, in order). attach() on the API thread with the session
    read-locked; detach() on any thread, any number of times, also after the call is gone."""

    def __init__(self, be, listener, notify):
        self.be = be
        self.core = be.core
        self.listener = listener
        self.notify = notify
        self.uuid = None

    def attach(self, session):
        """None, or the reason some digits will not be seen (the stream goes on without them)."""
        core = self.core
        raw = core.switch_core_session_get_uuid(session)
        if not raw:
            return "the session has no uuid"
        uuid = raw.decode("utf-8", "surrogateescape")
        reason = None
        with _lock:
            ports = _ports.get(uuid, ())
            if not ports:
                _hook_core[0] = core
                status = core.switch_core_event_hook_add_recv_dtmf(session, HOOK)
                if status not in (C.SUCCESS, C.FALSE):   # FALSE: our hook is in the list already
                    reason = "switch_core_event_hook_add_recv_dtmf failed (status %d)" % status
            if not _ports:
                events_reason = _events.start(self.be, self.notify)
                reason = reason or events_reason
            _ports[uuid] = ports + (self,)
            self.uuid = uuid
        return reason

    def detach(self):
        """Stop passing digits on; the last port of a call removes the session's hook (when the
        session still exists: otherwise the hook went with it)."""
        core = self.core
        with _lock:
            uuid, self.uuid = self.uuid, None
            if uuid is None:
                return
            ports = tuple(p for p in _ports.get(uuid, ()) if p is not self)
            if ports:
                _ports[uuid] = ports
            else:
                _ports.pop(uuid, None)
                session = core.force_locate(uuid)
                if session:
                    try:
                        core.switch_core_event_hook_remove_recv_dtmf(session, HOOK)
                    finally:
                        core.unlock(session)
            if not _ports:
                _events.stop()


def live_ports():
    """Calls with a port attached (tests: 0 once every stream is over)."""
    return len(_ports)
