"""Pure parts of scripts/bench: arithmetic on what the sink recorded and /proc read, no I/O.

Everything here is unit-tested (tests/test_bench_tools.py) and documented in docs/performance.md
("Method"). Times are CLOCK_MONOTONIC seconds (time.monotonic() in the bench and in the sink: the
clock is system-wide, so both processes share it).
"""
import math
import os
import random
from dataclasses import dataclass, field

import numpy as np


# ---------------------------------------------------------------------------------------------
# statistics

def percentile(values, q):
    """q-th percentile (0–100, linear interpolation) of a sequence; None when it is empty."""
    if values is None or len(values) == 0:
        return None
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def summary(values, qs=(50, 90, 99)):
    """{"n", "p50", …, "max", "min", "mean"} of a sequence (None figures when empty)."""
    n = 0 if values is None else len(values)
    out = {"n": n}
    for q in qs:
        out["p%g" % q] = percentile(values, q)
    arr = np.asarray(values if n else [], dtype=np.float64)
    out["min"] = float(arr.min()) if n else None
    out["max"] = float(arr.max()) if n else None
    out["mean"] = float(arr.mean()) if n else None
    return out


# ---------------------------------------------------------------------------------------------
# CPU and memory from /proc

def proc_stat_fields(text):
    """The fields of a /proc/<pid>/stat (or /proc/<pid>/task/<tid>/stat) text from field 3 (state)
    on, so that field k of proc(5) is [k - 3]. The command name (field 2) may hold spaces and
    parentheses: split after the last ')'."""
    return text[text.rindex(")") + 2:].split()


def parse_proc_stat(text):
    """utime + stime in clock ticks from the text of /proc/<pid>/stat, and its start time (ticks
    after boot)."""
    rest = proc_stat_fields(text)
    # utime is field 14, stime 15, starttime 22
    utime, stime, start = int(rest[11]), int(rest[12]), int(rest[19])
    return utime + stime, start


def parse_vmrss_kb(text):
    """VmRSS in KB from the text of /proc/<pid>/status; None if absent (a zombie)."""
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return None


def cpu_percent(ticks0, ticks1, t0, t1, hz):
    """% of one core used between two readings of utime+stime (clock ticks) at wall times t0, t1."""
    wall = t1 - t0
    if wall <= 0:
        raise ValueError("empty window")
    return (ticks1 - ticks0) / float(hz) / wall * 100.0


def baseline_for(baselines):
    """The baseline to subtract from a window: the mean of the baseline windows measured just before
    and just after it (one or two numbers; drift between them is averaged out)."""
    vals = [b for b in baselines if b is not None]
    if not vals:
        return None
    return sum(vals) / len(vals)


def drift_per_stream(before, after, n):
    """Half the difference between the baselines before and after a window, per stream: how far the
    calls' own cost moved while the window ran, i.e. the ± to read a per-stream figure with."""
    if before is None or after is None or not n:
        return None
    return abs(after - before) / 2.0 / n


def per_stream(window_pct, baseline_pct, n):
    """CPU % of one core per stream beyond the calls' own cost."""
    if window_pct is None or baseline_pct is None or not n:
        return None
    return (window_pct - baseline_pct) / n


def ratio(a, b):
    if a is None or b is None or b <= 0:
        return None
    return a / b


def parse_cpu_line(text):
    """(busy, total) clock ticks of the whole machine from the text of /proc/stat (its "cpu" line:
    user nice system idle iowait irq softirq steal ...; idle and iowait are not busy)."""
    for line in text.splitlines():
        if line.startswith("cpu "):
            v = [int(x) for x in line.split()[1:]]
            total = sum(v[:8])
            idle = v[3] + (v[4] if len(v) > 4 else 0)
            return total - idle, total
    raise ValueError("no cpu line in /proc/stat")


def machine_busy_pct(a, b):
    """% of the machine's CPU time (all cores) that was busy between two parse_cpu_line() readings."""
    if a is None or b is None or b[1] <= a[1]:
        return None
    return 100.0 * (b[0] - a[0]) / (b[1] - a[1])


def parse_rss_detail(text):
    """VmRSS, RssAnon, RssFile, RssShmem (KB) from /proc/<pid>/status; missing ones are None."""
    out = {"VmRSS": None, "RssAnon": None, "RssFile": None, "RssShmem": None}
    for line in text.splitlines():
        k, _, v = line.partition(":")
        if k in out:
            out[k] = int(v.split()[0])
    return out


def kb_per_stream(before, after, n):
    """RSS growth per stream (KB), or None."""
    if before is None or after is None or not n:
        return None
    return (after - before) / float(n)


