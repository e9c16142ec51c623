"""`status --pretty` and `top`: the pure rendering (tools/view.py), and the commands against a
stand-in event socket (plain output when not a terminal, ANSI on a pseudo-terminal, Ctrl-C, the
switch going away and coming back)."""
import json
import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from audio_stream.tools import view

from .fake_esl import FakeESL
from .servers import run_cli

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def stream(uuid="0f3c9a7e-1111-2222-3333-444455556666", name="default", **kw):
    s = {"uuid": uuid, "name": name, "url": "ws://bot.example.com/s", "protocol": "audio_stream",
         "state": "streaming", "mix": "mono", "call_rate": 8000, "rate": 16000, "seconds": 75.3,
         "frames_captured": 3765, "messages_sent": 3765, "bytes_sent": 2409600, "dropped_ms": 0, "queued_ms": 0,
         "reconnects": 0, "paused": False, "playback": "idle", "playback_queued_ms": 0, "marks_waiting": 0,
         "frames_played": 0, "last_error": None}
    s.update(kw)
    return s


def doc(*streams, **totals):
    t = {"live": len(streams), "closing": 0, "loop_lag_ms": 3}
    t.update(totals)
    return {"version": "1.2.3", "streams": list(streams), "totals": t}


# ---- rendering -----------------------------------------------------------------------------------

@pytest.mark.parametrize("seconds, text", [(0, "0s"), (59.9, "59s"), (60, "1:00"), (3599, "59:59"),
                                           (3600, "1:00:00"), (90061, "25:01:01"), (None, "0s")])
def test_age(seconds, text):
    assert view.age(seconds) == text


def test_units():
    assert [view.khz(r) for r in (8000, 16000, 44100, None)] == ["8k", "16k", "44.1k", "-"]
    assert [view.size(n) for n in (0, 999, 1000, 2409600, 3.2e9, 7e12)] == \
        ["0 B", "999 B", "1.0 kB", "2.4 MB", "3.2 GB", "7000.0 GB"]


def test_rates_from_the_previous_document_or_the_average():
    a, b = stream(bytes_sent=1000), stream(uuid="b", bytes_sent=5000, seconds=10)
    prev = doc(a)
    cur = doc(stream(bytes_sent=33000), b)
    r = view.rates(prev, cur, 2.0)
    assert r == {(a["uuid"], "default"): 16000.0, ("b", "default"): 500.0}
    assert view.rates(None, doc(stream(bytes_sent=100, seconds=0)), 1.0) == {(a["uuid"], "default"): 0.0}


def test_status_table_rows_and_columns():
    d = doc(stream(), stream(uuid="aa11bb22-x", name="recorder", state="reconnecting", dropped_ms=340, reconnects=2,
                             playback="off", paused=True),
            stream(uuid="cc33", playback="paused", playback_queued_ms=1200, last_error=json.dumps(
                {"status": "error", "message": {"code": 6, "error": "cannot connect to ws://x: refused"}})))
    lines = view.render_status(d, width=200)
    assert lines[0] == "audio_stream 1.2.3: 3 live, 0 closing | sent 7.2 MB | dropped 340 ms | reconnects 2 | " \
        "loop late 3 ms"
    header = lines[1].split()
    assert header == ["STREAM", "STATE", "MIX", "RATE", "SENT", "DROPPED", "PLAYBACK", "RECONN", "AGE", "URL"]
    assert lines[2].split() == ["0f3c9a7e", "streaming", "mono", "16k", "2.4", "MB", "0", "ms", "0", "ms", "0",
                                "1:15", "ws://bot.example.com/s"]
    assert lines[3].startswith("aa11bb22/recorder  reconnecting (paused)  mono")
    assert " 340 ms " in lines[3] and " off " in lines[3]
    assert "1200 ms (paused)" in lines[4]
    assert lines[5] == "cc33 last error: cannot connect to ws://x: refused (code 6)"
    # columns line up: every row's URL starts where the header's does
    at = lines[1].index("URL")
    assert all(line[at:].startswith("ws://") for line in lines[2:5])
    assert view.render_status(doc(), 200) == ["audio_stream 1.2.3: 0 live, 0 closing | sent 0 B | dropped 0 ms | "
                                             "reconnects 0 | loop late 3 ms", "no streams"]


