"""Watch audio_stream in a running FreeSWITCH: one row per stream, refreshed every second.

Asks the switch `python audio_stream status` over its event socket, like `status`, and shows per
stream its state, mix and rate, kB/s sent, caller audio dropped, the server's audio queued to
play, reconnections and age; on top the totals and how late the capture clock runs (the loop
thread's load). On a terminal the view redraws in place (plain ANSI codes: works over SSH, no
curses); when the output is not a terminal it prints one block per refresh. Ctrl-C quits.

When the switch goes away it says so and tries again every interval until the switch is back.
Exit status: 0 after Ctrl-C or --count refreshes, 2 when no switch answers at the start.

The event socket comes from --esl / --password, else AUDIO_STREAM_ESL (host:port) and
AUDIO_STREAM_ESL_PASSWORD, else 127.0.0.1:8021 with FreeSWITCH's default password.
"""
import argparse
import json
import os
import shutil
import sys
import time

from . import cli, esl, view
from .status import add_esl_options, connect_error

PROG = "python -m audio_stream top"
COMMAND = "python audio_stream status"

ENTER, LEAVE = "\x1b[?1049h\x1b[?25l", "\x1b[?25h\x1b[?1049l"   # the alternate screen, the cursor
HOME, CLEAR_LINE, CLEAR_BELOW = "\x1b[H", "\x1b[K", "\x1b[J"


def count(text):
    try:
        n = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError("must be an integer, got '%s'" % text) from None
    if n < 0:
        raise argparse.ArgumentTypeError("must be 0 or more, got %s" % text)
    return n


class Screen:
    """A terminal redrawn in place (the alternate screen, restored on close), or plain blocks."""

    def __init__(self, out, tty):
        self.out = out
        self.tty = tty
        self.last = None
        if tty:
            out.write(ENTER)
            out.flush()

    def size(self):
        if not self.tty:
            return 160, 10000
        cols, lines = shutil.get_terminal_size((100, 24))
        return max(20, cols), max(5, lines)

    def show(self, lines, always=True):
        """Draw a frame. Plain output with `always=False` prints it only when it changed."""
        if self.tty:
            self.out.write(HOME + (CLEAR_LINE + "\r\n").join(lines) + CLEAR_LINE + CLEAR_BELOW)
        elif always or lines[1:] != self.last:       # the first line has the clock
            self.out.write("\n".join(lines) + "\n\n")
        self.last = lines[1:]
        self.out.flush()

    def close(self):
        if self.tty:
            self.out.write(LEAVE)
            self.out.flush()


class Top:
    """The state between frames: the connection, the previous document, the notice."""

    def __init__(self, host, port, password, interval, conn):
        self.host, self.port, self.password = host, port, password
        self.interval = interval
        self.conn = conn
        self.prev = None              # (monotonic time, document)
        self.version = None           # audio_stream's, from the last document
        self.notice = None
        self.notice_until = None      # a passing notice (the switch is back) goes away then
        self.lost_at = None

    @property
    def where(self):
        return "%s:%d" % (self.host, self.port)

    def _lost(self, why):
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        self.prev = None
        self.notice_until = None
        if self.lost_at is None:
            self.lost_at = time.time()
        self.notice = "the switch at %s went away at %s; trying again every %g s (%s)" % (
            self.where, time.strftime("%H:%M:%S", time.localtime(self.lost_at)), self.interval, why)

    def fetch(self):
        """The switch's status document now, or None (then `notice` says why)."""
        try:
            if self.conn is None:
                self.conn = esl.connect(self.host, self.port, self.password, timeout=5.0)
                if self.lost_at is not None:
                    self.notice = "the switch is back (it went away at %s)" % time.strftime(
                        "%H:%M:%S", time.localtime(self.lost_at))
                    self.notice_until = time.monotonic() + max(5.0, 3 * self.interval)
                self.lost_at = None
            reply = self.conn.api(COMMAND, timeout=max(5.0, 3 * self.interval))
        except esl.ESLError as e:
            self._lost(str(e))
            return None
        except OSError as e:
            self._lost(cli.describe_os_error(e) if e.strerror else (str(e) or e.__class__.__name__))
            return None
        try:
            doc = json.loads(reply)
            if not isinstance(doc, dict):
                raise ValueError(reply)
        except ValueError:
            self.prev = None
            self.notice = "'%s' answered: %s" % (COMMAND, (reply.splitlines() or ["nothing"])[0])
            return None
        if self.notice_until is None or time.monotonic() >= self.notice_until:
            self.notice = self.notice_until = None
        return doc

    def frame(self, width, height, color, now=None):
        doc = self.fetch()
        t = time.monotonic()
        per_second = cpu = None
        if doc is not None:
            prev_t, prev = self.prev if self.prev else (None, None)
            dt = t - prev_t if prev_t is not None else 0.0
            per_second = view.rates(prev, doc, dt)
            if prev is not None and dt > 0:
                a, b = prev.get("totals", {}).get("loop_cpu_s"), doc.get("totals", {}).get("loop_cpu_s")
                if a is not None and b is not None and b >= a:
                    cpu = (b - a) / dt
            self.prev = (t, doc)
            self.version = doc.get("version")
        return view.render_top(doc, per_second, width, height, self.where, self.interval, cpu, self.notice,
                               color, now, self.version)


def main(argv=None, prog=PROG):
    p = cli.parser(prog, __doc__)
    add_esl_options(p)
    p.add_argument("--interval", type=cli.seconds, default=1.0, help="seconds between refreshes")
    p.add_argument("--count", type=count, default=0, help="stop after this many refreshes (0: until Ctrl-C)")
    p.add_argument("--no-color", action="store_true", help="no colours (also when NO_COLOR is set)")
    a = p.parse_args(argv)
    host, port = a.esl
    try:
        conn = esl.connect(host, port, a.password)
    except (esl.ESLError, OSError) as e:
        raise connect_error(e, host, port)
    out = sys.stdout
    tty = out.isatty()
    color = tty and not a.no_color and not os.environ.get("NO_COLOR")
    top = Top(host, port, a.password, a.interval, conn)
    screen = Screen(out, tty)
    shown = 0
    try:
        next_at = time.monotonic()
        while True:
            width, height = screen.size()
            lines = top.frame(width, height, color)
            screen.show(lines, always=top.conn is not None)
            shown += 1
            if a.count and shown >= a.count:
                break
            next_at += a.interval
            delay = next_at - time.monotonic()
            if delay < 0:                     # a slow switch: no burst of frames to catch up
                next_at, delay = time.monotonic(), 0
            time.sleep(delay)
    except KeyboardInterrupt:
        pass
    finally:
        screen.close()
        if top.conn is not None:
            top.conn.close()
    return 0


if __name__ == "__main__":
    cli.run(main)
