"""Prometheus metrics: counters, gauges and histograms, and the text exposition format. Pure: no
I/O, no threads (exporter.py serves the text over HTTP on the loop thread).

Two kinds of figures:

- *events*, counted where they happen by one short call from the code that sees them (a stream
  starts or ends, a message arrives, a tick of the capture clock runs late): the hook functions
  at the end of this module. They run on the loop thread, as the scrape does, so a plain `+= 1`
  is safe.
- *state*, read from the live streams when a scrape comes (`scrape()`): how many streams are in
  which state, what their queues hold, and the totals each stream already keeps (bytes and
  messages sent, audio dropped, reconnections). A stream's totals are added to the process's
  when it ends (`ended()`), so those counters never go back.

No per-call labels: every label has a small fixed set of values, so the number of series stays
the same with ten calls or ten thousand (the per-call view is `python audio_stream status`).

The format (https://prometheus.io/docs/instrumenting/exposition_formats/, version 0.0.4): for
each family one `# HELP name text` line (backslash and newline escaped) and one `# TYPE name
type` line, then its samples `name{label="value",...} value`, label values escaped (backslash,
double quote, newline); histograms as cumulative `name_bucket{le="..."}` lines ending with
`le="+Inf"`, then `name_sum` and `name_count`; the text ends with a newline.
"""
import bisect
import math
import re
import time
import weakref

from .protocol import ERR_PROTOCOL

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def _check_name(name):
    if not _NAME_RE.match(name):
        raise ValueError("invalid metric name %r" % (name,))
    return name


def _check_labels(names):
    names = tuple(names)
    for n in names:
        if not _LABEL_RE.match(n) or n.startswith("__") or n == "le":
            raise ValueError("invalid label name %r" % (n,))
    if len(set(names)) != len(names):
        raise ValueError("duplicate label names %r" % (names,))
    return names


def number(value):
    """A sample value as Prometheus reads it: integers as they are, +Inf, -Inf, NaN."""
    if value.__class__ is int:
        return str(value)
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def escape_help(text):
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def escape_label(text):
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


# ---- metric families -----------------------------------------------------------------------------

class _Family:
    kind = "untyped"

    def __init__(self, name, help, labelnames=()):
        self.name = _check_name(name)
        self.help = help
        self.labelnames = _check_labels(labelnames)
        self._children = {}
        if not self.labelnames:
            self._children[()] = self._child()

    def _child(self):
        raise NotImplementedError

    def labels(self, *values):
        """The child for these label values (made on first use; values are strings)."""
        if len(values) != len(self.labelnames):
            raise ValueError("%s takes %d label values, got %d" % (self.name, len(self.labelnames), len(values)))
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._child()
        return child

    def _only(self):
        if self.labelnames:
            raise ValueError("%s has labels: use labels(...)" % self.name)
        return self._children[()]

    def _pairs(self, key):
        return tuple(zip(self.labelnames, key))

    def samples(self):
        """[(sample name, ((label, value), ...), value)] in a stable order."""
        raise NotImplementedError


class _CounterValue:
    __slots__ = ("value",)

    def __init__(self):
        self.value = 0

    def inc(self, n=1):
        if n > 0:                  # a counter never goes back
            self.value += n


class _GaugeValue:
    __slots__ = ("value",)

    def __init__(self):
        self.value = 0

    def set(self, v):
        self.value = v


class Counter(_Family):
    """Only goes up. The name ends in `_total`."""
    kind = "counter"

    def __init__(self, name, help, labelnames=()):
        if not name.endswith("_total"):
            raise ValueError("a counter's name ends in _total: %r" % (name,))
        super().__init__(name, help, labelnames)

    def _child(self):
        return _CounterValue()

    def inc(self, n=1):
        self._only().inc(n)

    def samples(self):
        return [(self.name, self._pairs(k), c.value) for k, c in self._children.items()]


class Gauge(_Family):
    """A value that goes up and down."""
    kind = "gauge"

    def _child(self):
        return _GaugeValue()

    def set(self, v):
        self._only().set(v)

    samples = Counter.samples


class _Buckets:
    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)     # per bucket, not cumulative; the last is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, v):
        self.counts[bisect.bisect_left(self.bounds, v)] += 1
        self.sum += v
        self.count += 1


