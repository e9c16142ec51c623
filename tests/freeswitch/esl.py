"""The event socket for the real-switch tests: `api` commands through the package's client
(audio_stream/tools/esl.py), and a second connection subscribed to events (plain format), read by
a thread into a list that tests can wait on.
"""
import threading
import time
from urllib.parse import unquote

from audio_stream.tools.esl import Connection, ESLError, reachable  # noqa: F401 (used by conftest)
from audio_stream.tools.esl import read_message as _read_message


class EventListener:
    """Collects CUSTOM events of the given subclasses (plain format) on a thread. With
    `subscribe="log 7", content_type="log/data"`: the switch's log lines instead, in `bodies`."""

    def __init__(self, subclasses, host="127.0.0.1", port=8021, password="ClueCon", subscribe=None,
                 content_type="text/event-plain"):
        self.conn = Connection(host, port, password)
        self.events = []
        self.bodies = []
        self.content_type = content_type
        self.cond = threading.Condition()
        self.conn.send(subscribe or "event plain CUSTOM " + " ".join(subclasses))
        h, _ = _read_message(self.conn.f)
        if not h.get("Reply-Text", "").startswith("+OK"):
            raise ESLError("subscribe failed: %r" % h)
        self.conn.sock.settimeout(None)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            while True:
                h, body = _read_message(self.conn.f)
                if h.get("Content-Type") != self.content_type:
                    continue
                if self.content_type != "text/event-plain":
                    self.bodies.append(body)
                    continue
                lines = body.split("\n")
                ev = {}
                i = 0
                while i < len(lines) and lines[i]:
                    k, _, v = lines[i].partition(": ")
                    ev[k] = unquote(v)
                    i += 1
                ev["_body"] = "\n".join(lines[i + 1:]) if int(ev.get("Content-Length", "0") or 0) else None
                ev["_received"] = time.time()
                with self.cond:
                    self.events.append(ev)
                    self.cond.notify_all()
        except (ESLError, OSError, ValueError):
            pass

    def wait(self, subclass, uuid=None, timeout=10.0, predicate=None):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for ev in self.events:
                    if ev.get("Event-Subclass") != subclass:
                        continue
                    if uuid and ev.get("Unique-ID") != uuid:
                        continue
                    if predicate and not predicate(ev):
                        continue
                    return ev
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)

    def all(self, subclass=None, uuid=None):
        with self.cond:
            return [e for e in self.events if (subclass is None or e.get("Event-Subclass") == subclass)
                    and (uuid is None or e.get("Unique-ID") == uuid)]

    def close(self):
        self.conn.close()