def gil_per_stream(st0, st1, wall_s, n):
    """GIL time per stream from two `status` totals of ours taken `wall_s` apart with `n` streams
    up, in ms per stream per second of wall time:

    - `loop_ms`: the loop thread's CPU (loop_cpu_s); `pass_ms`: the part of it spent in capture
      passes with the GIL released (pass_cpu_s; 0 where not reported: the pure-Python path, an
      older build); `callback_ms`: the media-bug callback's CPU (callback_cpu_s);
    - `ms`: the GIL held, loop − pass + callback;
    - `busy_ms`: the loop thread occupied, loop − pass + the wall time it waited for the passes
      (pass_wall_s: its worker threads' share, spread over the machine's cores, included).

    `capacity_gil` = 1000 / ms (streams before the GIL is full), `capacity_loop` = 1000 / busy_ms
    (before the loop thread is: on this machine, since the passes' share falls with more cores),
    `capacity` the smaller, `limit` which ("GIL" or "loop thread"), and `path`. None when the
    totals do not carry the figures (an older build, or the C module)."""
    keys = ("loop_cpu_s", "callback_cpu_s")
    if not st0 or not st1 or not n or wall_s <= 0 or any(k not in st0 or k not in st1 for k in keys):
        return None

    def per(key):
        if key not in st0 or key not in st1:
            return 0.0
        return (st1[key] - st0[key]) * 1000.0 / wall_s / n
    loop, cb, passed, waited = per("loop_cpu_s"), per("callback_cpu_s"), per("pass_cpu_s"), per("pass_wall_s")
    held = loop - passed + cb
    busy = loop - passed + waited
    cap_gil = (1000.0 / held) if held > 0 else None
    cap_loop = (1000.0 / busy) if busy > 0 else None
    caps = [(c, name) for c, name in ((cap_gil, "GIL"), (cap_loop, "loop thread")) if c is not None]
    cap, limit = min(caps) if caps else (None, None)
    return {"loop_ms": loop, "pass_ms": passed, "callback_ms": cb, "ms": held, "busy_ms": busy,
            "wait_ms": waited, "capacity_gil": cap_gil, "capacity_loop": cap_loop, "capacity": cap,
            "limit": limit, "path": st1.get("path") or st0.get("path")}


def status_streams(streams):
    """A digest of the streams in a `status` document: how many, the audio the module itself
    dropped (dropped_ms, summed), reconnections, and its playback queues (ms, median and max)."""
    q = [s.get("playback_queued_ms") or 0 for s in streams]
    return {"n": len(streams), "dropped_ms": sum(s.get("dropped_ms") or 0 for s in streams),
            "reconnects": sum(s.get("reconnects") or 0 for s in streams),
            "playback_queued_ms_p50": percentile(q, 50), "playback_queued_ms_max": max(q) if q else None}


def machine_out(load1, cpus, switch_pct, stalled, max_load_per_cpu, max_busy_pct):
    """Why the machine has run out (the calls alone no longer keep time), or None, from a baseline
    window (calls up, no streams): it stalled (the bench's own sleep overshot), or the switch
    process alone used max_busy_pct % of all the cores (switch_pct is % of one core), or the 1-minute
    load average is over max_load_per_cpu per core."""
    if stalled:
        return "a baseline window stalled (the bench's own sleep overshot)"
    if switch_pct is not None and max_busy_pct is not None and cpus and switch_pct >= max_busy_pct * cpus:
        return "the calls alone kept the switch at %.0f %% of a core, %.0f %% of the %d cores (limit %.0f %%)" % (
            switch_pct, switch_pct / cpus, cpus, max_busy_pct)
    if load1 is not None and max_load_per_cpu is not None and cpus and load1 > max_load_per_cpu * cpus:
        return "load average %.1f over %d cores (limit %g per core)" % (load1, cpus, max_load_per_cpu)
    return None


# ---------------------------------------------------------------------------------------------
# loss and gaps

def byte_rate(rate, channels):
    """Bytes per second of L16 audio."""
    return rate * 2 * channels


@dataclass
class StreamLoss:
    expected_bytes: int
    received_bytes: int
    missing_bytes: int
    missing_ms: float
    extra_ms: float            # received beyond the expectation (e.g. audio buffered while connecting)
    duration_s: float
    max_gap_ms: float          # largest interval between two binary messages (0 with < 2 messages)
    max_gap_at: float          # seconds after t_ref where that gap ended (None without a gap)


def expected_bytes(t_ref, t_end, rate, channels):
    """Audio a stream should have delivered between t_ref and t_end (whole samples)."""
    dur = max(0.0, t_end - t_ref)
    return int(dur * rate) * 2 * channels