def test_lines_never_exceed_the_width_and_colour_only_when_asked():
    d = doc(*[stream(uuid="%08d" % i, dropped_ms=i * 20) for i in range(5)])
    plain = view.render_status(d, width=60)
    assert all(len(line) <= 60 for line in plain) and not any("\x1b" in line for line in plain)
    assert plain[2] == "00000000  streaming  mono  16k   2.4 MB     0 ms      0 ms"      # cut at 60
    colored = view.render_status(d, width=60, color=True)
    assert any("\x1b[32m" in line for line in colored)           # streaming in green
    assert any("\x1b[31m" in line for line in colored)           # dropped audio in red
    assert [ANSI.sub("", line).rstrip() for line in colored] == plain


def test_top_frame_has_totals_rates_cpu_a_notice_and_fits_the_terminal():
    d = doc(*[stream(uuid="%08d" % i) for i in range(30)], loop_lag_ms=12)
    per_second = {("%08d" % i, "default"): 32000.0 for i in range(30)}
    lines = view.render_top(d, per_second, width=120, height=12, where="127.0.0.1:8021", interval=1.0, cpu_share=0.25,
                            notice="the switch is back", now=0)
    assert len(lines) <= 12
    assert lines[0].startswith("audio_stream 1.2.3 on 127.0.0.1:8021 | ") and lines[0].endswith("every 1 s | Ctrl-C quits")
    assert lines[1] == "30 live, 0 closing | sent 960.0 kB/s | dropped 0 ms | reconnects 0 | loop late 12 ms | loop CPU 25%"
    assert lines[2] == "the switch is back"
    assert lines[3].split()[:5] == ["STREAM", "STATE", "MIX", "RATE", "kB/s"]
    assert lines[4].split()[4] == "32.0"
    assert lines[-1] == "... 23 more streams (a taller terminal shows them)"
    gone = view.render_top(None, None, width=80, height=24, where="h:1", notice="the switch at h:1 went away")
    assert gone[1] == "the switch at h:1 went away" and "STREAM" not in "".join(gone)


# ---- the commands, against a stand-in event socket -----------------------------------------------

class Switch:
    """Answers like a switch with one stream whose bytes_sent grows 16000 per status."""

    def __init__(self):
        self.n = 0
        self.esl = FakeESL(self.answer)

    def answer(self, cmd):
        if cmd == "version":
            return "FreeSWITCH Version 1.10.12-release 64bit"
        if cmd == "module_exists mod_python3":
            return "true"
        if cmd == "python audio_stream":
            return "-USAGE: <uuid> start ..."
        if cmd == "python audio_stream status":
            self.n += 1
            return json.dumps(doc(stream(bytes_sent=16000 * self.n, seconds=self.n), loop_cpu_s=0.1 * self.n))
        return "-ERR unknown"


@pytest.fixture
def switch():
    s = Switch()
    yield s
    s.esl.close()


def test_status_json_is_the_switchs_document_alone(switch):
    code, out, err = run_cli("audio_stream", "status", "--esl", switch.esl.esl)       # not a terminal: JSON
    assert code == 0, err
    assert json.loads(out)["streams"][0]["bytes_sent"] == 16000 and out.count("\n") == 1
    code, out2, err = run_cli("audio_stream", "status", "--json", "--esl", switch.esl.esl)
    assert code == 0 and json.loads(out2)["totals"]["live"] == 1


def test_status_pretty_is_a_table(switch):
    code, out, err = run_cli("audio_stream", "status", "--pretty", "--esl", switch.esl.esl)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "event socket %s: FreeSWITCH Version 1.10.12-release 64bit" % switch.esl.esl
    assert lines[2].startswith("audio_stream 1.2.3: 1 live, 0 closing | sent 16.0 kB")
    assert lines[3].split()[0] == "STREAM" and lines[4].split()[:2] == ["0f3c9a7e", "streaming"]
    code, out, err = run_cli("audio_stream", "status", "--pretty", "--json")
    assert code == 2 and "not allowed with argument" in err


def test_status_json_of_a_switch_without_audio_stream_says_why_on_stderr():
    fake = FakeESL(lambda cmd: {"version": "FreeSWITCH Version 1.10.12", "module_exists mod_python3": "true"}.get(
        cmd, "-ERR no reply"))
    try:
        code, out, err = run_cli("audio_stream", "status", "--json", "--esl", fake.esl)
    finally:
        fake.close()
    assert code == 1 and out == ""
    assert "python audio_stream:" in err and "next: mod_python3 cannot import audio_stream" in err


