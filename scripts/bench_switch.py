"""The two switches scripts/bench drives: the simulator in this process, or a real FreeSWITCH over
its event socket. Both offer the same small interface (Driver); everything else in the bench is
the same for both.
"""
import concurrent.futures
import ctypes
import glob
import importlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import uuid as uuidlib
import wave
from urllib.parse import unquote

import numpy as np

import bench_tools as bt

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
HZ = os.sysconf("SC_CLK_TCK")
PREFIX = "mod_audio_stream::"
SUBCLASSES = [PREFIX + n for n in ("connect", "disconnect", "error", "playback_started", "playback_stopped")]
PYTHON_IMPLS = ("ours", "base")
ACCEL_VAR = "audio_stream_accel"      # global variable: false = the pure-Python path (ours reads it at start)
SPS_SHARE = 0.5                       # originate at this share of the switch's sessions per second
PTIME_S = 0.020                       # calls start at random phases of their 20 ms frames (Pacer jitter)
PROBE_NAME = "audio_stream_bench_probe"
PROBE_SOURCE = '''"""Written by audio_stream's scripts/bench (safe to delete): what this switch's Python has loaded.

    python %s pid            -> the switch's process id
    python %s loaded <pkg>   -> "yes <n>" (n modules of that package imported) or "no"
    python %s trim           -> malloc_trim(0): give freed heap memory back before RSS is read
"""
import ctypes
import os
import sys


def fsapi(session=None, stream=None, env=None, args=None):
    if stream is None:
        return
    words = (args or "").split()
    if words[:1] == ["pid"]:
        stream.write("%%d\\n" %% os.getpid())
    elif words[:1] == ["loaded"] and len(words) == 2:
        name = words[1]
        n = sum(1 for k in list(sys.modules) if k == name or k.startswith(name + "."))
        stream.write(("yes %%d\\n" %% n) if n else "no\\n")
    elif words[:1] == ["trim"]:
        try:
            stream.write("%%d\\n" %% ctypes.CDLL("libc.so.6").malloc_trim(0))
        except Exception as e:
            stream.write("-ERR %%s\\n" %% e)
    else:
        stream.write("-USAGE: pid | loaded <package> | trim\\n")
''' % (PROBE_NAME, PROBE_NAME, PROBE_NAME)


class BenchError(Exception):
    """An expected failure: printed as one line, non-zero exit."""


class SwitchRestarted(BenchError):
    pass


# ---------------------------------------------------------------------------------------------
# /proc

def proc_cpu_ticks(pid):
    with open("/proc/%d/stat" % pid) as f:
        return bt.parse_proc_stat(f.read())[0]


def proc_rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        return bt.parse_vmrss_kb(f.read())


def proc_rss_detail(pid):
    """VmRSS, RssAnon, RssFile, RssShmem (KB), read as they are (no malloc_trim)."""
    with open("/proc/%d/status" % pid) as f:
        return bt.parse_rss_detail(f.read())


def machine_cpu():
    """(busy, total) clock ticks of the whole machine, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            return bt.parse_cpu_line(f.read())
    except (OSError, ValueError):
        return None


def proc_comm(pid):
    try:
        with open("/proc/%d/comm" % pid) as f:
            return f.read().strip()
    except OSError:
        return None


def proc_start_epoch(pid):
    """Wall-clock start time of a process (seconds since the epoch)."""
    with open("/proc/%d/stat" % pid) as f:
        start_ticks = bt.parse_proc_stat(f.read())[1]
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("btime "):
                return int(line.split()[1]) + start_ticks / float(HZ)
    return None


def rate_word(rate):
    return {8000: "8k", 16000: "16k"}.get(rate, str(rate))


def git(*args, cwd=REPO):
    r = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise BenchError("git %s failed: %s" % (" ".join(args), (r.stderr or r.stdout).strip().splitlines()[-1:]))
    return r.stdout.strip()


def source_info(path):
    """Where a package's code comes from: its real path and, when it is in a git checkout, the commit
    and whether the package differs from it."""
    real = os.path.realpath(path)
    info = {"path": real}
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=real, capture_output=True,
                             text=True, timeout=10)
        if top.returncode == 0:
            info["commit"] = git("log", "-1", "--format=%h", "--", ".", cwd=real)   # last change to the package
            info["dirty"] = bool(git("status", "--porcelain", "--", ".", cwd=real))
    except (OSError, subprocess.SubprocessError, BenchError):
        pass
    return info


def resolve_ref(ref):
    """The full commit id of a git ref of this repository."""
    r = subprocess.run(["git", "rev-parse", "--verify", "--quiet", ref + "^{commit}"], cwd=REPO,
                       capture_output=True, text=True)
    if r.returncode != 0 or not r.stdout.strip():
        raise BenchError("--base-ref %s: not a commit of the repository at %s" % (ref, REPO))
    return r.stdout.strip()


def export_ref(ref, dest_parent, name):
    """`git archive <ref>:audio_stream` unpacked as dest_parent/name (replaced atomically). Returns
    the full commit id. A marker file .bench_ref records it."""
    sha = resolve_ref(ref)
    tmp = tempfile.mkdtemp(prefix=".%s-" % name, dir=dest_parent)
    try:
        arch = subprocess.run(["git", "archive", "--format=tar", sha + ":audio_stream"], cwd=REPO,
                              capture_output=True)
        if arch.returncode != 0:
            raise BenchError("git archive %s:audio_stream failed: %s" % (ref, arch.stderr.decode().strip()))
        tf = tarfile.open(fileobj=__import__("io").BytesIO(arch.stdout))
        tf.extractall(tmp)
        with open(os.path.join(tmp, ".bench_ref"), "w") as f:
            f.write(sha + "\n")
        for d, dirs, files in os.walk(tmp):   # the switch may run as another user
            os.chmod(d, 0o755)
            for fn in files:
                os.chmod(os.path.join(d, fn), 0o644)
        target = os.path.join(dest_parent, name)
        old = None
        if os.path.lexists(target):
            old = target + ".old-%d" % os.getpid()
            os.rename(target, old)
        os.rename(tmp, target)
        tmp = None
        if old:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return sha


def read_marker(path):
    try:
        with open(os.path.join(path, ".bench_ref")) as f:
            return f.read().strip()
    except OSError:
        return None


def scratch_dir(prefix):
    """A private temporary directory, in RAM (/dev/shm) when there is one: the bench's files are
    transient, and a full disk (seen on the shared machine) must not stop a run."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    return tempfile.mkdtemp(prefix=prefix, dir=base)