class Histogram(_Family):
    """Observations counted into buckets (upper bounds, inclusive), with their sum and count."""
    kind = "histogram"

    def __init__(self, name, help, buckets, labelnames=()):
        bounds = sorted(float(b) for b in buckets)
        if not bounds or any(math.isnan(b) for b in bounds) or len(set(bounds)) != len(bounds):
            raise ValueError("%s: buckets must be distinct numbers" % name)
        if math.isinf(bounds[-1]):
            bounds.pop()                          # +Inf is always there
        self.bounds = tuple(bounds)
        self._le = tuple(number(b) for b in bounds) + ("+Inf",)
        super().__init__(name, help, labelnames)

    def _child(self):
        return _Buckets(self.bounds)

    def observe(self, v):
        self._only().observe(v)

    def samples(self):
        out = []
        for key, b in self._children.items():
            pairs = self._pairs(key)
            total = 0
            for le, n in zip(self._le, b.counts):
                total += n
                out.append((self.name + "_bucket", pairs + (("le", le),), total))
            out.append((self.name + "_sum", pairs, b.sum))
            out.append((self.name + "_count", pairs, b.count))
        return out


def render(families):
    """The text exposition format of these families (names must be unique)."""
    lines = []
    seen = set()
    for f in families:
        if f.name in seen:
            raise ValueError("metric %s rendered twice" % f.name)
        seen.add(f.name)
        lines.append("# HELP %s %s" % (f.name, escape_help(f.help)))
        lines.append("# TYPE %s %s" % (f.name, f.kind))
        for name, pairs, value in f.samples():
            if pairs:
                labels = ",".join('%s="%s"' % (k, escape_label(v)) for k, v in pairs)
                lines.append("%s{%s} %s" % (name, labels, number(value)))
            else:
                lines.append("%s %s" % (name, number(value)))
    return "\n".join(lines) + "\n" if lines else ""


class Registry:
    """The families kept for the process's life, in the order they were added."""

    def __init__(self):
        self._families = []

    def add(self, family):
        if any(f.name == family.name for f in self._families):
            raise ValueError("%s is registered already" % family.name)
        self._families.append(family)
        return family

    def families(self):
        return list(self._families)


# ---- audio_stream's metrics ----------------------------------------------------------------------

PROTOCOLS = ("audio_stream", "twilio")
STATES = ("connecting", "streaming", "reconnecting", "closing")
PLAYBACK_STATES = ("playing", "idle", "paused", "off")
# why a stream ended (the first cause seen wins)
END_REASONS = ("hangup", "stop", "graceful-shutdown", "server_closed", "connection_lost", "protocol_error",
               "connect_failed", "error", "shutdown", "other")
SUPPRESSED_KINDS = ("json_event", "bad_message_report", "text_refused_log", "event", "log_line")

REGISTRY = Registry()

STARTED = REGISTRY.add(Counter(
    "audio_stream_streams_started_total", "Streams started (the loop thread took them on).", ("protocol",)))
ENDED = REGISTRY.add(Counter(
    "audio_stream_streams_ended_total", "Streams ended, by the first cause seen: hangup, stop, graceful-shutdown, "
    "server_closed, connection_lost (gave up reconnecting, or no reconnection), protocol_error, connect_failed, "
    "error, shutdown (the switch or module going away), other.", ("reason",)))
RECEIVED_MESSAGES = REGISTRY.add(Counter(
    "audio_stream_received_messages_total", "WebSocket messages received from servers.", ("kind",)))
RECEIVED_BYTES = REGISTRY.add(Counter(
    "audio_stream_received_bytes_total", "Payload received from servers: bytes of binary messages plus "
    "characters of text messages."))
CONNECT = REGISTRY.add(Histogram(
    "audio_stream_connect_seconds", "From `start` to the stream's first WebSocket connection being open "
    "(TCP, TLS and handshake).", (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)))
PLAYBACK_LATENCY = REGISTRY.add(Histogram(
    "audio_stream_playback_started_latency_seconds", "From the server's audio reaching an empty playback queue "
    "to its first frame going into the call (the latency_ms of mod_audio_stream::playback_started).",
    (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.04, 0.06, 0.1, 0.25, 0.5, 1)))
