"""What one stream tells the world: log lines and mod_audio_stream::* events, with their rate
limits (loop thread; `log` from any thread). Pure apart from the backend it logs and fires through.
"""
import time

from . import connection, metrics, protocol
from .policy import RateLimit, Strikes

PREFIX = "mod_audio_stream::"
JSON_EVENTS_PER_S = 200    # mod_audio_stream::json events per stream (burst: 2 s worth)
BAD_REPORTS_PER_S = 5      # error events/logs/replies for unusable messages (burst: 20)
BAD_LIMIT = (100, 10.0)    # more unusable messages than this within that many s: close 1008
EVENTS_PER_S = 200         # every event of one stream together (json, mark, play, dtmf, ...; burst 2 s)
LOGS_PER_S = 50            # log lines of one stream (burst 2 s)
SUMMARY_EVERY_S = 5.0      # "... not fired/written" at most this often
# the connection's own events: few by construction, never dropped
ESSENTIAL = frozenset(("connect", "disconnect", "reconnecting", "reconnected", "buffer_overrun",
                       "buffer_recovered"))

# what bad() says to do
REPORT, QUIET, STRIKE_OUT = "report", "quiet", "strike_out"


class StreamEvents:
    def __init__(self, be, uuid, name, settings, url):
        self.be = be
        self.uuid = uuid
        self.name = name
        self.settings = settings
        self.url = connection.redact(url)     # what logs and events show of the URL
        self._who = uuid if name == "default" else "%s/%s" % (uuid, name)
        self._json_limit = RateLimit(JSON_EVENTS_PER_S, 2 * JSON_EVENTS_PER_S, metrics.suppressed("json_event"))
        self._bad_limit = RateLimit(BAD_REPORTS_PER_S, 20, metrics.suppressed("bad_message_report"))
        self._bad_strikes = Strikes(*BAD_LIMIT)
        self._text_drop_limit = RateLimit(1, 5, metrics.suppressed("text_refused_log"))
        self._json_warn = RateLimit(1.0 / SUMMARY_EVERY_S, 1)
        self._json_missed = 0
        self._event_limit = RateLimit(EVENTS_PER_S, 2 * EVENTS_PER_S, metrics.suppressed("event"))
        self._log_limit = RateLimit(LOGS_PER_S, 2 * LOGS_PER_S, metrics.suppressed("log_line"))
        self._summary = RateLimit(1.0 / SUMMARY_EVERY_S, 1)
        self.last_error = None
        self.call_over = False                # hung up: nothing more is fired as json for it

    def log(self, level, message):
        """One log line, at most LOGS_PER_S a second (the rest counted, summed up later)."""
        now = time.monotonic()
        if not self._log_limit.allow(now):
            return
        self._summarize(now)
        self.be.log(level, message, self._who)

    def fire(self, name, body, essential=False):
        """One mod_audio_stream::<name> event; all but the connection's own at most
        EVENTS_PER_S a second together."""
        if name in ("error", "disconnect"):
            self.last_error = body
        now = time.monotonic()
        if not (essential or name in ESSENTIAL) and not self._event_limit.allow(now):
            return
        self._summarize(now)
        try:
            self.be.fire(self.uuid, PREFIX + name, body, {"Stream-Name": self.name})
        except Exception as e:  # an event must never take the stream down
            self.log("ERR", "cannot fire %s: %s" % (name, e))

    def _summarize(self, now):
        if not (self._event_limit.suppressed or self._log_limit.suppressed) or not self._summary.allow(now):
            return
        events, lines = self._event_limit.take_suppressed(), self._log_limit.take_suppressed()
        self.be.log("WARNING", "%d events not fired and %d log lines not written: more than %d events or %d "
                    "log lines a second from this stream" % (events, lines, EVENTS_PER_S, LOGS_PER_S), self._who)

    # ---- the server's messages ----------------------------------------------------------------
    def json(self, text):
        """A text we do not act on: mod_audio_stream::json, at most JSON_EVENTS_PER_S, and none
        once the call has hung up."""
        now = time.monotonic()
        if self.call_over or not self._json_limit.allow(now):
            return
        self._json_missed += self._json_limit.take_suppressed()
        if self._json_missed and self._json_warn.allow(now):     # limited by itself: not by LOGS_PER_S
            self.be.log("WARNING", "%d messages from the server were not fired as mod_audio_stream::json: more "
                        "than %d per second" % (self._json_missed, JSON_EVENTS_PER_S), self._who)
            self._json_missed = 0
        if not self.settings.suppress_log:
            self.log("DEBUG", "response: %s" % text[:2000])
        self.fire("json", text)

    def bad(self, reason):
        """A message from the server that cannot be used. Returns STRIKE_OUT (the server keeps
        sending them: close it), REPORT (logged and fired here; the caller may answer the
        server) or QUIET (over the rate limit)."""
        now = time.monotonic()
        if self._bad_strikes.strike(now):
            return STRIKE_OUT
        if not self._bad_limit.allow(now):
            return QUIET
        missed = self._bad_limit.take_suppressed()
        if missed:
            reason = "%s (and %d more not reported)" % (reason, missed)
        self.log("ERR", reason)
        self.fire("error", protocol.error_body(protocol.ERR_PROTOCOL, reason))
        return REPORT

    def strike_out_reason(self, reason):
        return "closed: more than %d unusable messages from the server within %g s (last: %s)" % (
            self._bad_strikes.limit, self._bad_strikes.window, reason)

    def text_dropped(self, waiting, size):
        if self._text_drop_limit.allow(time.monotonic()):
            missed = self._text_drop_limit.take_suppressed()
            self.log("ERR", "%d bytes of text already wait for the server, which does not read: text of "
                     "%d bytes dropped%s" % (waiting, size, " (and %d more)" % missed if missed else ""))

    # ---- the connection -----------------------------------------------------------------------
    def overruns(self, outbox):
        for kind, ms, total in outbox.take_events():
            if kind == "overrun":
                self.log("WARNING", "the server does not keep up (or is not connected): dropping the oldest "
                         "audio, %d ms so far" % total)
                self.fire("buffer_overrun", protocol.dumps({"dropped_ms": ms, "total_dropped_ms": total}))
            else:
                self.log("NOTICE", "sending caught up after dropping %d ms of audio" % ms)
                self.fire("buffer_recovered", protocol.dumps({"dropped_ms": ms, "total_dropped_ms": total}))

    def connected(self):
        self.log("INFO", "connected to %s" % self.url)
        self.fire("connect", protocol.connect_body())

    def reconnecting(self, attempt, delay, reason):
        # the reason says what happened ("connection lost: …", "cannot connect to …"), once
        self.log("WARNING", "%s: reconnecting in %d ms, attempt %d" % (reason, delay * 1000, attempt))
        self.fire("reconnecting", protocol.dumps({"attempt": attempt, "delay_ms": int(delay * 1000), "reason": reason}))

    def reconnected(self, attempt, dropped_ms):
        self.log("NOTICE", "reconnected to %s (attempt %d); %d ms of audio dropped meanwhile" % (self.url, attempt,
                                                                                                dropped_ms))
        self.fire("reconnected", protocol.dumps({"attempt": attempt, "dropped_ms": dropped_ms}))

    def lost(self, closed, code, reason, error_code):
        if closed:
            self.log("INFO", "server closed the connection: %s %s" % (code, reason))
            self.fire("disconnect", protocol.disconnect_body(code, reason))
        else:
            self.log("ERR", reason)
            self.fire("error", protocol.error_body(error_code, reason), essential=True)

    def error(self, code, message):
        self.log("ERR", "%s (code %d)" % (message, code))
        self.fire("error", protocol.error_body(code, message), essential=True)

    def failed(self, e):
        self.log("ERR", "stream failed: %r" % (e,))
        self.fire("error", protocol.error_body(protocol.ERR_IO, str(e) or repr(e)), essential=True)
