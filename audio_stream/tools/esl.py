"""A minimal blocking client for FreeSWITCH's event socket (mod_event_socket, inbound mode).

    with esl.Connection("127.0.0.1", 8021, "ClueCon") as c:
        print(c.api("python audio_stream"))

`api(cmd)` sends `api <cmd>` and returns the reply body. `console_execute=True` sends the
command the way fs_cli does: FreeSWITCH then expands aliases (and splits on ";;") before it
runs the command, and prefixes the reply with an "Expand Alias" line when an alias matched.
"""
import socket
import threading

DEFAULT_HOST, DEFAULT_PORT, DEFAULT_PASSWORD = "127.0.0.1", 8021, "ClueCon"


class ESLError(Exception):
    pass


def read_headers(f):
    headers = {}
    while True:
        line = f.readline()
        if not line:
            raise ESLError("the event socket closed the connection")
        line = line.decode("utf-8", "replace").rstrip("\n")
        if not line:
            if headers:
                return headers
            continue
        k, _, v = line.partition(": ")
        headers[k] = v


def read_message(f):
    """One message: (headers, body text)."""
    headers = read_headers(f)
    body = b""
    n = int(headers.get("Content-Length", "0") or 0)
    if n:
        body = f.read(n)
    return headers, body.decode("utf-8", "replace")


class Connection:
    def __init__(self, host=DEFAULT_HOST, port=DEFAULT_PORT, password=DEFAULT_PASSWORD, timeout=5.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.f = self.sock.makefile("rb")
        self.lock = threading.Lock()
        try:
            h, _ = read_message(self.f)
            if h.get("Content-Type") != "auth/request":
                raise ESLError("%s:%d is not a FreeSWITCH event socket (it said %r)" % (host, port, h))
            self.send("auth %s" % password)
            h, _ = read_message(self.f)
            if not h.get("Reply-Text", "").startswith("+OK"):
                raise ESLError("the event socket at %s:%d refused the password (%s)"
                               % (host, port, h.get("Reply-Text", "no reply")))
        except BaseException:
            self.close()
            raise

    def send(self, cmd):
        self.sock.sendall((cmd + "\n\n").encode())

    def api(self, cmd, timeout=30.0, console_execute=False):
        """The body of the reply to `api <cmd>` (stripped of surrounding white space)."""
        with self.lock:
            self.sock.settimeout(timeout)
            self.send("api " + cmd + ("\nconsole_execute: true" if console_execute else ""))
            while True:
                h, body = read_message(self.f)
                if h.get("Content-Type") == "api/response":
                    return body.strip()

    def close(self):
        # shut the socket down first: a thread blocked reading self.f (an event listener) holds
        # the file's lock, and closing the file before that read returns would wait forever
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        for thing in (self.sock, self.f):
            try:
                thing.close()
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def connect(host=DEFAULT_HOST, port=DEFAULT_PORT, password=DEFAULT_PASSWORD, timeout=5.0):
    """A Connection, or ESLError saying in one line why there is none."""
    try:
        return Connection(host, port, password, timeout)
    except OSError as e:
        raise ESLError("no FreeSWITCH event socket at %s:%d: %s" % (host, port, e.strerror or e)) from None


def reachable(host=DEFAULT_HOST, port=DEFAULT_PORT, password=DEFAULT_PASSWORD):
    try:
        c = Connection(host, port, password, timeout=2.0)
    except (OSError, ESLError):
        return False
    c.close()
    return True