TICK_LATENESS = REGISTRY.add(Histogram(
    "audio_stream_capture_tick_lateness_seconds", "How late each tick of the capture clock (every 20 ms, "
    "while streams are live) ran: the load of the loop thread.",
    (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1)))
SUPPRESSED = REGISTRY.add(Counter(
    "audio_stream_events_suppressed_total", "Events and log lines not emitted because of a rate limit: "
    "json_event (mod_audio_stream::json beyond 200/s per stream), bad_message_report (error reports for "
    "unusable messages beyond 5/s), text_refused_log (log lines about refused text beyond 1/s).", ("kind",)))
SCRAPE = REGISTRY.add(Gauge(
    "audio_stream_metrics_scrape_seconds", "Time the loop thread spent producing the previous scrape's text."))

for _p in PROTOCOLS:
    STARTED.labels(_p)
for _r in END_REASONS:
    ENDED.labels(_r)
for _k in ("text", "binary"):
    RECEIVED_MESSAGES.labels(_k)
for _k in SUPPRESSED_KINDS:
    SUPPRESSED.labels(_k)


def suppressed(kind):
    """The counter a RateLimit increments for each refusal (policy.RateLimit's `counter`)."""
    return SUPPRESSED.labels(kind)


# ---- hooks: one call each, on the loop thread, where the thing happens ---------------------------

_reasons = weakref.WeakKeyDictionary()      # stream -> why it is ending (the first cause seen)


class _Retired:
    """The totals of the streams that have ended."""
    sent_bytes = sent_messages = dropped_ms = reconnects = 0


_retired = _Retired()


def started(stream):
    STARTED.labels(stream.settings.protocol).inc()


def end_reason(stream, reason):
    """Why `stream` is ending, if nothing said so before."""
    if stream not in _reasons:
        _reasons[stream] = reason


def link_lost(stream, closed, error_code):
    """The connection is gone for good, not by our doing (the server closed, or it was lost)."""
    end_reason(stream, "server_closed" if closed else "protocol_error" if error_code == ERR_PROTOCOL else "connection_lost")


def ended(stream):
    """The stream is done (once, just before it leaves the registry): count it and keep its
    totals."""
    ENDED.labels(_reasons.pop(stream, "other")).inc()
    sent_bytes, sent_messages, dropped_ms, reconnects = _totals(stream)
    r = _retired
    r.sent_bytes += sent_bytes
    r.sent_messages += sent_messages
    r.dropped_ms += dropped_ms
    r.reconnects += reconnects


def connected(stream):
    """The stream's first connection is open."""
    CONNECT.observe(max(0.0, time.time() - stream.started_at))


def received(kind, size, messages=1):
    """Messages from the server: kind "text" (size in characters) or "binary" (bytes, all
    `messages` together: the accelerated path counts the frames it took a batch at a time)."""
    RECEIVED_MESSAGES.labels(kind).inc(messages)
    RECEIVED_BYTES.inc(size)


def tick_late(seconds):
    TICK_LATENESS.observe(seconds if seconds > 0.0 else 0.0)


def playback_latency(seconds):
    PLAYBACK_LATENCY.observe(seconds)


# ---- scrape: the state of the moment -------------------------------------------------------------

def _totals(s):
    """(bytes sent, messages sent, ms of the caller's audio dropped, reconnections) of one stream."""
    messages, sent = s.sent_totals()
    link = s.link
    return sent, messages, s.outbox.dropped_ms, link.policy.reconnects if link is not None else 0


def _gauge(name, help, value, labelnames=(), values=None):
    g = Gauge(name, help, labelnames)
    if values is None:
        g.set(value)
    else:
        for key, v in values.items():
            g.labels(*key).set(v)
    return g


def _counter(name, help, value):
    c = Counter(name, help)
    c.inc(value)
    return c


# what the exporter shows of service.gil_stats(): key -> (metric name, kind, help)
GIL_KEYS = {
    "loop_cpu_s": ("audio_stream_loop_thread_cpu_seconds_total", Counter,
                   "CPU time of the loop thread (every WebSocket and event runs there, holding the GIL; on the "
                   "accelerated path also its share of the capture passes, GIL released)."),
    "media_cpu_s": ("audio_stream_media_callback_cpu_seconds_total", Counter,
                    "CPU time of Python run on media threads (playback callbacks), holding the GIL."),
    "pass_cpu_s": ("audio_stream_loop_thread_pass_cpu_seconds_total", Counter,
                   "Of the loop thread's CPU time, the part spent in capture passes with the GIL released "
                   "(accelerated path)."),
    "pass_wall_s": ("audio_stream_loop_thread_pass_wait_seconds_total", Counter,
                    "Wall time the loop thread spent in capture passes, GIL released, its worker threads' "
                    "share included (accelerated path)."),
}


