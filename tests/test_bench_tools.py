"""The pure parts of scripts/bench (bench_tools.py and the command line), and a smoke test of the sink
process. No switch, no network beyond 127.0.0.1."""
import asyncio
import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
import urllib.request

import numpy as np
import pytest

SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts")
sys.path.insert(0, SCRIPTS)

import bench_tools as bt  # noqa: E402


def load_bench():
    loader = importlib.machinery.SourceFileLoader("bench_cli", os.path.join(SCRIPTS, "bench"))
    spec = importlib.util.spec_from_loader("bench_cli", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


# ---- statistics ---------------------------------------------------------------------------------

def test_percentile_and_summary():
    vals = list(range(1, 101))
    assert bt.percentile(vals, 50) == pytest.approx(50.5)
    assert bt.percentile(vals, 99) == pytest.approx(99.01)
    assert bt.percentile([], 50) is None
    s = bt.summary([3.0, 1.0, 2.0], qs=(50, 90))
    assert s["n"] == 3 and s["p50"] == 2.0 and s["min"] == 1.0 and s["max"] == 3.0 and s["mean"] == 2.0
    assert bt.summary([])["p50"] is None and bt.summary([])["n"] == 0


# ---- /proc and CPU arithmetic ---------------------------------------------------------------------

def test_parse_proc_stat_with_awkward_command_name():
    # fields after the name: state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
    # utime stime cutime cstime priority nice threads itrealvalue starttime ...
    text = "4242 (free) sw (x)) S 1 2 3 4 5 6 7 8 9 10 1500 250 11 12 20 0 40 0 98765 1000 200\n"
    ticks, start = bt.parse_proc_stat(text)
    assert ticks == 1750
    assert start == 98765


def test_parse_vmrss():
    text = "Name:\tfreeswitch\nVmPeak:\t  900 kB\nVmRSS:\t  123456 kB\nThreads:\t40\n"
    assert bt.parse_vmrss_kb(text) == 123456
    assert bt.parse_vmrss_kb("Name:\tzombie\n") is None


def test_cpu_percent_and_per_stream():
    # 150 ticks at 100 Hz = 1.5 s of CPU over a 10 s window: 15 % of one core
    assert bt.cpu_percent(1000, 1150, 5.0, 15.0, 100) == pytest.approx(15.0)
    with pytest.raises(ValueError):
        bt.cpu_percent(0, 1, 3.0, 3.0, 100)
    base = bt.baseline_for([4.0, 5.0])
    assert base == 4.5
    assert bt.baseline_for([None, 6.0]) == 6.0
    assert bt.baseline_for([None]) is None
    # 50 streams took the switch from 4.5 % to 79.5 %: 1.5 % of a core each
    assert bt.per_stream(79.5, base, 50) == pytest.approx(1.5)
    assert bt.per_stream(None, base, 50) is None
    assert bt.per_stream(10.0, 1.0, 0) is None
    assert bt.ratio(1.46, 0.34) == pytest.approx(4.294, abs=1e-3)
    assert bt.ratio(1.0, 0.0) is None


# ---- loss and gaps ------------------------------------------------------------------------------

def msgs(start, n, every, size):
    return [size] * n, [start + every * (i + 1) for i in range(n)]


def test_stream_loss_complete_stream():
    # 10 s of 16 kHz mono in 20 ms messages of 640 bytes
    sizes, times = msgs(100.0, 500, 0.02, 640)
    l = bt.stream_loss(sizes, times, 100.0, 110.0, 16000, 1)
    assert l.expected_bytes == 320000 and l.received_bytes == 320000
    assert l.missing_ms == 0 and l.extra_ms == 0
    assert l.max_gap_ms == pytest.approx(20.0)


def test_stream_loss_missing_audio_and_gap():
    sizes, times = msgs(0.0, 500, 0.02, 640)
    # 50 messages (1 s) never arrived, and the rest came late: a 1.02 s gap after message 100
    del sizes[100:150]
    times = times[:100] + times[150:]
    l = bt.stream_loss(sizes, times, 0.0, 10.0, 16000, 1)
    assert l.missing_ms == pytest.approx(1000.0)
    assert l.max_gap_ms == pytest.approx(1020.0)
    assert l.max_gap_at == pytest.approx(3.02)


def test_stream_loss_extra_and_stereo():
    sizes, times = msgs(0.0, 100, 0.02, 1280)      # stereo 16 kHz: 1280 bytes per 20 ms
    l = bt.stream_loss(sizes, times, 0.5, 2.0, 16000, 2)
    assert l.missing_ms == 0 and l.extra_ms == pytest.approx(500.0)
    empty = bt.stream_loss([], [], 0.0, 2.0, 8000, 1)
    assert empty.missing_ms == pytest.approx(2000.0) and empty.max_gap_ms == 0 and empty.max_gap_at is None


def test_loss_summary():
    ok = bt.stream_loss(*msgs(0.0, 500, 0.02, 640), 0.0, 10.0, 16000, 1)
    sizes, times = msgs(0.0, 450, 0.02, 640)
    lossy = bt.stream_loss(sizes, times, 0.0, 10.0, 16000, 1)
    tol = bt.loss_tolerance_ms(20)
    assert tol == 40.0
    s = bt.loss_summary({"a": ok, "b": lossy}, tol)
    assert s["loss_pct"] == pytest.approx(5.0)
    assert s["worst_stream"] == "b" and s["worst_missing_ms"] == pytest.approx(1000.0)
    assert s["lossy_streams"] == 1 and not s["zero_loss"]
    assert bt.loss_summary({"a": ok}, tol)["zero_loss"]
    assert not bt.loss_summary({"a": ok}, tol, failed_starts=1)["zero_loss"]
    assert not bt.loss_summary({}, tol)["zero_loss"]
    # within tolerance: one 20 ms frame short still counts as lossless
    short = bt.stream_loss(*msgs(0.0, 499, 0.02, 640), 0.0, 10.0, 16000, 1)
    assert bt.loss_summary({"a": short}, tol)["zero_loss"]


# ---- alignment by content -----------------------------------------------------------------------

def noise(n, seed=3):
    return np.random.default_rng(seed).integers(-8000, 8000, n).astype("<i2")


def as_stream(samples, start, per_msg, t_of_last):
    """Split samples[start:] into messages of per_msg samples, timed by t_of_last(global index of the
    message's last sample)."""
    data = samples[start:]
    n = len(data) // per_msg
    data = data[:n * per_msg]
    sizes = [per_msg * 2] * n
    times = [t_of_last(start + (i + 1) * per_msg - 1) for i in range(n)]
    return data.tobytes(), sizes, times


def frame_clock(t0=50.0):
    # the reference (C module) sends frame k (samples 160k..160k+159) at t0 + 0.02 (k + 1)
    return lambda last: t0 + 0.02 * (last // 160 + 1)


def test_align_latency_constant_delay():
    sig = noise(160 * 500)
    clock = frame_clock()
    ref = as_stream(sig, 160 * 3, 160, lambda last: clock(last) + 0.0005)
    # ours starts 10 frames later, sends 2 frames per message, 7 ms after the reference
    ours = as_stream(sig, 160 * 13, 320, lambda last: clock(last) + 0.0075)
    al = bt.align_latency(*ours, *ref)
    assert al.matched == len(ours[1]) and al.unmatched == 0 and al.ambiguous == 0
    assert np.allclose(al.latencies_ms, 7.0)


def test_align_latency_ours_starts_first_and_reference_loses_frames():
    sig = noise(160 * 400)
    clock = frame_clock()
    ref_data, ref_sizes, ref_times = as_stream(sig, 160 * 20, 160, clock)
    # the reference loses frames 100..104 (a gap in its stream)
    cut0, cut1 = (100 - 20) * 320, (105 - 20) * 320
    ref_data = ref_data[:cut0] + ref_data[cut1:]
    ref_sizes = ref_sizes[:80] + ref_sizes[85:]
    ref_times = ref_times[:80] + ref_times[85:]
    ours = as_stream(sig, 0, 160, lambda last: clock(last) + 0.003)
    al = bt.align_latency(*ours, ref_data, ref_sizes, ref_times)
    # frames 0..19 were never in the reference, nor were 100..104
    assert al.unmatched == 20 + 5
    assert al.matched == 400 - 25
    assert al.realigned >= 1
    assert np.allclose(al.latencies_ms, 3.0)


def test_align_latency_message_spanning_reference_messages():
    """A message of ours whose last sample is in the middle of a reference message."""
    sig = noise(8000)
    ref = as_stream(sig, 0, 160, frame_clock())
    ours = as_stream(sig, 80, 160, lambda last: frame_clock()(last) + 0.002)
    al = bt.align_latency(*ours, *ref)
    assert al.matched == len(ours[1])
    assert np.allclose(al.latencies_ms, 2.0)


def test_align_latency_periodic_signal_is_ambiguous():
    tone = (8000 * np.sin(2 * np.pi * 400 * np.arange(16000) / 8000)).astype("<i2")   # period 20 samples
    ref = as_stream(tone, 0, 160, frame_clock())
    ours = as_stream(tone, 160, 160, frame_clock())
    al = bt.align_latency(*ours, *ref)
    assert al.matched == 0 and al.ambiguous == len(ours[1])


def test_inter_arrival():
    assert bt.inter_arrival_ms([1.0, 1.02, 1.05]) == pytest.approx([20.0, 30.0])
    assert bt.inter_arrival_ms([1.0]) == []


# ---- the simulator's clock ----------------------------------------------------------------------

def test_sim_tone_matches_the_formula():
    x = bt.sim_tone(8000, 97.0, 8000, 8000)
    t = np.arange(8000)
    want = np.rint(8000 * np.sin(2 * np.pi * 97.0 * t / 8000))
    assert np.max(np.abs(x.astype(np.int32) - want)) <= 1
    assert x[0] == 0


def test_first_frame_index_picks_the_matching_frame():
    ref = bt.sim_tone(160 * 60, 97.0, 8000, 8000)
    first = ref[160 * 17:160 * 18]
    assert bt.first_frame_index(first, ref, range(14, 20), 160) == 17
    # off by one LSB still matches (libm differences); a wrong window does not
    assert bt.first_frame_index(first.astype(np.int32) + 1, ref, range(14, 20), 160) == 17
    assert bt.first_frame_index(first, ref, range(20, 25), 160) is None
    assert bt.first_frame_index(first, ref, [-1], 160) is None


def test_t0_estimate_and_sim_latencies():
    period = 0.02
    true_t0 = 100.0
    # ticks seen at various instants, each a little after the tick ran
    obs = [(true_t0 + k * period + late, k) for k, late in ((1, 0.004), (2, 0.0003), (7, 0.011), (9, 0.0009))]
    t0 = bt.t0_estimate(99.9995, obs, period)
    assert t0 == pytest.approx(true_t0 + 0.0003)
    assert bt.t0_estimate(100.5, obs, period) == 100.5        # never before the channel was started
    assert bt.t0_estimate(100.0, [], period) == 100.0
    # a stream whose first sample is frame 5; two messages of 2 frames (640 bytes at 8 kHz mono)
    # arriving 3 ms after the tick of their last frame (frames 6 and 8, ticks 7 and 9)
    times = [true_t0 + 7 * period + 0.003, true_t0 + 9 * period + 0.003]
    lat = bt.sim_latencies([640, 640], times, 5, true_t0, period, 160)
    assert lat == pytest.approx([3.0, 3.0])


# ---- sweep --------------------------------------------------------------------------------------

def test_parse_sweep():
    assert bt.parse_sweep("50,100") == [50, 100]
    assert bt.parse_sweep("50,100,200,300,...", step=100, maximum=500) == [50, 100, 200, 300, 400, 500]
    assert bt.parse_sweep("", step=100, maximum=400) == [50, 100, 200, 300, 400]
    assert bt.parse_sweep("10,20,…", step=10, maximum=40) == [10, 20, 30, 40]
    for bad in ("100,50", "a,b", "0,10"):
        with pytest.raises(ValueError):
            bt.parse_sweep(bad)


def test_sweep_stops_each_implementation_at_its_first_loss():
    sw = bt.Sweep(["ours", "c"], [50, 100, 200, 300])
    ran = []
    outcome = {("ours", 50): True, ("ours", 100): True, ("ours", 200): False,
               ("c", 50): True, ("c", 100): True, ("c", 200): True, ("c", 300): False}
    for n in sw.steps():
        for impl in sw.impls_for(n):
            ran.append((n, impl))
            sw.record(n, impl, outcome[(impl, n)])
    assert ran == [(50, "ours"), (50, "c"), (100, "ours"), (100, "c"), (200, "ours"), (200, "c"), (300, "c")]
    assert sw.best == {"ours": 100, "c": 200}
    assert sw.failed_at == {"ours": 200, "c": 300}
    assert sw.done()


def test_sweep_first_step_fails_and_early_stop():
    sw = bt.Sweep(["ours"], [50, 100])
    steps = []
    for n in sw.steps():
        steps.append(n)
        sw.record(n, "ours", False)
    assert steps == [50] and sw.best == {"ours": None} and sw.failed_at == {"ours": 50}


# ---- formatting and the command line ---------------------------------------------------------------

def test_table_and_fmt():
    t = bt.table([["a", "1"], ["bbb", "22"]], header=["x", "y"])
    assert t.splitlines() == ["x     y", "---  --", "a     1", "bbb  22"]
    assert bt.fmt(None) == "n/a" and bt.fmt(float("nan")) == "n/a" and bt.fmt(1.234, "%.1f") == "1.2"


def test_command_line_and_settings():
    bench = load_bench()
    a = bench.parse_args([])
    assert a.mode == "sim" and a.impls == ["ours"] and a.calls == 20 and a.window == 5.0
    assert a.settings == [bench.Settings("mono", 16000, 20, None, True, False)]
    a = bench.parse_args(["--esl", "127.0.0.1:8021", "--impl", "ours,base,c", "--playback", "on,off",
                          "--deflate", "off", "--rate", "8k,16000", "--sweep", "50,100"])
    assert (a.host, a.port, a.impls, a.calls, a.window) == ("127.0.0.1", 8021, ["ours", "base", "c"], 50, 10.0)
    assert len(a.settings) == 4 and a.sweep_ns == [50, 100]
    s = bench.Settings(deflate=False, playback=False, buffer_ms=100)
    assert s.variables("ours") == {"STREAM_BUFFER_SIZE": "100", "STREAM_MESSAGE_DEFLATE": "true",
                                   "STREAM_PLAYBACK": "false"}
    assert "STREAM_PLAYBACK" not in s.variables("c")
    assert bench.Settings().variables("ours")["STREAM_MESSAGE_DEFLATE"] is None    # unset: each one's default
    assert bench.Settings(deflate=True).variables("ours")["STREAM_MESSAGE_DEFLATE"] == "false"   # offered
    assert s.for_impl("c").playback is True and s.for_impl("ours").playback is False
    for bad in (["--impl", "c"], ["--buffer", "30"], ["--esl", "nohost"], ["--mix", "quad"], ["--rate", "4k"]):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)


# ---- the sink process ---------------------------------------------------------------------------

def start_sink():
    p = subprocess.Popen([sys.executable, os.path.join(SCRIPTS, "bench_sink.py")], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    port = int(p.stdout.readline().split()[1])

    def ctl(path, body=None):
        req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path),
                                     data=None if body is None else json.dumps(body).encode(),
                                     method="GET" if body is None else "POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)
    return p, port, ctl


def stop_sink(p, ctl):
    try:
        ctl("/ctl/quit", {})
        p.wait(5)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()
        p.stderr.close()


def test_sink_records_and_plays():
    aiohttp = pytest.importorskip("aiohttp")
    p, port, ctl = start_sink()
    try:
        ctl("/ctl/phase", {"phase": "p1", "record_audio": True,
                           "play": {"mode": "bursts", "burst_ms": 20, "period_ms": 200, "rounds": 1}})

        async def client():
            async with aiohttp.ClientSession() as s:
                async with s.ws_connect("ws://127.0.0.1:%d/p1/ours/abc" % port) as ws:
                    await ws.send_str("metadata")
                    for i in range(3):
                        await ws.send_bytes(bytes([i]) * 320)
                    msg = await ws.receive(timeout=5)
                    return json.loads(msg.data)
        got = asyncio.run(client())
        assert got["type"] == "streamAudio" and got["data"]["sampleRate"] == 8000
        st = ctl("/ctl/status?phase=p1")
        assert st["opened"] == 1 and st["by_impl"]["ours"]["opened"] == 1
        for _ in range(50):
            if ctl("/ctl/status?phase=p1")["closed"] == 1:
                break
            import time
            time.sleep(0.05)
        res = ctl("/ctl/results?phase=p1")["connections"]
        assert len(res) == 1
        c = res[0]
        assert (c["impl"], c["uuid"], c["n"], c["bytes"], c["texts"], c["sent"]) == ("ours", "abc", 3, 960, 1, 1)
        assert c["sizes"] == [320, 320, 320] and c["times"] == sorted(c["times"]) and c["code"] == 1000
        ctl("/ctl/forget?phase=p1", {})
        assert ctl("/ctl/results?phase=p1")["connections"] == []
    finally:
        stop_sink(p, ctl)
    assert p.returncode == 0


def test_old_bench_py_alias_translates_its_options():
    loader = importlib.machinery.SourceFileLoader("bench_alias", os.path.join(SCRIPTS, "bench.py"))
    spec = importlib.util.spec_from_loader("bench_alias", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    assert mod.translate(["--calls", "10", "--seconds", "3", "--latency-trials", "5", "--no-deflate",
                          "--no-playback", "--json", "x"]) == [
        "--mix", "stereo", "--calls", "10", "--window", "3", "--deflate", "off", "--playback", "off",
        "--json", "x"]
    assert mod.translate(["--seconds=2"]) == ["--mix", "stereo", "--window", "2"]


def test_phase_of_and_window_loss():
    marks = [("connecting", 10.0), ("the CPU window", 12.0), ("after the window", 22.0), ("stop", 25.0)]
    assert bt.phase_of(9.0, marks) is None
    assert bt.phase_of(12.0, marks) == "the CPU window"
    assert bt.phase_of(23.5, marks) == "after the window"
    assert bt.phase_of(30.0, marks) == "stop"
    # two 8 kHz mono streams, 20 ms messages from t=10 to t=25; the second loses 1 s inside [12, 22)
    full = msgs(10.0, 750, 0.02, 320)
    sizes, times = msgs(10.0, 750, 0.02, 320)
    keep = [i for i, t in enumerate(times) if not (15.0 <= t < 16.0)]
    lossy = ([sizes[i] for i in keep], [times[i] for i in keep])
    assert bt.window_loss([full], 12.0, 22.0, 8000, 1) == pytest.approx(0.0, abs=0.3)
    assert bt.window_loss([full, lossy], 12.0, 22.0, 8000, 1) == pytest.approx(5.0, abs=0.3)
    assert bt.window_loss([], 12.0, 22.0, 8000, 1) is None


def test_drift_per_stream():
    assert bt.drift_per_stream(12.0, 16.0, 50) == pytest.approx(0.04)
    assert bt.drift_per_stream(16.0, 12.0, 50) == pytest.approx(0.04)
    assert bt.drift_per_stream(None, 12.0, 50) is None


# ---- the real-switch driver against a fake event socket: a restart is reported, not hung on ------

class FakeSwitch:
    """Just enough of FreeSWITCH's event socket for EslDriver's setup and health checks."""

    def __init__(self, script_dir, uptime_s=300):
        import socket
        import threading
        self.script_dir = script_dir
        self.uptime_s = uptime_s
        self.srv = socket.socket()
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(16)
        self.port = self.srv.getsockname()[1]
        self.clients = []
        self.lock = threading.Lock()
        self.cmds = []
        self.sps = 30
        self.vars = {}
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import threading
        while True:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            with self.lock:
                self.clients.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def answer(self, cmd):
        self.cmds.append(cmd)
        if cmd == "status":
            return ("UP 0 years, 0 days, 0 hours, %d minutes, %d seconds, 1 milliseconds, 2 microseconds\n"
                    "FreeSWITCH (Version 1.10.12 fake) is ready\n0 session(s) since startup\n"
                    "0 session(s) - peak 0, last 5min 0\n0 session(s) per Sec out of max %d, peak 0\n"
                    "1000 session(s) max\n" % (self.uptime_s // 60, self.uptime_s % 60, self.sps))
        if cmd.startswith("fsctl sps "):
            self.sps = int(cmd.split()[2])
            return "+OK"
        if cmd.startswith("global_setvar "):
            k, _, v = cmd.split(" ", 1)[1].partition("=")
            if v:
                self.vars[k] = v
            else:
                self.vars.pop(k, None)
            return "+OK"
        if cmd.startswith("global_getvar audio_stream"):
            return self.vars.get(cmd.split()[1], "")
        if cmd == "global_getvar script_dir":
            return self.script_dir
        if cmd.startswith("global_getvar"):
            return "/tmp"
        if cmd == "version":
            return "FreeSWITCH Version 1.10.12 (fake)"
        if cmd.startswith("python audio_stream_bench_probe pid"):
            return "1"
        if cmd == "python audio_stream":
            return "-USAGE: <uuid> start ..."
        if cmd == "show channels count":
            return "\n0 total.\n"
        return "-ERR unknown command"

    def _serve(self, c):
        f = c.makefile("rb")
        try:
            c.sendall(b"Content-Type: auth/request\n\n")
            buf = []
            for line in f:
                line = line.decode().rstrip("\n")
                if line:
                    buf.append(line)
                    continue
                if not buf:
                    continue
                cmd, buf = buf[0], []
                if cmd.startswith("auth") or cmd.startswith("event"):
                    c.sendall(b"Content-Type: command/reply\nReply-Text: +OK accepted\n\n")
                elif cmd.startswith("api "):
                    body = self.answer(cmd[4:]).encode()
                    c.sendall(b"Content-Type: api/response\nContent-Length: %d\n\n" % len(body) + body)
        except OSError:
            pass

    def drop_clients(self):
        import socket
        with self.lock:
            for c in self.clients:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                c.close()
            self.clients = []

    def close(self):
        import socket
        try:
            self.srv.shutdown(socket.SHUT_RDWR)     # wakes the accept() of the serving thread
        except OSError:
            pass
        self.srv.close()
        self.drop_clients()


class Quiet:
    def log(self, msg):
        pass

    def count(self, *a):
        pass


def test_esl_driver_reports_a_restart_and_a_vanished_switch(tmp_path):
    import time
    import bench_switch as bs
    fake = FakeSwitch(str(tmp_path))
    d = bs.EslDriver(Quiet(), "127.0.0.1", fake.port, "ClueCon", ["ours"], "e8c0b24", signal="tone")
    try:
        assert d.pid() is None                       # pid 1 is not a freeswitch: no CPU figures
        assert (tmp_path / (bs.PROBE_NAME + ".py")).exists()
        d.check_alive()
        assert d.other_channels() == 0
        # the switch restarts: every connection drops, a new one finds a younger switch
        fake.uptime_s = 3
        fake.drop_clients()
        time.sleep(0.2)
        with pytest.raises(bs.SwitchRestarted, match="restarted"):
            d.check_alive()
        with pytest.raises(bs.SwitchRestarted):      # and nothing more is sent to it
            d.api("status")
    finally:
        d.close()
    # a switch that is gone altogether
    d = bs.EslDriver(Quiet(), "127.0.0.1", fake.port, "ClueCon", [], "e8c0b24", signal="tone")
    try:
        fake.close()
        time.sleep(0.2)
        with pytest.raises(bs.BenchError, match="stopped answering|no FreeSWITCH"):
            d.check_alive()
    finally:
        d.close()
    with pytest.raises(bs.BenchError, match="no FreeSWITCH event socket"):
        bs.EslDriver(Quiet(), "127.0.0.1", fake.port, "ClueCon", [], "e8c0b24", signal="tone")


# ---- echo: the probe, the detector, the matcher ---------------------------------------------------

def probe_chunks(rate, n_chunks, every_ms=100, chunk_ms=20):
    """The probe as the sink sends it: chunks of chunk_ms, with the markers that start in them."""
    p = bt.EchoProbe(rate, every_ms=every_ms)
    n = rate * chunk_ms // 1000
    return [p.take(n) for _ in range(n_chunks)]


def test_echo_probe_is_a_continuous_tone_with_markers_at_chunk_starts():
    chunks = probe_chunks(8000, 50, every_ms=100)
    x = np.concatenate([c for c, _ in chunks]).astype(np.int32)
    assert len(x) == 8000 and np.max(np.abs(x)) <= bt.PROBE_AMPLITUDE
    # phase-continuous: no step larger than the fastest marker tone can make between two samples
    w = 2 * np.pi * max(bt.PROBE_MARKER_HZ) / 8000
    assert np.max(np.abs(np.diff(x))) <= bt.PROBE_AMPLITUDE * w * 1.01
    started = [(i, m) for i, (_, m) in enumerate(chunks) if m]
    # one every 100 ms = every 5th chunk, from the 5th on, codes in turn
    assert [i for i, _ in started] == list(range(5, 50, 5))
    assert [m for _, m in started] == [(k, k % len(bt.PROBE_MARKER_HZ)) for k in range(9)]
    # a marker chunk is that marker's frequency, the others the carrier
    d = bt.EchoDetector(8000)
    kinds = d.classify(np.concatenate([chunks[5][0], chunks[6][0]]).reshape(-1, d.B).astype(float))
    assert set(kinds[:8].tolist()) == {1} and set(kinds[9:].tolist()) == {0}


@pytest.mark.parametrize("rate", [8000, 16000, 48000])
def test_echo_detector_names_every_frequency_and_silence(rate):
    d = bt.EchoDetector(rate)
    t = np.arange(d.B * 10) / rate
    for k, f in enumerate((bt.PROBE_CARRIER_HZ,) + bt.PROBE_MARKER_HZ):
        x = np.rint(6000 * np.sin(2 * np.pi * f * t + 0.3)).reshape(-1, d.B)
        assert set(d.classify(x).tolist()) == {k}, f
    quiet = np.rint(100 * np.sin(2 * np.pi * 400 * t)).reshape(-1, d.B)
    assert set(d.classify(quiet).tolist()) == {-2}
    assert set(d.classify(np.zeros((3, d.B))).tolist()) == {-2}
    noise_blocks = np.random.default_rng(1).normal(0, 6000, (10, d.B))
    assert -1 in d.classify(noise_blocks).tolist()


def loop_through_call(chunks, rate, delay_frames=3, gap_at=None, call_rate=8000):
    """What the probe sounds like back in the stream: resampled to the call's rate, delayed by
    delay_frames of silence (nothing played yet), one 20 ms frame of silence inserted before frame
    gap_at (the playback queue ran dry), then resampled to `rate` again, in 20 ms messages."""
    from audio_stream import audio
    down, up = audio.resampler(rate, call_rate), audio.resampler(call_rate, rate)
    frame = call_rate // 50
    call = [np.zeros(frame * delay_frames, dtype=np.int16)]
    for i, (x, _) in enumerate(chunks):
        if i == gap_at:
            call.append(np.zeros(frame, dtype=np.int16))
        call.append(np.frombuffer(down.process(x.tobytes()), dtype="<i2"))
    back = np.frombuffer(up.process(np.concatenate(call).tobytes()), dtype="<i2")
    n = rate // 50
    return [back[i * n:(i + 1) * n] for i in range(len(back) // n)]


@pytest.mark.parametrize("rate", [8000, 16000])
def test_echo_round_trip_and_an_inserted_silent_frame(rate):
    chunks = probe_chunks(rate, 150, every_ms=200)
    st = bt.EchoState(rate, 1, {"right": rate}, every_ms=200)
    st.probe = None                         # the chunks above are the probe; replies are not used here
    sent_at = {}
    for i, (_, m) in enumerate(chunks):     # chunk i goes out at 0.02 i
        if m:
            st.sent(m, 0.02 * i)
            sent_at[m[0]] = 0.02 * i
    back = loop_through_call(chunks, rate, delay_frames=3, gap_at=80)
    for i, x in enumerate(back):            # message i of the stream arrives at 0.02 (i + 1)
        st.heard("right", x, 0.02 * (i + 1))
    r = st.result()["ears"]["right"]
    # a marker every 200 ms = every 10th chunk: chunks 10, 20, ..., 140
    assert r["markers_sent"] == len(sent_at) == 14 and r["markers_heard"] == 14 and r["markers_lost"] == 0
    # 3 frames of delay + the message's own 20 ms; 20 ms more from the inserted frame on
    assert r["rtt_ms"] == pytest.approx([80.0] * 7 + [100.0] * 7, abs=0.01)
    assert len(r["silences"]) == 1 and 15.0 <= r["silences"][0][1] <= 22.5
    assert r["silences"][0][0] == pytest.approx(0.02 * (80 + 3) + 0.02, abs=0.021)
    assert r["armed"] and r["markers_unmatched"] == 0


def test_echo_detector_ignores_silence_before_the_probe_and_at_its_end():
    chunks = probe_chunks(8000, 40, every_ms=100)
    d = bt.EchoDetector(8000)
    audio = [np.zeros(160, dtype=np.int16)] * 10 + [x for x, _ in chunks] + [np.zeros(160, dtype=np.int16)] * 10
    d.feed([(x, 0.02 * i) for i, x in enumerate(audio)])
    assert d.armed and d.armed_at == pytest.approx(0.2, abs=0.021)
    assert d.silences == []
    # the same with a 40 ms hole in the middle: one gap, 40 ms
    audio[30] = audio[31] = np.zeros(160, dtype=np.int16)
    d = bt.EchoDetector(8000)
    d.feed([(x, 0.02 * i) for i, x in enumerate(audio)])
    assert [ms for _, ms in d.silences] == [40.0]
    # fed a sample at a time or all at once, the same answer (blocks span messages)
    d2 = bt.EchoDetector(8000)
    flat = np.concatenate(audio)
    for j in range(0, len(flat), 37):
        d2.feed([(flat[j:j + 37], 0.0)])
    assert [ms for _, ms in d2.silences] == [40.0] and [c for c, _ in d2.onsets] == [c for c, _ in d.onsets]


def test_marker_matcher_pairs_in_order_and_counts_losses():
    m = bt.MarkerMatcher(codes=5)
    for seq in range(8):
        m.sent_marker(seq, seq % 5, 10.0 + seq)
    assert m.heard(0, 10.05) == pytest.approx(50.0)
    # markers 1 and 2 were never heard: 3 comes next
    assert m.heard(3, 13.07) == pytest.approx(70.0)
    assert m.lost == 2
    # a code that matches nothing sent within reach: not a round trip
    assert m.heard(0, 13.5) is None and m.unmatched == 1
    assert m.heard(4, 14.06) == pytest.approx(60.0)
    # a marker heard before it was sent is not a match
    assert m.heard(0, 14.5) is None and m.unmatched == 2
    assert m.rtt_ms == pytest.approx([50.0, 70.0, 60.0])


def test_echo_state_replies_and_summary():
    st = bt.EchoState(16000, 2, {"right": 16000, "far": 8000}, every_ms=100)
    pcm, marker = st.reply(1280)            # 20 ms of stereo 16 kHz: answered with 20 ms of mono
    assert len(pcm) == 320 and marker is None and st.replies == 1
    for _ in range(5):                      # a marker every 100 ms: the 6th reply starts the first
        pcm, marker = st.reply(1280)
    assert marker == (0, 0)
    st.sent(marker, 5.0)
    st.sent(None, 5.1)
    res = st.result()
    assert res["reply_ms"] == pytest.approx(120.0) and set(res["ears"]) == {"right", "far"}
    assert res["ears"]["far"]["markers_sent"] == 1 and res["ears"]["right"]["markers_heard"] == 0
    one = {"ears": {"far": {"armed": True, "heard_ms": 1000.0, "rtt_ms": [30.0, 40.0], "silences": [(1.0, 20.0)],
                            "markers_sent": 3, "markers_heard": 2, "markers_lost": 1, "markers_unmatched": 0,
                            "unclear_blocks": 0}}}
    two = {"ears": {"far": dict(one["ears"]["far"], rtt_ms=[50.0], silences=[], markers_lost=0)}}
    s = bt.echo_summary([one, two, {"ears": {}}], "far")
    assert s["streams"] == 2 and s["rtt_ms"]["n"] == 3 and s["rtt_ms"]["p50"] == 40.0 and s["rtt_ms"]["max"] == 50.0
    assert (s["silent_gaps"], s["streams_with_gaps"], s["silent_gap_ms_max"]) == (1, 1, 20.0)
    assert (s["markers_sent"], s["markers_heard"], s["markers_lost"]) == (6, 4, 1)
    assert bt.echo_summary([one], "right") is None


def test_percentiles_of_round_trips():
    rtt = [20.0] * 90 + [40.0] * 9 + [400.0]
    s = bt.summary(rtt, qs=(50, 90, 99))
    assert s["p50"] == 20.0 and s["p90"] == pytest.approx(22.0) and s["p99"] == pytest.approx(43.6)
    assert s["max"] == 400.0 and s["n"] == 100


# ---- pacing, GIL, machine ---------------------------------------------------------------------

def test_pacer_spaces_originates_under_the_session_rate():
    p = bt.Pacer(bt.originate_rate(200))            # 100 sessions a second: one 2-session call every 20 ms
    assert p.rate == 100
    waits = [p.reserve(2, now=10.0) for _ in range(5)]
    assert waits == pytest.approx([0.0, 0.02, 0.04, 0.06, 0.08])
    # later callers wait only for what is booked; after a pause the next one goes at once
    assert p.reserve(2, now=10.05) == pytest.approx(0.05)
    assert p.reserve(2, now=20.0) == 0.0
    # in any one second of a burst of 200 calls: at most 100 sessions
    p = bt.Pacer(100)
    starts = sorted(p.reserve(2, now=0.0) for _ in range(200))
    for t in np.arange(0, 4, 0.05):
        assert sum(1 for s in starts if t <= s < t + 1.0) * 2 <= 100
    assert bt.originate_rate(30) == 15 and bt.originate_rate(1) == 1.0
    with pytest.raises(ValueError):
        bt.Pacer(0)
    # with jitter: each call up to 20 ms after its slot, at phases spread over the 20 ms frame
    import random
    p = bt.Pacer(100, jitter_s=0.02, rng=random.Random(7))
    waits = [p.reserve(2, now=0.0) for _ in range(200)]
    slots = [0.02 * i for i in range(200)]
    assert all(s <= w < s + 0.02 for w, s in zip(waits, slots))
    phases = np.array(waits) % 0.02
    assert np.histogram(phases, bins=4, range=(0, 0.02))[0].min() > 25


def test_gil_per_stream_from_two_status_totals():
    st0 = {"loop_cpu_s": 10.0, "callback_cpu_s": 2.0, "path": "python"}
    st1 = {"loop_cpu_s": 13.0, "callback_cpu_s": 3.0, "path": "python"}
    g = bt.gil_per_stream(st0, st1, 10.0, 100)        # 4 s of GIL in 10 s over 100 streams
    assert g["loop_ms"] == pytest.approx(3.0) and g["callback_ms"] == pytest.approx(1.0)
    assert g["ms"] == pytest.approx(4.0) and g["capacity"] == pytest.approx(250.0) and g["path"] == "python"
    assert bt.gil_per_stream({"live": 1}, st1, 10.0, 100) is None       # an older build: no figures
    assert bt.gil_per_stream(None, st1, 10.0, 100) is None
    assert bt.gil_per_stream(st0, st1, 10.0, 0) is None
    assert bt.gil_per_stream(st0, st0, 10.0, 5)["capacity"] is None


def test_gil_per_stream_leaves_out_what_a_pass_runs_without_the_gil():
    # the accelerated path: of 3 s of loop thread CPU, 1.2 s in capture passes (GIL released), which
    # kept the loop thread waiting 1.5 s (its worker's share included)
    st0 = {"loop_cpu_s": 10.0, "callback_cpu_s": 0.0, "pass_cpu_s": 4.0, "pass_wall_s": 5.0, "path": "accel"}
    st1 = {"loop_cpu_s": 13.0, "callback_cpu_s": 0.0, "pass_cpu_s": 5.2, "pass_wall_s": 6.5, "path": "accel"}
    g = bt.gil_per_stream(st0, st1, 10.0, 100)
    assert g["loop_ms"] == pytest.approx(3.0) and g["pass_ms"] == pytest.approx(1.2)
    assert g["ms"] == pytest.approx(1.8)                  # the GIL held
    assert g["busy_ms"] == pytest.approx(3.3)             # the loop thread occupied
    assert g["capacity_gil"] == pytest.approx(1000 / 1.8) and g["capacity_loop"] == pytest.approx(1000 / 3.3)
    assert g["capacity"] == pytest.approx(1000 / 3.3) and g["limit"] == "loop thread"
    # a pass spread over more cores: the loop thread waits less for it
    g = bt.gil_per_stream(st0, dict(st1, pass_wall_s=5.3), 10.0, 100)
    assert g["busy_ms"] == pytest.approx(2.1) and g["capacity"] == pytest.approx(1000 / 2.1)
    # media-thread Python (the pure path's callbacks) holds the GIL without the loop thread
    g = bt.gil_per_stream(dict(st0, callback_cpu_s=1.0), dict(st1, callback_cpu_s=3.0), 10.0, 100)
    assert g["ms"] == pytest.approx(3.8) and g["limit"] == "GIL" and g["capacity"] == pytest.approx(1000 / 3.8)


def test_proc_stat_machine_and_rss_detail():
    a = bt.parse_cpu_line("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n")
    b = bt.parse_cpu_line("cpu  160 0 70 900 70 0 0 0 0 0\ncpu0 1 2 3 4\n")
    assert a == (150, 1000) and b == (230, 1200)
    assert bt.machine_busy_pct(a, b) == pytest.approx(40.0)
    assert bt.machine_busy_pct(a, a) is None and bt.machine_busy_pct(None, b) is None
    with pytest.raises(ValueError):
        bt.parse_cpu_line("intr 1 2 3\n")
    d = bt.parse_rss_detail("VmRSS:\t 2000 kB\nRssAnon:\t 1500 kB\nRssFile:\t 500 kB\nRssShmem:\t 0 kB\n")
    assert d == {"VmRSS": 2000, "RssAnon": 1500, "RssFile": 500, "RssShmem": 0}
    assert bt.parse_rss_detail("Name: x\n")["VmRSS"] is None
    assert bt.kb_per_stream(100000, 250000, 100) == 1500.0 and bt.kb_per_stream(None, 1, 1) is None


def test_machine_out():
    assert bt.machine_out(3.0, 2, 80.0, False, 10, 90) is None
    assert "stalled" in bt.machine_out(3.0, 2, 80.0, True, 10, 90)
    assert "185 % of a core" in bt.machine_out(3.0, 2, 185.0, False, 10, 90)
    assert "load average 25.0" in bt.machine_out(25.0, 2, 80.0, False, 10, 90)
    assert bt.machine_out(None, 2, None, False, 10, 90) is None


def test_command_line_echo_path_and_rss_options():
    bench = load_bench()
    a = bench.parse_args(["--esl", "127.0.0.1:8021", "--impl", "ours,c", "--echo", "on,off", "--path", "python,accel",
                          "--echo-format", "json", "--rss-at", "3,1", "--mix", "stereo", "--sps", "0"])
    assert len(a.settings) == 4 and a.rss_at == [1.0, 3.0] and a.echo_format == "json" and a.sps == 0
    assert {(s.echo, s.path) for s in a.settings} == {(True, "python"), (True, "accel"), (False, "python"),
                                                      (False, "accel")}
    s = bench.Settings(mix="stereo", echo=True, path="python")
    assert s.for_impl("c").path is None and s.for_impl("base").path is None and s.for_impl("ours").path == "python"
    assert s.for_impl("c").echo and "echo on, path python" in s.label()
    assert bench.parse_args([]).rss_at == [0.0, 1.0, 3.0] and bench.parse_args(["--rss-at", "off"]).rss_at == []
    for bad in (["--echo", "on", "--server-audio", "on"], ["--echo", "on", "--playback", "off"],
                ["--esl", "h:1", "--impl", "c", "--path", "python"], ["--path", "fast"], ["--echo-every-ms", "50"],
                ["--sps", "-1"]):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)


# ---- the sink's echo --------------------------------------------------------------------------

def test_sink_echoes_and_hears_its_probe_come_back():
    """A stand-in module: stereo 8 kHz frames whose right channel carries the sink's replies two
    frames later, as a parked call's write stream would, with one reply lost (a silent frame)."""
    aiohttp = pytest.importorskip("aiohttp")
    p, port, ctl = start_sink()
    try:
        ctl("/ctl/phase", {"phase": "p1"})

        async def module():
            async with aiohttp.ClientSession() as s:
                async with s.ws_connect("ws://127.0.0.1:%d/p1/ours/u1" % port) as ws, \
                        s.ws_connect("ws://127.0.0.1:%d/p1/c/u2" % port) as ws_c:
                    await ws.send_str("metadata")
                    await asyncio.get_running_loop().run_in_executor(None, ctl, "/ctl/play", {
                        "phase": "p1", "mode": "echo", "rate": 8000, "channels": 2, "format": "binary",
                        "ears": {"right": 8000}, "every_ms": 100, "impls": ["ours"]})
                    played = [np.zeros(160, dtype=np.int16)] * 2
                    for i in range(60):
                        frame = np.empty(320, dtype=np.int16)
                        frame[0::2] = 1000
                        frame[1::2] = np.zeros(160, dtype=np.int16) if i == 40 else played[i]
                        await ws.send_bytes(frame.tobytes())
                        reply = await ws.receive(timeout=5)
                        assert reply.type == aiohttp.WSMsgType.BINARY and len(reply.data) == 320
                        played.append(np.frombuffer(reply.data, dtype="<i2"))
                        await asyncio.sleep(0.005)
                    await ws_c.send_bytes(b"\0" * 320)       # not an echoed implementation
                    try:
                        await ws_c.receive(timeout=0.3)
                        return "the C connection got a reply"
                    except asyncio.TimeoutError:
                        pass
                    await asyncio.get_running_loop().run_in_executor(None, ctl, "/ctl/echo_stop", {"phase": "p1"})
                    return None
        assert asyncio.run(module()) is None
        conns = {c["impl"]: c for c in ctl("/ctl/results?phase=p1")["connections"]}
        e = conns["ours"]["echo"]
        assert conns["c"]["echo"] is None and conns["ours"]["sent"] == 60
        assert e["replies"] == 60 and e["reply_ms"] == pytest.approx(1200.0)
        r = e["ears"]["right"]
        assert r["armed"] and r["markers_sent"] == 11 and r["markers_heard"] >= 9 and r["markers_unmatched"] == 0
        # each reply comes back in the right channel two frames after it was sent: two message intervals
        assert all(9.0 <= x <= 200.0 for x in r["rtt_ms"])
        assert len(r["silences"]) == 1 and r["silences"][0][1] == pytest.approx(20.0, abs=2.6)
    finally:
        stop_sink(p, ctl)


def test_sink_echo_json_for_the_c_module():
    aiohttp = pytest.importorskip("aiohttp")
    p, port, ctl = start_sink()
    try:
        ctl("/ctl/phase", {"phase": "p2", "echo": {"mode": "echo", "rate": 16000, "channels": 1, "format": "json",
                                                   "ears": {}, "impls": ["c"]}})

        async def module():
            async with aiohttp.ClientSession() as s:
                async with s.ws_connect("ws://127.0.0.1:%d/p2/c/u3" % port) as ws:
                    await ws.send_bytes(b"\1\0" * 320)
                    return json.loads((await ws.receive(timeout=5)).data)
        msg = asyncio.run(module())
        assert msg["type"] == "streamAudio" and msg["data"]["sampleRate"] == 16000
        assert msg["data"]["audioDataType"] == "raw"
        import base64
        assert len(base64.b64decode(msg["data"]["audioData"])) == 640
    finally:
        stop_sink(p, ctl)


def test_esl_driver_raises_the_session_rate_paces_and_restores(tmp_path):
    import time
    import bench_switch as bs
    fake = FakeSwitch(str(tmp_path))
    d = bs.EslDriver(Quiet(), "127.0.0.1", fake.port, "ClueCon", ["ours"], "e8c0b24", signal="tone")
    try:
        t0 = time.monotonic()
        d.prepare_limits(100, 200)
        # the raised budget counts from the core's next refill, a second later: the bench waited for it
        assert time.monotonic() - t0 >= 1.0
        assert "fsctl sps 200" in fake.cmds and d.sps == 200 and d.pacer.rate == 100
        d.prepare_limits(100, 100)               # never lowered
        assert fake.sps == 200 and d.pacer.rate == 100
        waits = [d.pacer.reserve(2, now=50.0) for _ in range(3)]
        assert all(s <= w < s + 0.02 for w, s in zip(waits, (0.0, 0.02, 0.04)))     # slot + phase jitter
        # the path: set for a run, put back as it was (unset) at the end
        d.set_path("python")
        assert fake.vars == {"audio_stream_accel": "false"}
        d.set_path("accel")
        assert fake.vars == {"audio_stream_accel": "true"}
    finally:
        d.close()
    assert fake.sps == 30 and "audio_stream_accel" not in fake.vars
    # a switch whose limit is already high enough is left alone, and paced at half of it
    fake.sps = 500
    fake.vars["audio_stream_accel"] = "true"
    d = bs.EslDriver(Quiet(), "127.0.0.1", fake.port, "ClueCon", ["ours"], "e8c0b24", signal="tone")
    try:
        d.prepare_limits(10, 200)
        assert d.sps == 500 and d.pacer.rate == 250
        d.set_path("python")
    finally:
        d.close()
    assert fake.sps == 500 and fake.vars["audio_stream_accel"] == "true"
    fake.close()


def test_bench_runs_full_duplex_on_the_simulator(tmp_path):
    """scripts/bench end to end on the switch simulator (what CI can run): stereo echo, the GIL time
    from ours' status, the path, the RSS timeline, the round trip heard in the right channel."""
    out = tmp_path / "res.json"
    r = subprocess.run([sys.executable, os.path.join(SCRIPTS, "bench"), "--calls", "2", "--window", "1",
                        "--settle", "0.3", "--mix", "stereo", "--echo", "on", "--no-latency", "--rss-at", "0,0.5",
                        "--path", "python", "--quiet", "--json", str(out)],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    w = res["configurations"][0]
    assert w["connected"] == 2 and w["loss"]["streams"] == 2      # (loss itself depends on this machine's load)
    assert w["settings"]["echo"] and w["settings"]["path"] == "python"
    assert w["gil"]["ms"] > 0 and w["gil"]["capacity"] > 0 and w["gil"]["path"] == "python"
    assert w["status_after"]["callback_cpu_s"] > w["status_before"]["callback_cpu_s"]   # playback ran in _on_bug
    assert set(w["rss_raw_at"]) == {"0.0", "0.5"}
    right = w["echo"]["ears"]["right"]
    assert right["streams"] == 2 and right["markers_heard"] >= 2 and right["rtt_ms"]["p50"] > 0
    assert "echo round trip (stream's right channel)" in r.stdout and "path in use" in r.stdout


def test_status_streams_digest():
    d = bt.status_streams([{"dropped_ms": 40, "playback_queued_ms": 60, "reconnects": 1},
                           {"dropped_ms": 0, "playback_queued_ms": 20}, {"playback_queued_ms": 100}])
    assert d == {"n": 3, "dropped_ms": 40, "reconnects": 1, "playback_queued_ms_p50": 60.0,
                 "playback_queued_ms_max": 100}
    assert bt.status_streams([])["playback_queued_ms_max"] is None


def test_sink_hears_the_far_end_only_of_observed_calls():
    """The far-end ear: an observer stream (as the C module on the b-leg) carries the replies the
    sink sent to the echoed stream of the same call; a call without an observer has no far ear."""
    aiohttp = pytest.importorskip("aiohttp")
    p, port, ctl = start_sink()
    try:
        ctl("/ctl/phase", {"phase": "p3"})

        async def calls():
            async with aiohttp.ClientSession() as s:
                async with s.ws_connect("ws://127.0.0.1:%d/obs/obs/u9" % port) as obs, \
                        s.ws_connect("ws://127.0.0.1:%d/p3/ours/u9" % port) as ws, \
                        s.ws_connect("ws://127.0.0.1:%d/p3/ours/u8" % port) as ws8:
                    await asyncio.sleep(0.2)
                    await asyncio.get_running_loop().run_in_executor(None, ctl, "/ctl/play", {
                        "phase": "p3", "mode": "echo", "rate": 8000, "channels": 1, "format": "binary",
                        "ears": {"far": 8000}, "every_ms": 100, "impls": ["ours"]})
                    for i in range(40):
                        await ws.send_bytes(b"\0\0" * 160)
                        await ws8.send_bytes(b"\0\0" * 160)
                        reply = await ws.receive(timeout=5)
                        await ws8.receive(timeout=5)
                        await obs.send_bytes(reply.data)           # the far end hears it at once
                        await asyncio.sleep(0.005)
                    await asyncio.sleep(0.1)
                    await asyncio.get_running_loop().run_in_executor(None, ctl, "/ctl/echo_stop", {"phase": "p3"})
        asyncio.run(calls())
        conns = {c["uuid"]: c for c in ctl("/ctl/results?phase=p3")["connections"]}
        far = conns["u9"]["echo"]["ears"]["far"]
        assert far["markers_heard"] == far["markers_sent"] == 7 and far["silences"] == []
        assert all(0.0 < x < 100.0 for x in far["rtt_ms"])
        assert conns["u8"]["echo"]["ears"] == {} and conns["u8"]["echo"]["replies"] == 40
    finally:
        stop_sink(p, ctl)


def test_sink_notes_its_own_stalls():
    """The sink says when its own event loop ran late or its garbage collector paused, so that a
    round trip or a gap measured then is not blamed on the switch."""
    import bench_sink
    st = bench_sink.Stalls()

    async def run():
        w = asyncio.ensure_future(st.watch())
        await asyncio.sleep(0.05)
        t0 = __import__("time").monotonic()
        __import__("time").sleep(0.06)         # the sink's loop held up for 60 ms
        await asyncio.sleep(0.03)
        w.cancel()
        return t0
    t0 = asyncio.run(run())
    st.gc_callback("start", {})
    st._gc_t0 -= 0.004                          # a 4 ms collection
    st.gc_callback("stop", {})
    out = st.between(t0, 1e18)
    assert out["loop_late_ms_max"] >= 50 and out["loop_late_over_20ms"] == 1
    assert out["gc_pauses"] == 1 and out["gc_pause_ms_max"] >= 4
    assert st.between(0, t0 - 1) == {"loop_late_ms_max": 0.0, "loop_late_over_20ms": 0, "gc_pause_ms_max": 0.0,
                                     "gc_pauses": 0}


def test_the_sink_runs_in_the_switch_s_real_time_class():
    """FreeSWITCH runs its threads SCHED_FIFO: the bench reads the least urgent of them from /proc,
    to put its sinks there (else the switch's threads starve them)."""
    def stat(name, prio, policy):
        rest = ["S"] + ["0"] * 36 + [str(prio), str(policy)] + ["0"] * 11
        return "1234 (%s) %s" % (name, " ".join(rest))
    assert bt.thread_sched(stat("free switch)", 99, 1)) == (1, 99)       # a ")" in the name
    assert bt.thread_sched("garbage") is None
    assert bt.lowest_rt([(1, 99), (1, 10), (1, 1), (0, 0)]) == (1, 1)
    assert bt.lowest_rt([(0, 0), (3, 0)]) is None                          # not real-time
    assert bt.lowest_rt([(2, 5)]) == (2, 5)
    mine = bt.switch_rt(os.getpid())                                        # this test's own threads
    assert mine is None or mine[0] in (1, 2)
    assert bt.switch_rt(2 ** 22 + 12345) is None                            # no such process