def noise_wav(path, seconds=60, rate=8000, seed=11):
    """White noise for the b-legs: non-periodic, so two streams of the same call align by content."""
    rng = np.random.default_rng(seed)
    x = np.clip(rng.standard_normal(int(seconds * rate)) * 2500, -32000, 32000).astype("<i2")
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(x.tobytes())


# ---------------------------------------------------------------------------------------------
# the interface

class Driver:
    mode = None
    ptime_ms = 20
    call_rate = 8000

    def __init__(self, progress):
        self.progress = progress
        self.calls = []           # a-leg uuids (the streamed legs), oldest first
        self.facts = {}

    # process measured as "the switch"
    def pid(self):
        raise NotImplementedError

    def cpu_ticks(self):
        pid = self.pid()
        if pid is None:
            return None
        try:
            return proc_cpu_ticks(pid)
        except OSError:
            self.check_alive()
            raise BenchError("cannot read /proc/%d/stat" % pid)

    def rss_kb(self):
        """VmRSS of the switch process, read after malloc_trim(0) in it: heap memory freed earlier but
        kept by the allocator would otherwise come and go at random between two readings."""
        pid = self.pid()
        if pid is None:
            return None
        self.trim()
        try:
            return proc_rss_kb(pid)
        except OSError:
            self.check_alive()
            raise BenchError("cannot read /proc/%d/status" % pid)

    def trim(self):
        pass

    def rss_detail(self):
        """The switch's RSS as it is (no malloc_trim: nothing is sent to the switch), or None."""
        pid = self.pid()
        if pid is None:
            return None
        try:
            return proc_rss_detail(pid)
        except OSError:
            return None

    def status(self, impl):
        """The `totals` of `python <impl> status` (ours, base) and a digest of its streams (see
        bench_tools.status_streams), or None (the C module, an error)."""
        if impl not in PYTHON_IMPLS:
            return None
        try:
            doc = json.loads(self._api(impl, "status"))
        except (ValueError, BenchError):
            return None
        if not isinstance(doc, dict) or not isinstance(doc.get("totals"), dict):
            return None
        out = dict(doc["totals"])
        out["streams"] = bt.status_streams(doc.get("streams") or [])
        return out

    def set_path(self, path):
        """Ask ours for the accelerated (`accel`) or the pure-Python (`python`) path for the streams
        started from now on, or leave it to the product (None)."""
        raise NotImplementedError

    def observers(self):
        """Whether this switch can observe what the far end of a call hears (for mono echo)."""
        return False

    def parallel(self, fn, items, label):
        """Run fn(item) for every item (in order here; the ESL driver uses a pool); returns the results."""
        out = []
        t0 = time.monotonic()
        for i, it in enumerate(items):
            out.append(fn(it))
            self.progress.count(label, i + 1, len(items), t0)
        return out


# ---------------------------------------------------------------------------------------------
# simulator