def largest_gap(times):
    """(gap_s, index of the message that ended it) over arrival times; (0.0, None) if < 2 messages."""
    if times is None or len(times) < 2:
        return 0.0, None
    d = np.diff(np.asarray(times, dtype=np.float64))
    i = int(np.argmax(d))
    return float(d[i]), i + 1


def stream_loss(sizes, times, t_ref, t_end, rate, channels):
    """Loss of one stream: `sizes`/`times` are its binary messages as the sink saw them; the stream
    was capturing from t_ref to t_end (see docs/performance.md for which instants those are)."""
    received = int(sum(sizes)) if sizes is not None else 0
    exp = expected_bytes(t_ref, t_end, rate, channels)
    missing = max(0, exp - received)
    br = byte_rate(rate, channels)
    gap, at = largest_gap(times)
    return StreamLoss(
        expected_bytes=exp, received_bytes=received, missing_bytes=missing,
        missing_ms=missing / br * 1000.0, extra_ms=max(0, received - exp) / br * 1000.0,
        duration_s=max(0.0, t_end - t_ref), max_gap_ms=gap * 1000.0,
        max_gap_at=(float(times[at]) - t_ref) if at is not None else None)


def phase_of(t, marks):
    """Name of the phase of the run an instant falls in; marks = [(name, start time), …] in order."""
    name = None
    for n, t0 in marks:
        if t0 is not None and t >= t0:
            name = n
    return name


def window_loss(streams, w0, w1, rate, channels):
    """Audio lost inside one window of time, over all streams: bytes that arrived between w0 and w1
    against what (w1 − w0) of audio should give. Arrival lags capture by each stream's latency, about
    constant, so the window of arrivals stands for a window of captures of the same length; the
    edges are worth ± one message per stream and average out over streams. `streams` is a list of
    (sizes, times). Returns % (0 when nothing is missing) or None without streams."""
    if not streams or w1 <= w0:
        return None
    owed = (w1 - w0) * rate * 2 * channels * len(streams)
    got = 0
    for sizes, times in streams:
        t = np.asarray(times, dtype=np.float64)
        z = np.asarray(sizes, dtype=np.int64)
        got += int(z[(t >= w0) & (t < w1)].sum()) if len(t) else 0
    return max(0.0, 100.0 * (owed - got) / owed)


def loss_tolerance_ms(buffer_ms, ptime_ms=20):
    """How much missing audio a stream may show and still count as lossless: the measurement cannot
    place the first and last captured frame to better than one frame, and a module may drop a
    partly filled message at stop (the C module does)."""
    return float(buffer_ms) + float(ptime_ms)


def loss_summary(losses, tolerance_ms, failed_starts=0):
    """Aggregate StreamLoss objects (dict uuid -> StreamLoss) of one configuration."""
    total_exp = sum(l.expected_bytes for l in losses.values())
    total_missing = sum(l.missing_bytes for l in losses.values())
    worst_uuid, worst = None, None
    gap_uuid, gap = None, None
    for u, l in losses.items():
        if worst is None or l.missing_ms > worst.missing_ms:
            worst_uuid, worst = u, l
        if gap is None or l.max_gap_ms > gap.max_gap_ms:
            gap_uuid, gap = u, l
    lossy = sorted(u for u, l in losses.items() if l.missing_ms > tolerance_ms)
    return {
        "streams": len(losses),
        "expected_s": None if not losses else total_exp / max(1, len(losses)),
        "loss_pct": (100.0 * total_missing / total_exp) if total_exp else None,
        "worst_stream": worst_uuid,
        "worst_missing_ms": worst.missing_ms if worst else None,
        "worst_duration_s": worst.duration_s if worst else None,
        "largest_gap_ms": gap.max_gap_ms if gap else None,
        "largest_gap_stream": gap_uuid,
        "lossy_streams": len(lossy),
        "tolerance_ms": tolerance_ms,
        "failed_starts": failed_starts,
        "zero_loss": (failed_starts == 0 and not lossy and bool(losses)),
    }


# ---------------------------------------------------------------------------------------------
# latency against a reference stream of the same samples (the C module on a real switch)

KEY_SAMPLES = 16


def _find_even(hay, needle, start=0):
    """bytes.find restricted to even offsets (int16 sample boundaries); -1 if absent."""
    pos = hay.find(needle, start)
    while pos >= 0 and pos % 2:
        pos = hay.find(needle, pos + 1)
    return pos


def cumulative_samples(sizes, bytes_per_sample=2):
    """End (exclusive) sample index of each message in its stream."""
    return np.cumsum(np.asarray(sizes, dtype=np.int64)) // bytes_per_sample


