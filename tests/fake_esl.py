"""A stand-in for FreeSWITCH's event socket (inbound mode), for the command-line tools' tests:
it authenticates, answers `api <cmd>` from a function, counts connections, and can drop them all
(the switch going away) or refuse new ones."""
import socket
import threading


class FakeESL:
    def __init__(self, answer, password="ClueCon"):
        """`answer(cmd)` returns the body of the reply to `api <cmd>` (called on the server's thread)."""
        self.answer = answer
        self.password = password
        self.srv = socket.socket()
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen()
        self.port = self.srv.getsockname()[1]
        self.conns = []
        self.apis = []
        self.lock = threading.Lock()
        self.down = threading.Event()          # set: new connections are closed at once
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def esl(self):
        return "127.0.0.1:%d" % self.port

    def _accept(self):
        while True:
            try:
                conn, _ = self.srv.accept()
            except OSError:
                return
            if self.down.is_set():
                conn.close()
                continue
            with self.lock:
                self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        try:
            f = conn.makefile("rb")
            conn.sendall(b"Content-Type: auth/request\n\n")
            while True:
                line = f.readline()
                if not line:
                    return
                cmd = line.decode().strip()
                if not cmd:
                    continue
                while f.readline().strip():         # the rest of the command's headers
                    pass
                if cmd.startswith("auth "):
                    ok = cmd[5:] == self.password
                    conn.sendall(b"Content-Type: command/reply\nReply-Text: %s\n\n"
                                 % (b"+OK accepted" if ok else b"-ERR invalid"))
                elif cmd.startswith("api "):
                    with self.lock:
                        self.apis.append(cmd[4:])
                    body = (self.answer(cmd[4:]) + "\n").encode()
                    conn.sendall(b"Content-Type: api/response\nContent-Length: %d\n\n%s" % (len(body), body))
                else:
                    conn.sendall(b"Content-Type: command/reply\nReply-Text: +OK\n\n")
        except OSError:
            pass
        finally:
            conn.close()

    def drop(self):
        """Close every connection and refuse new ones (the switch went away)."""
        self.down.set()
        with self.lock:
            conns, self.conns = self.conns, []
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def up(self):
        self.down.clear()

    def close(self):
        self.drop()
        try:
            self.srv.shutdown(socket.SHUT_RDWR)      # wakes the thread blocked in accept()
        except OSError:
            pass
        self.srv.close()
        self._thread.join(5)
