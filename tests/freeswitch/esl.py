"""A minimal blocking ESL (event socket) client for the real-switch tests.

Two connections are used: one for `api` commands, one subscribed to events (plain format),
read by a thread into a list that tests can wait on.
"""
import socket
import threading
import time
from urllib.parse import unquote


class ESLError(Exception):
    pass


def _read_headers(f):
    headers = {}
    while True:
        line = f.readline()
        if not line:
            raise ESLError("event socket closed")
        line = line.decode("utf-8", "replace").rstrip("\n")
        if not line:
            if headers:
                return headers
            continue
        k, _, v = line.partition(": ")
        headers[k] = v


def _read_message(f):
    headers = _read_headers(f)
    body = b""
    n = int(headers.get("Content-Length", "0") or 0)
    if n:
        body = f.read(n)
    return headers, body.decode("utf-8", "replace")


class Connection:
    def __init__(self, host="127.0.0.1", port=8021, password="ClueCon", timeout=5.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.f = self.sock.makefile("rb")
        self.lock = threading.Lock()
        h, _ = _read_message(self.f)
        if h.get("Content-Type") != "auth/request":
            raise ESLError("unexpected greeting %r" % h)
        self._send("auth %s" % password)
        h, _ = _read_message(self.f)
        if not h.get("Reply-Text", "").startswith("+OK"):
            raise ESLError("auth failed: %r" % h)

    def _send(self, cmd):
        self.sock.sendall((cmd + "\n\n").encode())

    def api(self, cmd, timeout=30.0):
        with self.lock:
            self.sock.settimeout(timeout)
            self._send("api " + cmd)
            while True:
                h, body = _read_message(self.f)
                if h.get("Content-Type") == "api/response":
                    return body.strip()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class EventListener:
    """Collects CUSTOM events of the given subclasses (plain format) on a thread."""

    def __init__(self, subclasses, host="127.0.0.1", port=8021, password="ClueCon"):
        self.conn = Connection(host, port, password)
        self.events = []
        self.cond = threading.Condition()
        self.conn._send("event plain CUSTOM " + " ".join(subclasses))
        h, _ = _read_message(self.conn.f)
        if not h.get("Reply-Text", "").startswith("+OK"):
            raise ESLError("event subscribe failed: %r" % h)
        self.conn.sock.settimeout(None)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            while True:
                h, body = _read_message(self.conn.f)
                if h.get("Content-Type") != "text/event-plain":
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


def reachable(host="127.0.0.1", port=8021, password="ClueCon"):
    try:
        c = Connection(host, port, password, timeout=2.0)
    except (OSError, ESLError):
        return False
    c.close()
    return True