class SimDriver(Driver):
    """The switch simulator in this process: the bench process is "the switch". The implementations
    are imported here: `ours` is the audio_stream package of this checkout, `base` another commit's
    package exported into a temporary directory as audio_stream_base."""
    mode = "sim"
    read_hz = 97.0     # period 8000 samples = 50 frames at 8 kHz: frames 0..49 are all different
    amplitude = 8000

    def __init__(self, progress, impls, base_ref):
        super().__init__(progress)
        sys.path.insert(0, REPO)
        try:
            from audio_stream.testing import fake_freeswitch
            from audio_stream.testing.sim import SimSwitch, SimBuildError
        except ImportError as e:
            raise BenchError("cannot import the simulator from %s: %s" % (REPO, e))
        self._fake = fake_freeswitch
        try:
            self.sim = SimSwitch()
        except SimBuildError as e:
            raise BenchError("cannot build the switch simulator: %s" % str(e).splitlines()[0])
        self.mods = {}
        self.fs = {}
        self.tmp = None
        self.chans = {}
        self.started_at = {}      # uuid -> monotonic time just before the channel started
        self.tick_obs = {}        # uuid -> [(t, ticks)]
        self.start_ticks = {}     # uuid -> ticks done just before and just after the last `start`
        self._event_mark = {}
        for impl in impls:
            if impl == "c":
                raise BenchError("--impl c needs a real switch (--esl host:port): the simulator has no C module")
            self._load(impl, base_ref)
        self.facts["ours"] = source_info(os.path.join(REPO, "audio_stream"))

    def _load(self, impl, base_ref):
        if impl == "ours":
            mod = importlib.import_module("audio_stream")
            if os.path.realpath(os.path.dirname(mod.__file__)) != os.path.realpath(os.path.join(REPO, "audio_stream")):
                raise BenchError("imported audio_stream from %s, not from this checkout (%s)"
                                 % (os.path.dirname(mod.__file__), REPO))
        else:
            self.tmp = self.tmp or scratch_dir("audio_stream_bench-")
            sha = export_ref(base_ref, self.tmp, "audio_stream_base")
            self.facts["base"] = {"ref": base_ref, "commit": sha[:12]}
            sys.path.insert(0, self.tmp)
            mod = importlib.import_module("audio_stream_base")
        sw = importlib.import_module(mod.__name__ + ".switch")
        core = importlib.import_module(mod.__name__ + ".switch.core")
        fs = self._fake.bind(self.sim)
        try:
            sw.install(core.Core(ctypes.CDLL(self.sim.path)), fs)
        except Exception as e:
            raise BenchError("%s: cannot bind its switch layer to the simulator: %r" % (impl, e))
        self.mods[impl] = mod
        self.fs[impl] = fs

    def pid(self):
        return os.getpid()

    def trim(self):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass

    def check_impl(self, impl):
        reply = self._api(impl, "")
        if not reply.startswith("-USAGE"):
            raise BenchError("%s: an empty command answers %r, not -USAGE" % (impl, reply))

    def set_path(self, path):
        """The bench process is the switch: the global variable audio_stream_accel of its stand-in
        freeswitch module (read by the product when a stream starts), as on a real switch. A
        checkout that predates it ignores it."""
        value = {"accel": "true", "python": "false"}.get(path)
        for fs in self.fs.values():
            setter = getattr(fs, "setGlobalVariable", None)
            if setter is not None:
                setter(ACCEL_VAR, value)

    def _api(self, impl, line):
        fs = self.fs[impl]
        stream = fs.Stream()
        self.mods[impl].fsapi("na", stream, None, line)
        return stream.get_data().strip()

    def new_calls(self, n):
        made = []
        t0 = time.monotonic()
        rnd = random.Random(len(self.calls))
        for i in range(n):
            ch = self.sim.channel(rate=self.call_rate, ptime_ms=self.ptime_ms)
            ch.set_tones(self.read_hz, 0, self.amplitude)
            ch.set_core_writing(0)            # parked, as the real switch's a-legs
            # calls on a real switch tick at unrelated phases of their 20 ms clocks: start each at a
            # random phase, or every call would meet a capture timer at the same point of its frame
            time.sleep(rnd.uniform(0, self.ptime_ms / 1000.0))
            self.started_at[ch.uuid] = time.monotonic()
            ch.start(1.0)
            self.chans[ch.uuid] = ch
            made.append(ch.uuid)
            self.progress.count("creating calls", i + 1, n, t0)
        self.calls.extend(made)
        return made

    def observe_ticks(self, uuids, seconds=0.3):
        """Sample every channel's tick counter for a while (see bench_tools.t0_estimate)."""
        end = time.monotonic() + seconds
        chans = [(u, self.chans[u], self.tick_obs.setdefault(u, [])) for u in uuids]
        last = {}
        while time.monotonic() < end:       # busy: the tightest bound comes right after a tick
            for u, ch, obs in chans:
                k = ch.ticks
                if last.get(u) != k:
                    obs.append((time.monotonic(), k))
                    last[u] = k

    def t0(self, uuid):
        return bt.t0_estimate(self.started_at[uuid], self.tick_obs.get(uuid, []), self.ptime_ms / 1000.0)

    def ticks(self, uuid):
        return self.chans[uuid].ticks

    def alive_calls(self, uuids):
        return [u for u in uuids if self.chans[u].state != 2]

    def other_channels(self):
        return 0

    def setvars(self, uuids, variables):
        for u in uuids:
            ch = self.chans[u]
            for k, v in variables.items():
                ch.set_var(k, v)

    def start(self, impl, uuid, url, mix, rate):
        ch = self.chans[uuid]
        k0 = ch.ticks
        t = time.monotonic()
        reply = self._api(impl, "%s start %s %s %s" % (uuid, url, mix, rate_word(rate)))
        t1 = time.monotonic()
        self.start_ticks[uuid] = (k0, ch.ticks)
        return reply.startswith("+OK"), reply, t, t1

    def stop(self, impl, uuid):
        t = time.monotonic()
        reply = self._api(impl, "%s stop" % uuid)
        return reply.startswith("+OK"), reply, t, time.monotonic()

    def event_mark(self):
        return {impl: len(fs.fired()) for impl, fs in self.fs.items()}

    def events_since(self, mark):
        out = []
        for impl, fs in self.fs.items():
            for ev in fs.fired()[mark.get(impl, 0):]:
                out.append({"impl": impl, "subclass": ev.get("Event-Subclass"),
                            "uuid": ev.get("Unique-ID"), "body": ev.get("_body")})
        return out

    def check_alive(self):
        errors = self.sim.violations()
        if errors:
            raise BenchError("the simulator saw %d violation(s): %s" % (errors, self.sim.last_violation()))

    def close(self):
        self.set_path(None)
        for ch in self.chans.values():
            try:
                if ch.state != 2:
                    ch.hangup()
            except Exception:
                pass
        for impl, mod in self.mods.items():
            try:
                service = importlib.import_module(mod.__name__ + ".service")
                end = time.monotonic() + 10
                while service.busy() and time.monotonic() < end:
                    time.sleep(0.02)
                service.stop_loop()
            except Exception:
                pass
        try:
            self.sim.reset()
        except Exception:
            pass
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# real switch: event socket