def test_top_prints_plain_frames_with_rates_when_not_a_terminal(switch):
    code, out, err = run_cli("audio_stream", "top", "--count", "3", "--interval", "0.3", "--esl", switch.esl.esl)
    assert code == 0, err
    assert "\x1b" not in out
    frames = [f for f in out.split("\n\n") if f.strip()]
    assert len(frames) == 3
    for f in frames:
        lines = f.splitlines()
        assert lines[0].startswith("audio_stream 1.2.3 on %s" % switch.esl.esl)
        assert lines[2].split()[:5] == ["STREAM", "STATE", "MIX", "RATE", "kB/s"]
    rows = [f.splitlines()[3].split() for f in frames]
    assert rows[0][:2] == ["0f3c9a7e", "streaming"] and float(rows[0][4]) == 16.0     # the average so far
    assert 30 < float(rows[2][4]) < 80            # 16000 B per 0.3 s
    assert "loop CPU" in frames[2].splitlines()[1]


def test_top_says_when_the_switch_goes_away_and_comes_back(switch):
    real = switch.answer

    def flaky(cmd):
        if cmd == "python audio_stream status" and switch.n == 1:
            switch.n += 1
            switch.esl.drop()                          # this reply never arrives
            threading.Timer(0.5, switch.esl.up).start()
            raise OSError("gone")
        return real(cmd)
    switch.esl.answer = flaky
    code, out, err = run_cli("audio_stream", "top", "--count", "8", "--interval", "0.2", "--esl", switch.esl.esl)
    assert code == 0, err
    assert re.search(r"the switch at %s went away at \d\d:\d\d:\d\d; trying again every 0.2 s \(the event "
                     r"socket closed the connection\)" % switch.esl.esl, out)
    assert out.count("trying again") == 1              # plain output: said once, not every 0.2 s
    assert re.search(r"the switch is back \(it went away at \d\d:\d\d:\d\d\)", out)
    assert "STREAM" in out.split("the switch is back")[1]


def test_top_without_a_switch_says_so_in_one_line():
    with socket.socket() as s:            # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        where = "127.0.0.1:%d" % s.getsockname()[1]
    code, out, err = run_cli("audio_stream", "top", "--esl", where)
    assert code == 2 and "no FreeSWITCH event socket at %s" % where in err and err.count("\n") == 1


def _ctrl_c_as_on_a_terminal():
    """In the child, before exec: SIGINT delivered and handled by default, as in a terminal's
    foreground job, whatever the test run inherited (a run started in the background by a script
    ignores SIGINT; a mask blocking it would be inherited too)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_top_on_a_terminal_redraws_in_place_and_quits_cleanly_on_ctrl_c(switch):
    master, slave = pty.openpty()
    env = dict(os.environ, COLUMNS="100", LINES="20", PYTHONFAULTHANDLER="1")
    proc = subprocess.Popen([sys.executable, "-m", "audio_stream", "top", "--interval", "0.2", "--esl",
                             switch.esl.esl], stdin=slave, stdout=slave, stderr=slave, env=env,
                            preexec_fn=_ctrl_c_as_on_a_terminal)
    os.close(slave)
    out = b""

    def read(until, timeout=10):
        nonlocal out
        deadline = time.monotonic() + timeout
        while until not in out and time.monotonic() < deadline:
            if select.select([master], [], [], 0.1)[0]:
                try:
                    out += os.read(master, 65536)
                except OSError:
                    break
        return until in out
    try:
        assert read(b"0f3c9a7e"), out
        assert read(b"\x1b[H", 3)                     # a second frame: drawn over the first
        proc.send_signal(signal.SIGINT)
        # a terminal keeps reading: drain the pty meanwhile, so that top's last writes never wait
        if not read(b"\x1b[?1049l", 10):
            proc.send_signal(signal.SIGABRT)            # faulthandler: where top is stuck
            read(b"\x00never", 3)
            raise AssertionError("top did not quit on Ctrl-C; its output ends: %r" % out[-3000:])
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    text = out.decode("utf-8", "replace")
    assert text.startswith("\x1b[?1049h\x1b[?25l")   # the alternate screen, the cursor hidden
    assert text.endswith("\x1b[?25h\x1b[?1049l")     # both restored, nothing after
    assert "\x1b[32mstreaming" in text and "Traceback" not in text and "interrupted" not in text