@dataclass
class Alignment:
    latencies_ms: list = field(default_factory=list)   # one per matched message of the stream
    matched: int = 0
    unmatched: int = 0        # messages whose last samples the reference never carried
    ambiguous: int = 0        # last samples found twice in the reference (periodic signal)
    realigned: int = 0        # times the offset between the two streams changed (a loss in one)


def align_latency(data, sizes, times, ref_data, ref_sizes, ref_times, key=KEY_SAMPLES):
    """Latency of each message of a stream against a reference stream carrying the same int16 samples
    (both L16 mono at the same rate, e.g. ours and the C module at 8 kHz on the same call).

    For every message of `data`, its last `key` samples are looked up in `ref_data` (by content:
    the predicted position first, else a search); the reference message that carried the same last
    sample is the one whose end covers it, and the latency is arrival − that message's arrival.
    Needs a non-periodic signal (noise): a key found twice is skipped and counted as ambiguous."""
    res = Alignment()
    data, ref_data = bytes(data), bytes(ref_data)
    ends = cumulative_samples(sizes)
    ref_ends = cumulative_samples(ref_sizes)
    nref = len(ref_data) // 2
    kb = key * 2
    off = None                     # ref index = our index + off
    for m, e in enumerate(ends):
        e = int(e)
        if e < key:
            res.unmatched += 1
            continue
        pat = data[(e - key) * 2:e * 2]
        if off is not None:
            p = e - key + off
            if not (0 <= p and p + key <= nref and ref_data[p * 2:p * 2 + kb] == pat):
                off = None
                res.realigned += 1
        if off is None:
            pos = _find_even(ref_data, pat)
            if pos < 0:
                res.unmatched += 1
                continue
            if _find_even(ref_data, pat, pos + 2) >= 0:
                res.ambiguous += 1
                continue
            off = pos // 2 - (e - key)
        last = e - 1 + off
        i = int(np.searchsorted(ref_ends, last, side="right"))
        if i >= len(ref_ends):
            res.unmatched += 1
            continue
        res.matched += 1
        res.latencies_ms.append((float(times[m]) - float(ref_times[i])) * 1000.0)
    return res


def inter_arrival_ms(times):
    """Intervals between consecutive arrivals, in ms."""
    if times is None or len(times) < 2:
        return []
    return list(np.diff(np.asarray(times, dtype=np.float64)) * 1000.0)


# ---------------------------------------------------------------------------------------------
# latency against the simulator's clock (no C module there)

def sim_tone(n, hz, amplitude, rate):
    """The first n samples the simulator's channel reads (fssim.c gen_tone: phase accumulated in a
    double from 0, wrapped at 2π, lrint of amp·sin)."""
    out = np.empty(n, dtype=np.int16)
    step = 2.0 * math.pi * hz / rate
    two_pi = 2.0 * math.pi
    phase = 0.0
    sin = math.sin
    for i in range(n):
        v = amplitude * sin(phase) if hz > 0 else 0.0
        v = max(-32768.0, min(32767.0, v))
        out[i] = int(np.rint(v))
        phase += step
        if phase > two_pi:
            phase -= two_pi
    return out


def first_frame_index(first_samples, reference, candidates, frame_samples):
    """Which frame of the call (0-based) a stream's first samples are: the candidate frame whose
    reference samples match best (max abs difference ≤ 1 LSB); None if none matches."""
    first = np.asarray(first_samples, dtype=np.int32)
    n = min(len(first), frame_samples)
    best, best_err = None, None
    for f in candidates:
        if f < 0:
            continue
        a = f * frame_samples
        ref = reference[a:a + n]
        if len(ref) < n:
            continue
        err = int(np.max(np.abs(ref.astype(np.int32) - first[:n]))) if n else 0
        if best_err is None or err < best_err:
            best, best_err = f, err
    if best is None or best_err > 1:
        return None
    return best


def t0_estimate(t_started, observations, period):
    """Start of a simulated channel's tick clock: tick k (1-based) is due at t0 + k·period. Each
    observation (t, ticks) bounds t0 ≤ t − ticks·period (tick `ticks` had run by t); the tightest
    bound is the estimate (it includes the smallest lateness seen). Never before t_started."""
    ub = None
    for t, k in observations:
        v = t - k * period
        if ub is None or v < ub:
            ub = v
    if ub is None:
        return t_started
    return max(t_started, ub)


def sim_latencies(sizes, times, first_frame, t0, period, frame_samples, bytes_per_sample=2):
    """Latency of each message of an 8 kHz mono stream on the simulator: the message's last sample
    is in frame (first_frame + (end − 1) // frame_samples), 0-based, captured at tick
    (that + 1), due at t0 + (that + 1)·period."""
    ends = cumulative_samples(sizes, bytes_per_sample)
    out = []
    for m, e in enumerate(ends):
        f = first_frame + (int(e) - 1) // frame_samples
        out.append((float(times[m]) - (t0 + (f + 1) * period)) * 1000.0)
    return out