class EslError(Exception):
    pass


def _read_message(f):
    headers = {}
    while True:
        line = f.readline()
        if not line:
            raise EslError("event socket closed")
        line = line.decode("utf-8", "replace").rstrip("\n")
        if not line:
            if headers:
                break
            continue
        k, _, v = line.partition(": ")
        headers[k] = v
    n = int(headers.get("Content-Length", "0") or 0)
    body = f.read(n) if n else b""
    if n and len(body) < n:
        raise EslError("event socket closed")
    return headers, body.decode("utf-8", "replace")


class Esl:
    """One blocking event-socket connection."""

    def __init__(self, host, port, password, timeout=5.0):
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        except socket.timeout:
            raise BenchError("no FreeSWITCH event socket at %s:%d (timed out)" % (host, port))
        except OSError as e:
            raise BenchError("no FreeSWITCH event socket at %s:%d (%s)" % (host, port, e.strerror or e))
        self.f = self.sock.makefile("rb")
        try:
            h, _ = _read_message(self.f)
            if h.get("Content-Type") != "auth/request":
                raise BenchError("%s:%d is not a FreeSWITCH event socket" % (host, port))
            self._send("auth %s" % password)
            h, _ = _read_message(self.f)
        except (EslError, OSError) as e:
            raise BenchError("event socket at %s:%d: %s" % (host, port, e))
        if not h.get("Reply-Text", "").startswith("+OK"):
            raise BenchError("event socket at %s:%d refused the password (%s)" % (host, port, h.get("Reply-Text")))

    def _send(self, cmd):
        self.sock.sendall((cmd + "\n\n").encode())

    def api(self, cmd, timeout=30.0):
        try:
            self.sock.settimeout(timeout)
            self._send("api " + cmd)
            while True:
                h, body = _read_message(self.f)
                if h.get("Content-Type") == "api/response":
                    return body.strip()
                if h.get("Content-Type") == "text/disconnect-notice":
                    raise EslError("event socket closed")
        except socket.timeout:
            raise EslError("no answer to '%s' within %.0f s" % (cmd.split(" ")[0], timeout))
        except OSError as e:
            raise EslError(str(e))

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class EventListener:
    """CUSTOM mod_audio_stream::* events, timestamped with time.monotonic() on arrival."""

    def __init__(self, host, port, password):
        self.conn = Esl(host, port, password)
        self.events = []
        self.lock = threading.Lock()
        self.dead = None
        self.conn._send("event plain CUSTOM " + " ".join(SUBCLASSES))
        h, _ = _read_message(self.conn.f)
        if not h.get("Reply-Text", "").startswith("+OK"):
            raise BenchError("cannot subscribe to events: %r" % h.get("Reply-Text"))
        self.conn.sock.settimeout(None)
        self.thread = threading.Thread(target=self._run, name="bench-events", daemon=True)
        self.thread.start()

    def _run(self):
        try:
            while True:
                h, body = _read_message(self.conn.f)
                if h.get("Content-Type") != "text/event-plain":
                    if h.get("Content-Type") == "text/disconnect-notice":
                        raise EslError("event socket closed")
                    continue
                t = time.monotonic()
                head, _, ebody = body.partition("\n\n")
                ev = {}
                for line in head.split("\n"):
                    k, _, v = line.partition(": ")
                    ev[k] = unquote(v)
                with self.lock:
                    self.events.append({"t": t, "subclass": ev.get("Event-Subclass"),
                                        "uuid": ev.get("Unique-ID"),
                                        "body": ebody if ev.get("Content-Length") else None})
        except (EslError, OSError, ValueError) as e:
            self.dead = str(e) or "closed"

    def mark(self):
        with self.lock:
            return len(self.events)

    def since(self, mark):
        with self.lock:
            return list(self.events[mark:])

    def close(self):
        self.conn.close()