def scrape(live, finishing, lag_peak_s=0.0, gil=None, version=None):
    """The families made from the streams of the moment (`live`, `finishing`: lists of streams),
    the capture clock's recent peak lateness and service.gil_stats()."""
    states = {(st, p): 0 for st in STATES for p in PROTOCOLS}
    playback = {(st,): 0 for st in PLAYBACK_STATES}
    r = _retired
    sent_bytes, sent_messages, dropped_ms, reconnects = r.sent_bytes, r.sent_messages, r.dropped_ms, r.reconnects
    up_sum = up_max = play_sum = play_max = 0
    for group in (live, finishing):
        for s in group:
            key = (s.state, s.settings.protocol)
            states[key] = states.get(key, 0) + 1
            b, m, d, n = _totals(s)
            sent_bytes += b
            sent_messages += m
            dropped_ms += d
            reconnects += n
            q = s.outbox.queued_ms
            up_sum += q
            if q > up_max:
                up_max = q
            player = s.player
            queue = player.queue
            if queue is None:
                playback[("off",)] += 1
                continue
            q = queue.queued_ms
            play_sum += q
            if q > play_max:
                play_max = q
            playback[("paused" if queue.paused else "playing" if player.playing else "idle",)] += 1
    out = [
        _gauge("audio_stream_streams", "Streams by state and protocol (live ones, and those still closing).",
               None, ("state", "protocol"), states),
        _counter("audio_stream_sent_bytes_total", "Payload sent to servers: audio and text, before WebSocket "
                 "framing (Twilio mode: before base64).", sent_bytes),
        _counter("audio_stream_sent_messages_total", "Audio chunks and text messages sent to servers.", sent_messages),
        _counter("audio_stream_caller_audio_dropped_seconds_total", "The call's audio dropped because the server "
                 "was not connected or did not keep up (the outbox's oldest audio).", dropped_ms / 1000.0),
        _counter("audio_stream_reconnects_total", "Successful reconnections after a lost connection.", reconnects),
        _gauge("audio_stream_uplink_queued_seconds", "The call's audio waiting to be sent, all streams together.",
               up_sum / 1000.0),
        _gauge("audio_stream_uplink_queued_max_seconds", "The most audio waiting to be sent on one stream.",
               up_max / 1000.0),
        _gauge("audio_stream_playback_streams", "Streams by playback state (off: STREAM_PLAYBACK=false or "
               "another stream of the call plays).", None, ("state",), playback),
        _gauge("audio_stream_playback_queued_seconds", "The server's audio queued to play, all streams together.",
               play_sum / 1000.0),
        _gauge("audio_stream_playback_queued_max_seconds", "The most server audio queued on one stream.",
               play_max / 1000.0),
        _gauge("audio_stream_capture_lateness_peak_seconds", "How late the latest-running tick of the capture "
               "clock over the last 10 s ran.", lag_peak_s),
    ]
    gil = gil or {}
    for key, (name, kind, help) in GIL_KEYS.items():
        value = gil.get(key)
        if value is not None:
            out.append(_counter(name, help, value) if kind is Counter else _gauge(name, help, value))
    path = gil.get("path")
    if path is not None:
        out.append(_gauge("audio_stream_capture_path_info", "Which capture path runs (accelerated: the compiled "
                          "accelerator; python: the pure-Python path).", None, ("path",), {(str(path),): 1}))
    if version is not None:
        out.append(_gauge("audio_stream_build_info", "The version of audio_stream running.", None, ("version",),
                          {(version,): 1}))
    return out


def exposition(live, finishing, lag_peak_s=0.0, gil=None, version=None):
    """The text of one scrape: the process's counters and histograms, then the state of the moment."""
    return render(REGISTRY.families() + scrape(live, finishing, lag_peak_s, gil, version))