# ---------------------------------------------------------------------------------------------
# echo: the sink's probe signal, and what the call heard of it

PROBE_CARRIER_HZ = 400.0
PROBE_MARKER_HZ = (800.0, 1200.0, 1600.0, 2000.0, 2400.0)
PROBE_AMPLITUDE = 8000
BLOCK_MS = 2.5                   # the detector's resolution
SILENCE_DB = -26.0               # a block this far under the probe's level is silent
MIN_SILENCE_MS = 10.0            # a silent run at least this long inside the probe is an inserted gap
MIN_MARKER_BLOCKS = 3            # blocks of one marker frequency in a row that make a marker


class EchoProbe:
    """What the sink plays back in echo mode: for every message it receives, the same duration of a
    continuous tone (PROBE_CARRIER_HZ) at the stream's rate, in which every `every_ms` a 20 ms
    stretch at one of PROBE_MARKER_HZ (in turn) marks an instant the sink knows. Markers start at
    the first sample of a message, so their send time is that message's.

    Sample i is A·sin(ωc·i), and inside a marker that starts at s, A·sin(ωc·s + ωm·(i − s)): the
    tone is continuous where a marker starts, and where it ends too, because every marker frequency
    differs from the carrier's by a multiple of 50 Hz, whole cycles in 20 ms. So the carrier is a
    table (one period, repeated) and only the marker's samples are computed."""

    MARKER_MS = 20

    def __init__(self, rate, every_ms=500, amplitude=PROBE_AMPLITUDE):
        self.rate = rate
        self.amplitude = amplitude
        self.every = max(1, int(rate * every_ms / 1000))
        self.mlen = max(1, rate * self.MARKER_MS // 1000)
        self.pos = 0                 # samples produced so far
        self.next_marker = self.every
        self.seq = 0
        self.marker = None           # (start, code) of the marker being produced
        self._wc = 2 * math.pi * PROBE_CARRIER_HZ / rate
        self._period = rate // math.gcd(rate, int(PROBE_CARRIER_HZ))
        self._table = np.zeros(0, dtype="<i2")

    def _carrier(self, n):
        p = self._period
        if len(self._table) < p + n:
            self._table = np.rint(self.amplitude * np.sin(self._wc * np.arange(p + max(n, 4 * p)))).astype("<i2")
        a = self.pos % p
        return self._table[a:a + n].copy()

    def take(self, n):
        """The next n samples (int16) and the marker that starts at the first of them, as
        (seq, code), or None."""
        started = None
        if self.marker is None and self.pos >= self.next_marker:
            code = self.seq % len(PROBE_MARKER_HZ)
            self.marker = (self.pos, code)
            started = (self.seq, code)
            self.seq += 1
            self.next_marker = self.pos + self.every
        out = self._carrier(n)
        if self.marker is not None:
            s, code = self.marker
            k = min(n, s + self.mlen - self.pos)
            if k > 0:
                wm = 2 * math.pi * PROBE_MARKER_HZ[code] / self.rate
                i = np.arange(self.pos - s, self.pos - s + k)
                out[:k] = np.rint(self.amplitude * np.sin(self._wc * s + wm * i))
            if self.pos + n >= s + self.mlen:
                self.marker = None
        self.pos += n
        return out, started


class EchoDetector:
    """What the call heard of the probe (mono samples at `rate`, fed with the arrival time of the
    message that carried them). Cuts the audio into BLOCK_MS blocks and names each one: silent
    (RMS SILENCE_DB under the probe's), the carrier, marker k, or unclear (a frequency change or a
    glitch inside it). The frequency of a block is exact for a pure tone whatever the block length:
    x[n-1] + x[n+1] = 2·cos(ω)·x[n], solved by least squares over the block.

    Reports marker onsets, (code, arrival time of the block that began the run), once a run of
    MIN_MARKER_BLOCKS blocks of one marker; and silent runs of at least MIN_SILENCE_MS inside the
    probe: after the carrier was first heard ("armed") and ended by sound again (a run still open
    at the end is the stream's end, not a gap)."""

    def __init__(self, rate, amplitude=PROBE_AMPLITUDE, tolerance_hz=150.0):
        self.rate = rate
        self.B = max(8, int(round(rate * BLOCK_MS / 1000.0)))
        self.block_ms = self.B * 1000.0 / rate
        self.thr = amplitude / math.sqrt(2) * 10 ** (SILENCE_DB / 20.0)
        self.freqs = np.array((PROBE_CARRIER_HZ,) + PROBE_MARKER_HZ)
        self.tol = tolerance_hz
        self.pending = np.zeros(0, dtype=np.int16)
        self.armed = False
        self.armed_at = None
        self.blocks = 0
        self.unclear = 0
        self.onsets = []          # (code, t)
        self.silences = []        # (t at the gap's start, ms)
        self._kind = None         # the current run: kind, length, arrival time of its first block
        self._len = 0
        self._t = None
        self._marked = False

    def classify(self, x):
        """Kinds of the blocks of x (nb × B float array): -2 silent, -1 unclear, 0 carrier, k marker k-1."""
        rms = np.sqrt(np.mean(x * x, axis=1))
        mid = x[:, 1:-1]
        e = np.sum(mid * mid, axis=1)
        p = np.sum(mid * (x[:, :-2] + x[:, 2:]), axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            c = np.clip(np.where(e > 0, p / (2 * e), 1.0), -1.0, 1.0)
        f = np.arccos(c) * self.rate / (2 * math.pi)
        d = np.abs(f[:, None] - self.freqs[None, :])
        j = np.argmin(d, axis=1)
        kind = np.where(d[np.arange(len(j)), j] <= self.tol, j, -1)
        return np.where(rms < self.thr, -2, kind)

    def feed(self, chunks):
        """chunks: [(int16 samples, arrival time), ...] in order. Returns the new onsets."""
        arrays = [self.pending] + [np.asarray(s, dtype=np.int16) for s, _ in chunks]
        data = np.concatenate(arrays)
        ends = len(self.pending) + np.cumsum([len(s) for s, _ in chunks])
        times = np.asarray([t for _, t in chunks], dtype=np.float64)
        nb = len(data) // self.B
        self.pending = data[nb * self.B:].copy()
        if not nb:
            return []
        kinds = self.classify(data[:nb * self.B].reshape(nb, self.B).astype(np.float64))
        # each block's arrival: that of the message that brought its last sample
        msg = np.searchsorted(ends, (np.arange(nb) + 1) * self.B - 1, side="right")
        tb = times[np.minimum(msg, len(times) - 1)]
        self.blocks += nb
        self.unclear += int(np.count_nonzero(kinds == -1))
        starts = np.concatenate(([0], np.flatnonzero(kinds[1:] != kinds[:-1]) + 1))
        lens = np.diff(np.concatenate((starts, [nb])))
        new = []
        for a, n in zip(starts.tolist(), lens.tolist()):      # a few runs per batch, not every block
            k = int(kinds[a])
            if k != self._kind:
                self._end_run(k)
                self._kind, self._len, self._t, self._marked = k, 0, float(tb[a]), False
            self._len += n
            if k >= 1 and not self._marked and self._len >= MIN_MARKER_BLOCKS:
                self._marked = True
                new.append((k - 1, self._t))
            if k == 0 and not self.armed and self._len >= 4:
                self.armed, self.armed_at = True, self._t
        self.onsets.extend(new)
        return new

    def _end_run(self, next_kind):
        if self._kind == -2 and self.armed and next_kind != -2:
            ms = self._len * self.block_ms
            if ms >= MIN_SILENCE_MS:
                self.silences.append((self._t, ms))


class MarkerMatcher:
    """Pairs the markers the sink sent with the ones heard, in order (the playback queue is a FIFO):
    a heard marker of code c is the oldest unheard sent marker of that code, skipping at most
    len(PROBE_MARKER_HZ) − 1 older ones (lost: the call never heard them)."""

    def __init__(self, codes=len(PROBE_MARKER_HZ), maxlen=4096):
        from collections import deque
        self.codes = codes
        self.sent = deque(maxlen=maxlen)
        self.n_sent = 0
        self.lost = 0
        self.unmatched = 0
        self.rtt_ms = []

    def sent_marker(self, seq, code, t):
        self.sent.append((seq, code, t))
        self.n_sent += 1

    def heard(self, code, t):
        """The round trip in ms, or None (nothing sent matches: counted as unmatched)."""
        for i, (_, c, ts) in enumerate(self.sent):
            if i >= self.codes:
                break
            if c == code and ts <= t:
                for _ in range(i):
                    self.sent.popleft()
                self.lost += i
                self.sent.popleft()
                rtt = (t - ts) * 1000.0
                self.rtt_ms.append(rtt)
                return rtt
        self.unmatched += 1
        return None


class EchoEar:
    """One place the call is heard from (the stream's own right channel, or the far end): a detector,
    the sent markers to pair with what it hears, and a batch of audio not yet analysed."""

    def __init__(self, rate, batch_ms=200):
        self.detector = EchoDetector(rate)
        self.matcher = MarkerMatcher()
        self._batch = []
        self._n = 0
        self._max = max(1, int(rate * batch_ms / 1000))

    def add(self, samples, t):
        self._batch.append((samples, t))
        self._n += len(samples)
        if self._n >= self._max:
            self.flush()

    def flush(self):
        if not self._batch:
            return
        batch, self._batch, self._n = self._batch, [], 0
        for code, t in self.detector.feed(batch):
            self.matcher.heard(code, t)

    def result(self):
        self.flush()
        d, m = self.detector, self.matcher
        return {"armed": d.armed, "heard_ms": d.blocks * d.block_ms, "unclear_blocks": d.unclear,
                "markers_sent": m.n_sent, "markers_heard": len(m.rtt_ms), "markers_lost": m.lost,
                "markers_unmatched": m.unmatched, "rtt_ms": [round(x, 2) for x in m.rtt_ms],
                "silences": [(round(t, 4), round(ms, 1)) for t, ms in d.silences]}


class EchoState:
    """One echoed stream in the sink: the probe it sends back, and the ears that listen for it.
    `reply(nbytes)` answers a received message of nbytes (`channels` interleaved at `rate`: stereo
    is answered with its left channel's duration, in mono); `sent(marker, t)` records when a reply
    carrying a marker went out; `heard(ear, samples, t)` takes what that ear heard (batched)."""

    def __init__(self, rate, channels, ears=None, every_ms=500, batch_ms=200):
        self.rate = rate
        self.channels = channels
        self.probe = EchoProbe(rate, every_ms)
        self.ears = {name: EchoEar(r, batch_ms) for name, r in (ears or {}).items() if r}
        self.replies = 0
        self.reply_samples = 0

    def reply(self, nbytes):
        n = nbytes // (2 * self.channels)
        self.replies += 1
        self.reply_samples += n
        return self.probe.take(n)

    def sent(self, marker, t):
        if marker is not None:
            for ear in self.ears.values():
                ear.matcher.sent_marker(marker[0], marker[1], t)

    def heard(self, ear, samples, t):
        e = self.ears.get(ear)
        if e is not None:
            e.add(samples, t)

    def result(self):
        return {"replies": self.replies, "reply_ms": 1000.0 * self.reply_samples / self.rate,
                "ears": {name: e.result() for name, e in self.ears.items()}}


def echo_summary(results, ear):
    """What one ear heard over every stream of a window: round trips (p50/p90/p99/max over every
    marker), markers heard/sent, and the silent gaps heard inside the probe. None when no stream
    had that ear."""
    rs = [r["ears"][ear] for r in results if ear in (r.get("ears") or {})]
    if not rs:
        return None
    rtt = [x for r in rs for x in r["rtt_ms"]]
    gaps = [ms for r in rs for _, ms in r["silences"]]
    return {"streams": len(rs), "armed": sum(1 for r in rs if r["armed"]),
            "rtt_ms": summary(rtt, qs=(50, 90, 99)),
            "markers_sent": sum(r["markers_sent"] for r in rs),
            "markers_heard": sum(r["markers_heard"] for r in rs),
            "markers_lost": sum(r["markers_lost"] for r in rs),
            "markers_unmatched": sum(r["markers_unmatched"] for r in rs),
            "silent_gaps": len(gaps), "silent_gap_ms_max": max(gaps) if gaps else None,
            "silent_gap_ms_total": sum(gaps), "streams_with_gaps": sum(1 for r in rs if r["silences"]),
            "heard_s": sum(r["heard_ms"] for r in rs) / 1000.0}


# ---------------------------------------------------------------------------------------------
# pacing (the switch's sessions-per-second limit)

class Pacer:
    """Spaces events out so that at most `rate` units go per second, evenly: reserve(cost) says how
    long to wait before an event of `cost` units may go (and books it). FreeSWITCH refills its
    session budget (`sps`) once a second and refuses every session over it ("Throttle Error"); a
    loopback call is 2 sessions. `jitter_s`: each event goes up to that much later than its slot,
    at random (calls made exactly 20 ms apart would all run their 20 ms media clocks in step; real
    calls do not). Not thread-safe by itself: call under a lock."""

    def __init__(self, rate, jitter_s=0.0, rng=None):
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        self.jitter_s = jitter_s
        self.rng = rng or random.Random()
        self.free_at = None

    def reserve(self, cost=1.0, now=None):
        start = now if self.free_at is None else max(now, self.free_at)
        self.free_at = start + cost / self.rate
        return start - now + (self.rng.uniform(0.0, self.jitter_s) if self.jitter_s else 0.0)


def originate_rate(sps, share=0.5):
    """Sessions per second the bench creates calls at, under a switch limit of `sps`: a share of it,
    leaving the rest to whatever else the switch does in the same second."""
    return max(1.0, sps * share)


# ---------------------------------------------------------------------------------------------
# sweep

DEFAULT_SWEEP = (50, 100, 200, 300)


def parse_sweep(text, step=100, maximum=500):
    """'50,100,200,300,…' (or '…' / '...' at the end): the listed N, then + step up to maximum.
    Without the ellipsis, only the listed N. Empty: the default list with the ellipsis."""
    text = (text or "").strip()
    if not text:
        text = ",".join(str(n) for n in DEFAULT_SWEEP) + ",..."
    parts = [p.strip() for p in text.split(",") if p.strip()]
    more = False
    if parts and parts[-1] in ("...", "…"):
        more = True
        parts = parts[:-1]
    try:
        ns = [int(p) for p in parts]
    except ValueError:
        raise ValueError("--sweep wants numbers like 50,100,200 (optionally ending in ,...): %r" % text)
    if not ns or any(n <= 0 for n in ns):
        raise ValueError("--sweep wants positive numbers: %r" % text)
    if any(b <= a for a, b in zip(ns, ns[1:])):
        raise ValueError("--sweep numbers must increase: %r" % text)
    if more:
        n = ns[-1] + step
        while n <= maximum:
            ns.append(n)
            n += step
    return [n for n in ns if n <= maximum] or ns[:1]


class Sweep:
    """Which N each implementation still has to run: stop increasing N for an implementation once it
    loses audio or a start fails; the answer is the largest N it carried with zero loss."""

    def __init__(self, impls, ns):
        self.impls = list(impls)
        self.ns = list(ns)
        self.alive = {i: True for i in self.impls}
        self.best = {i: None for i in self.impls}
        self.failed_at = {i: None for i in self.impls}
        self.results = []     # (n, impl, zero_loss)

    def impls_for(self, n):
        return [i for i in self.impls if self.alive[i]]

    def record(self, n, impl, zero_loss):
        self.results.append((n, impl, bool(zero_loss)))
        if zero_loss:
            if self.best[impl] is None or n > self.best[impl]:
                self.best[impl] = n
        else:
            self.alive[impl] = False
            self.failed_at[impl] = n

    def done(self):
        return not any(self.alive.values())

    def steps(self):
        """The N still to run, in order (stops early once every implementation has failed)."""
        for n in self.ns:
            if self.done():
                return
            yield n


# ---------------------------------------------------------------------------------------------
# formatting

def fmt(v, spec="%.2f", none="n/a"):
    if v is None:
        return none
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return none
    return spec % v


def table(rows, header=None, align=None):
    """Plain-text table: first column left-aligned, the others right-aligned."""
    rows = [list(map(str, r)) for r in rows]
    if header:
        rows = [list(map(str, header))] + rows
    if not rows:
        return ""
    widths = [max(len(r[i]) if i < len(r) else 0 for r in rows) for i in range(max(len(r) for r in rows))]
    out = []
    for j, r in enumerate(rows):
        cells = []
        for i, w in enumerate(widths):
            c = r[i] if i < len(r) else ""
            left = (align[i] == "l") if align else (i == 0)
            cells.append(c.ljust(w) if left else c.rjust(w))
        out.append("  ".join(cells).rstrip())
        if header and j == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


# ---- the sink's scheduling -----------------------------------------------------------------------

SCHED_NAMES = {0: "SCHED_OTHER", 1: "SCHED_FIFO", 2: "SCHED_RR", 3: "SCHED_BATCH", 5: "SCHED_IDLE"}


def thread_sched(stat_line):
    """(policy, rt_priority) from a /proc/<pid>/task/<tid>/stat line, or None."""
    try:
        fields = proc_stat_fields(stat_line)
        return int(fields[41 - 3]), int(fields[40 - 3])      # policy, rt_priority
    except (ValueError, IndexError):
        return None


def lowest_rt(scheds):
    """The real-time class and priority the switch's least urgent real-time threads run at (its
    session threads: SCHED_FIFO 1 for FreeSWITCH started with real-time priority), as (policy,
    priority); None when none of its threads is real-time."""
    rt = [(prio, pol) for pol, prio in scheds if pol in (1, 2) and prio > 0]
    if not rt:
        return None
    prio, pol = min(rt)
    return pol, prio


def switch_rt(pid):
    """lowest_rt() of a running process's threads (from /proc), or None."""
    scheds = []
    try:
        tids = os.listdir("/proc/%d/task" % pid)
    except OSError:
        return None
    for tid in tids:
        try:
            with open("/proc/%d/task/%s/stat" % (pid, tid)) as f:
                s = thread_sched(f.read())
        except OSError:
            continue
        if s is not None:
            scheds.append(s)
    return lowest_rt(scheds)