def parse_status(text):
    """From `status`: uptime (s), max sessions, sessions per second limit."""
    import re
    out = {"ready": "is ready" in text}
    m = re.search(r"UP (\d+) years?, (\d+) days?, (\d+) hours?, (\d+) minutes?, (\d+) seconds?", text)
    if m:
        y, d, h, mi, s = map(int, m.groups())
        out["uptime_s"] = (((y * 365 + d) * 24 + h) * 60 + mi) * 60 + s
    m = re.search(r"(\d+) session\(s\) max", text)
    if m:
        out["max_sessions"] = int(m.group(1))
    m = re.search(r"per Sec out of max (\d+)", text)
    if m:
        out["sps"] = int(m.group(1))
    m = re.search(r"^(\d+) session\(s\) - peak", text, re.M)
    if m:
        out["sessions"] = int(m.group(1))
    return out


class EslDriver(Driver):
    """A real FreeSWITCH over its event socket. Calls are loopback pairs: the a-leg is parked and
    streamed, the b-leg plays noise (a WAV written here) or a 440 Hz tone into it."""
    mode = "esl"

    def __init__(self, progress, host, port, password, impls, base_ref, signal="noise",
                 workers=4, load_c=False):
        super().__init__(progress)
        self.host, self.port, self.password = host, port, password
        self.signal = signal
        self.load_c = load_c
        self.workers = workers
        self.tmp = None
        self.wav = None
        self.restore = {}
        self.restore_vars = {}
        self.names = {"ours": "audio_stream", "c": None}
        self.legs = {}             # a-leg -> b-leg
        self.pacer = None          # bench_tools.Pacer for originates (sessions per second)
        self._pace_lock = threading.Lock()
        self.sps = None            # the switch's sessions-per-second limit in force
        self.c_loaded = False
        self.observing = {}        # a-leg -> b-leg observed by the C module
        self._local = threading.local()
        self._conns = []
        self._pid = None
        self._pool = None
        self.restarted = None      # why, once a restart was seen: nothing more is sent to the switch
        self.events = None
        self.api_conn = None
        try:
            self._setup(host, port, password, impls, base_ref, signal, load_c)
        except BaseException:
            self.close()
            raise

    def _setup(self, host, port, password, impls, base_ref, signal, load_c):
        self.api_conn = Esl(host, port, password)
        self._conns.append(self.api_conn)
        st = parse_status(self.api("status"))
        if not st.get("ready"):
            raise BenchError("the switch at %s:%d is not ready (status: %s)" % (host, port, self.api("status")[:80]))
        self.status0 = st
        self.script_dir = self.api("global_getvar script_dir")
        self.temp_dir = self.api("global_getvar temp_dir")
        local = host in ("127.0.0.1", "localhost", "::1") and os.path.isdir(self.script_dir)
        self.local = local
        self.facts.update({"switch": self.api("version").strip(), "script_dir": self.script_dir,
                           "uptime_s": st.get("uptime_s"), "max_sessions": st.get("max_sessions"),
                           "sps": st.get("sps")})
        if local:
            self._install_probe()
            pid = self.api("python %s pid" % PROBE_NAME)
            if pid.isdigit() and (proc_comm(int(pid)) or "").startswith("freeswitch"):
                self._pid = int(pid)
        if self._pid is None:
            self.progress.log("note: the switch is not on this machine (or its process cannot be "
                              "found): no CPU or memory figures")
        self.facts["pid"] = self._pid
        for impl in impls:
            self._check(impl, base_ref, load_c)
        self.events = EventListener(host, port, password)
        if signal == "noise":
            if not local:
                raise BenchError("--signal noise needs the switch on this machine (it plays a WAV written "
                                 "here); use --signal tone")
            self.tmp = scratch_dir("audio_stream_bench-")
            os.chmod(self.tmp, 0o755)
            self.wav = os.path.join(self.tmp, "noise.wav")
            noise_wav(self.wav)
            os.chmod(self.wav, 0o644)

    # ---- plumbing ----------------------------------------------------------------------------
    def _conn(self):
        c = getattr(self._local, "conn", None)
        if c is None:
            c = self._local.conn = Esl(self.host, self.port, self.password)
            self._conns.append(c)
        return c

    def api(self, cmd, timeout=30.0):
        if self.restarted:
            raise SwitchRestarted(self.restarted)
        main = threading.current_thread() is threading.main_thread()
        if main:
            if self.api_conn is None:
                self.api_conn = Esl(self.host, self.port, self.password, timeout=3)
                self._conns.append(self.api_conn)
            c = self.api_conn
        else:
            c = self._conn()
        try:
            return c.api(cmd, timeout)
        except EslError as e:
            # the connection is unusable now (a late answer would be read as the next one's)
            c.close()
            if main:
                self.api_conn = None
            else:
                self._local.conn = None
            self._diagnose(str(e))
            raise BenchError("the switch at %s:%d: %s" % (self.host, self.port, e))

    def _diagnose(self, why):
        """An event-socket error: say whether the switch restarted or went away."""
        if self._pid is not None:
            if not os.path.exists("/proc/%d" % self._pid) or not (proc_comm(self._pid) or "").startswith("freeswitch"):
                self._restarted("switch restarted or stopped during the run (pid %d is gone; %s): its calls "
                                "and streams are gone" % (self._pid, why))
        try:
            c = Esl(self.host, self.port, self.password, timeout=3)
            st = parse_status(c.api("status", 5))
            c.close()
        except (BenchError, EslError):
            raise BenchError("the switch at %s:%d stopped answering (%s)" % (self.host, self.port, why))
        self._check_uptime(st)

    def _check_uptime(self, st):
        if st.get("uptime_s") is not None and self.status0.get("uptime_s") is not None and \
                st["uptime_s"] < self.status0["uptime_s"]:
            self._restarted("switch restarted during the run (uptime now %d s): its calls and streams are "
                            "gone" % st["uptime_s"])

    def _restarted(self, why):
        self.restarted = why
        raise SwitchRestarted(why)

    def check_alive(self):
        if self.restarted:
            raise SwitchRestarted(self.restarted)
        if self._pid is not None and (not os.path.exists("/proc/%d" % self._pid)
                                      or not (proc_comm(self._pid) or "").startswith("freeswitch")):
            self._restarted("switch restarted or stopped during the run (pid %d is gone): its calls and "
                            "streams are gone" % self._pid)
        if self.events is not None and self.events.dead:
            self._diagnose("event connection: %s" % self.events.dead)
            raise BenchError("lost the event connection to the switch (%s)" % self.events.dead)
        self._check_uptime(parse_status(self.api("status")))

    def parallel(self, fn, items, label):
        if len(items) <= 1 or self.workers <= 1:
            return super().parallel(fn, items, label)
        out = [None] * len(items)
        t0 = time.monotonic()
        done = 0
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="bench-esl")
        futs = {self._pool.submit(fn, it): i for i, it in enumerate(items)}
        try:
            for fut in concurrent.futures.as_completed(futs):
                out[futs[fut]] = fut.result()
                done += 1
                self.progress.count(label, done, len(items), t0)
        except BaseException:
            for f in futs:
                f.cancel()
            concurrent.futures.wait(futs, timeout=35)
            raise
        return out

    def pid(self):
        return self._pid

    def trim(self):
        self.api("python %s trim" % PROBE_NAME)

    def _install_probe(self):
        path = os.path.join(self.script_dir, PROBE_NAME + ".py")
        try:
            cur = open(path).read() if os.path.exists(path) else None
            if cur != PROBE_SOURCE:
                tmp = path + ".tmp-%d" % os.getpid()
                with open(tmp, "w") as f:
                    f.write(PROBE_SOURCE)
                os.chmod(tmp, 0o644)
                os.replace(tmp, path)
        except OSError as e:
            raise BenchError("cannot write %s: %s" % (path, e.strerror or e))

    # ---- implementations ---------------------------------------------------------------------
    def _check(self, impl, base_ref, load_c):
        if impl == "c":
            reply = self.api("uuid_audio_stream")
            if not reply.startswith("-USAGE") and load_c:
                self.progress.log("loading mod_audio_stream (--load-c)")
                self.api("load mod_audio_stream")
                time.sleep(0.5)
                reply = self.api("uuid_audio_stream")
            if not reply.startswith("-USAGE"):
                raise BenchError("uuid_audio_stream is not loaded in the switch (it answers %r); load it with "
                                 "fs_cli -x 'load mod_audio_stream' or run with --load-c" % reply[:60])
            self.facts["c"] = {"module": "mod_audio_stream"}
            self.c_loaded = True
            return
        if impl == "base":
            self.names["base"] = self._export_base(base_ref)
        reply = self.api("python %s" % self.names[impl])
        if not reply.startswith("-USAGE"):
            raise BenchError("%s: `python %s` answers %r: the package is not importable by the switch's "
                             "mod_python3" % (impl, self.names[impl], reply[:100]))
        if impl == "ours" and self.local:
            info = source_info(os.path.join(self.script_dir, "audio_stream"))
            if self._pid is not None:
                started = proc_start_epoch(self._pid)
                newer = [p for p in glob.glob(os.path.join(info["path"], "**", "*.py"), recursive=True)
                         if os.path.getmtime(p) > started]
                if newer:
                    info["changed_since_switch_start"] = len(newer)
                    self.progress.log("note: %d file(s) of %s changed after the switch started; the switch "
                                      "runs what it imported first" % (len(newer), info["path"]))
            self.facts["ours"] = info

    def _export_base(self, ref):
        if not self.local:
            raise BenchError("--impl base needs the switch on this machine (it exports %s into the switch's "
                             "script dir)" % ref)
        sha = resolve_ref(ref)
        name = "audio_stream_base"
        path = os.path.join(self.script_dir, name)
        have = read_marker(path)
        if have != sha:
            loaded = self.api("python %s loaded %s" % (PROBE_NAME, name))
            if loaded.startswith("yes"):
                # the switch keeps the modules it imported: a new export under this name would not be used
                name = "audio_stream_base_%s" % sha[:7]
                path = os.path.join(self.script_dir, name)
                have = read_marker(path)
                self.progress.log("note: the switch already imported another audio_stream_base; %s is "
                                  "exported as %s" % (ref, name))
        if have != sha:
            self.progress.log("exporting %s (%s) to %s" % (ref, sha[:9], path))
            export_ref(sha, self.script_dir, name)
        self.facts["base"] = {"ref": ref, "commit": sha[:12], "module": name}
        return name

    # ---- calls ---------------------------------------------------------------------------------
    def prepare_limits(self, calls, sps=200):
        """Raise max_sessions (to 2 per call + 20) and sessions per second (to `sps`; 0: leave it)
        when lower; restored in close(). Then pace originates under the limit in force: the core
        refills its session budget once a second, to the limit it had then, so a raised limit
        counts from the next second on (a burst right after `fsctl sps` still meets the old one)."""
        need = 2 * calls + 20
        st = parse_status(self.api("status"))
        if st.get("max_sessions") is not None and st["max_sessions"] < need:
            self.restore.setdefault("max_sessions", st["max_sessions"])
            self.progress.log("raising max_sessions %d -> %d (restored at the end)" % (st["max_sessions"], need))
            self.api("fsctl max_sessions %d" % need)
        limit = st.get("sps") or 30
        if sps and limit < sps:
            self.restore.setdefault("sps", limit)
            self.progress.log("raising sessions per second %d -> %d (restored at the end)" % (limit, sps))
            self.api("fsctl sps %d" % sps)
            time.sleep(1.1)             # the new budget is in force from the core's next 1 s refill
            limit = sps
        if self.sps != limit:
            self.sps = limit
            with self._pace_lock:
                self.pacer = bt.Pacer(bt.originate_rate(limit, SPS_SHARE), jitter_s=PTIME_S)
            self.facts["sps"] = limit
            self.facts["originate_sessions_per_s"] = self.pacer.rate

    def _pace(self, sessions):
        if self.pacer is None:
            self.prepare_limits(0, 0)
        with self._pace_lock:
            wait = self.pacer.reserve(sessions, time.monotonic())
        if wait > 0:
            time.sleep(wait)

    def _originate(self, _):
        a = str(uuidlib.uuid4())
        self._pace(2)               # a loopback call is two sessions
        if self.signal == "tone":
            reply = self.api("originate {origination_uuid=%s}loopback/tone/fstest &park()" % a, 30)
        else:
            reply = self.api("originate {origination_uuid=%s}loopback/park/fstest &park()" % a, 30)
        if reply != "+OK " + a:
            return a, None, reply
        b = self.api("uuid_getvar %s other_loopback_leg_uuid" % a)
        if not b or b.startswith("-ERR") or b == "_undef_":
            self.api("uuid_kill %s" % a)
            return a, None, "no b-leg (%s)" % b
        if self.signal == "noise":
            r = self.api("uuid_broadcast %s endless_playback::%s aleg" % (b, self.wav))
            if not r.startswith("+OK"):
                self.api("uuid_kill %s" % a)
                return a, None, "uuid_broadcast: %s" % r
        return a, b, None

    def new_calls(self, n):
        res = self.parallel(self._originate, list(range(n)), "creating calls")
        made, errors = [], []
        for a, b, err in res:
            if err is None:
                made.append(a)
                self.legs[a] = b
            else:
                errors.append(err)
        self.calls.extend(made)
        if errors:
            raise BenchError("%d of %d originates failed, e.g. %s" % (len(errors), n, errors[0][:200]))
        return made

    def other_channels(self):
        """Channels on the switch that are not ours (another test or the lead's run): their load
        changes would show up in our CPU figures."""
        import re
        m = re.search(r"(\d+) total", self.api("show channels count"))
        return None if not m else max(0, int(m.group(1)) - 2 * len(self.calls))

    def alive_calls(self, uuids):
        res = self.parallel(lambda u: self.api("uuid_exists %s" % u) == "true", uuids, "checking calls")
        return [u for u, ok in zip(uuids, res) if ok]

    def setvars(self, uuids, variables):
        if not variables:
            return
        sets = {k: v for k, v in variables.items() if v is not None}
        unsets = [k for k, v in variables.items() if v is None]

        def one(u):
            if sets:
                self.api("uuid_setvar_multi %s %s" % (u, ";".join("%s=%s" % kv for kv in sets.items())))
            for k in unsets:
                self.api("uuid_setvar %s %s" % (u, k))
        self.parallel(one, uuids, "setting channel variables")

    def _api(self, impl, line):
        return self.api("python %s %s" % (self.names[impl], line))

    def set_path(self, path):
        """`global_setvar audio_stream_accel=true|false` (ours reads it when a stream starts); None
        puts back what it was before the run (also done in close())."""
        if "path0" not in self.restore_vars:
            v = self.api("global_getvar %s" % ACCEL_VAR).strip()
            self.restore_vars["path0"] = "" if v in ("", "_undef_") or v.startswith("-ERR") else v
        value = {"accel": "true", "python": "false"}.get(path, self.restore_vars["path0"])
        self.api("global_setvar %s=%s" % (ACCEL_VAR, value))

    # ---- the far end's ear (mono echo) -------------------------------------------------------
    def observers(self):
        if not self.c_loaded:
            if not self.api("uuid_audio_stream").startswith("-USAGE") and self.load_c:
                self.progress.log("loading mod_audio_stream for the observers (--load-c)")
                self.api("load mod_audio_stream")
                time.sleep(0.5)
            self.c_loaded = self.api("uuid_audio_stream").startswith("-USAGE")
        return self.c_loaded

    def observe(self, a_legs, url_for):
        """Stream what each call's b-leg hears (= what ours played into the a-leg) with the C
        module, mono 8 kHz, one message per frame, to url_for(a_leg). Returns how many started."""
        todo = [a for a in a_legs if a not in self.observing and self.legs.get(a)]

        def one(a):
            b = self.legs[a]
            self.api("uuid_setvar %s STREAM_BUFFER_SIZE 20" % b)
            r = self.api("uuid_audio_stream %s start %s mono 8k" % (b, url_for(a)))
            return a, b, r.startswith("+OK"), r
        res = self.parallel(one, todo, "starting %d observers" % len(todo))
        bad = [r for _, _, ok, r in res if not ok]
        for a, b, ok, _ in res:
            if ok:
                self.observing[a] = b
        if bad:
            self.progress.log("note: %d observer(s) did not start: %s" % (len(bad), bad[0][:100]))
        return len(res) - len(bad)

    def _cmd(self, impl, uuid, rest):
        if impl == "c":
            return "uuid_audio_stream %s %s" % (uuid, rest)
        return "python %s %s %s" % (self.names[impl], uuid, rest)

    def start(self, impl, uuid, url, mix, rate):
        t = time.monotonic()
        reply = self.api(self._cmd(impl, uuid, "start %s %s %s" % (url, mix, rate_word(rate))))
        return reply.startswith("+OK"), reply, t, time.monotonic()

    def stop(self, impl, uuid):
        t = time.monotonic()
        reply = self.api(self._cmd(impl, uuid, "stop"))
        return reply.startswith("+OK"), reply, t, time.monotonic()

    def event_mark(self):
        return self.events.mark()

    def events_since(self, mark):
        return self.events.since(mark)

    def hangup(self, uuids):
        def one(u):
            try:
                self.api("uuid_kill %s" % u, 10)
            except BenchError:
                pass
        self.parallel(one, uuids, "hanging up")

    def close(self):
        if self.restarted:          # a new switch: none of our calls, limits back to its defaults
            self.calls, self.restore, self.restore_vars = [], {}, {}
        if self.calls:
            try:
                self.hangup(list(self.calls))
            except Exception:
                pass
            self.calls = []
        if self.restore or self.restore_vars:
            try:
                self.check_alive()
                for k, v in self.restore.items():
                    self.api("fsctl %s %d" % (k, v))
                if "path0" in self.restore_vars:
                    self.set_path(None)
                self.progress.log("restored %s" % ", ".join(
                    ["%s %d" % kv for kv in self.restore.items()] +
                    ["%s=%s" % (ACCEL_VAR, self.restore_vars["path0"] or "(unset)")] * ("path0" in self.restore_vars)))
            except Exception:
                pass
        if self.events is not None:
            self.events.close()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        for c in self._conns:
            c.close()
        if self.tmp:
            time.sleep(0.2)       # the b-legs stop reading the WAV as they hang up
            shutil.rmtree(self.tmp, ignore_errors=True)
