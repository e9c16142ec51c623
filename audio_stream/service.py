"""Process-wide state that must survive mod_python3's reload of the entry module: the one
asyncio loop thread that owns every WebSocket, the registry of live streams, and the capture
clock that reads every stream's buffered audio once per tick.
"""
import asyncio
import atexit
import concurrent.futures
import threading
import time

from . import connection, metrics
from .switch import backend

TICK_S = 0.010                # the capture clock: accelerated streams are read on every tick
POLL_EVERY = 2                # ... the others (pure-Python path) on every second tick (20 ms)
MAINTAIN_EVERY = 20           # every stream's maintain() (latency recovery) every 20 ticks (200 ms)
LAG_WARN_S = 0.2              # a tick this late is logged (rate-limited): the process is overloaded
LAG_LOG_EVERY_S = 10.0

_lock = threading.RLock()
_loop = None
_thread = None
_http = None
streams = {}          # (uuid, name) -> Stream (the live ones)
finishing_streams = set()   # streams whose media has ended and whose WebSocket is closing


def loop():
    """The background loop, started on first use (or by the startup script)."""
    global _loop, _thread
    with _lock:
        if _loop is not None and _thread is not None and _thread.is_alive():
            return _loop
        ready = threading.Event()
        new_loop = asyncio.new_event_loop()
        new_loop.set_exception_handler(_loop_error)

        def run():
            asyncio.set_event_loop(new_loop)
            new_loop.call_soon(ready.set)
            try:
                new_loop.run_forever()
            finally:
                try:
                    new_loop.run_until_complete(new_loop.shutdown_asyncgens())
                    new_loop.run_until_complete(new_loop.shutdown_default_executor())
                except Exception:
                    pass
                new_loop.close()

        t = threading.Thread(target=run, name="audio_stream-loop", daemon=True)
        t.start()
        if not ready.wait(10):
            raise RuntimeError("audio_stream loop thread did not start")
        _loop, _thread = new_loop, t
        return _loop


def _loop_error(loop, context):
    """What asyncio reports itself (a callback that raised, a connection nobody closed) goes to the
    switch's log, where the operator looks, not only to the switch's stderr."""
    message = context.get("message") or "unhandled error"
    exc = context.get("exception")
    if exc is not None:
        message += ": %r" % (exc,)
    try:
        backend().log("ERR", "loop thread: " + message)
    except Exception:
        loop.default_exception_handler(context)


def call(coro, timeout=5.0):
    """Run a coroutine on the loop from another thread and wait for its result."""
    fut = asyncio.run_coroutine_threadsafe(coro, loop())
    try:
        return fut.result(timeout)
    except concurrent.futures.TimeoutError:
        fut.cancel()
        raise


def submit(coro):
    """Schedule a coroutine on the loop without waiting."""
    return asyncio.run_coroutine_threadsafe(coro, loop())


def http():
    """The shared WebSocket client (loop thread only): see connection.client()."""
    global _http
    if _http is None or _http.closed:
        _http = connection.client()
    return _http


# ---- the capture clock (loop thread only) ------------------------------------------------------

class _Clock:
    """Reads every registered stream's capture once per tick, in one pass: the accelerated ones in
    one C call with the GIL released (`_accel.capture_pass`), the others one by one (`poll()`).
    Runs only while there are streams. Remembers how late its ticks ran (the loop thread's load)."""

    def __init__(self):
        self.streams = {}         # stream -> None (insertion-ordered set): polled one by one
        self.batched = {}         # stream -> its capture's C object: read in one capture_pass
        self._batch = None        # (streams, C objects) as lists, rebuilt when the set changes
        self.handle = None
        self.due = 0.0
        self.lag = 0.0            # how late the last tick ran, s
        self.lag_peak = 0.0       # the largest lateness over the last LAG_LOG_EVERY_S
        self.lag_peak_at = 0.0
        self.lag_logged_at = -1e9
        self.ticks = 0

    def add(self, stream):
        batch = stream.capture.batch
        if batch is not None:
            self.batched[stream] = batch
            self._batch = None
        else:
            self.streams[stream] = None
        if self.handle is None:
            lp = asyncio.get_running_loop()
            self.due = lp.time() + TICK_S
            self.handle = lp.call_at(self.due, self.tick)

    def remove(self, stream):
        self.streams.pop(stream, None)
        if self.batched.pop(stream, None) is not None:
            self._batch = None
        if not self.streams and not self.batched and self.handle is not None:
            self.handle.cancel()
            self.handle = None

    def tick(self):
        lp = asyncio.get_running_loop()
        now = lp.time()
        self.lag = lag = now - self.due
        self.ticks += 1
        metrics.tick_late(lag)
        if lag > self.lag_peak or now - self.lag_peak_at > LAG_LOG_EVERY_S:
            self.lag_peak, self.lag_peak_at = lag, now
        if self.batched:
            self._pass()
        if self.streams and self.ticks % POLL_EVERY == 0:
            for stream in list(self.streams):
                try:
                    stream.poll()
                except Exception as e:  # one stream's failure must not stop the others' audio
                    stream.log("ERR", "capture failed: %r" % (e,))
        if self.ticks % MAINTAIN_EVERY == 0:
            t = time.monotonic()
            for stream in list(self.streams) + list(self.batched):
                try:
                    stream.maintain(t)
                except Exception as e:
                    stream.log("ERR", "playback upkeep failed: %r" % (e,))
        if lag > LAG_WARN_S and now - self.lag_logged_at > LAG_LOG_EVERY_S:
            self.lag_logged_at = now
            backend().log("WARNING", "the capture clock ran %d ms late with %d streams: the process is "
                          "overloaded, audio may be delayed or dropped" % (lag * 1000, len(self.streams) +
                                                                           len(self.batched)))
        self.due += TICK_S
        if self.due < now:        # far behind: do not try to catch up with a burst of ticks
            self.due = now + TICK_S
        if self.streams or self.batched:
            self.handle = lp.call_at(self.due, self.tick)
        else:
            self.handle = None

    def _pass(self):
        from .switch.accel import capture_pass
        if self._batch is None:
            self._batch = (list(self.batched), list(self.batched.values()))
        streams, objs = self._batch
        try:
            results = capture_pass(objs)
        except Exception as e:
            backend().log("ERR", "capture pass failed: %r" % (e,))
            return
        for i, data in results:      # only the streams that read something (or lost their bug)
            stream = streams[i]
            try:
                stream.captured(stream.capture.convert(data))
            except Exception as e:  # one stream's failure must not stop the others' audio
                stream.log("ERR", "capture failed: %r" % (e,))


_clock = _Clock()


def poll_add(stream):
    """Loop thread: read this stream on every tick of the capture clock."""
    _clock.add(stream)


def poll_remove(stream):
    _clock.remove(stream)


def loop_lag_ms():
    """The largest lateness of the capture clock over the last few seconds, in ms."""
    return int(_clock.lag_peak * 1000) if time.monotonic() - _clock.lag_peak_at < LAG_LOG_EVERY_S else 0


def gil_stats():
    """What the process's Python costs, as far as it is measured, for metrics and status: a dict
    with `loop_cpu_s` (the loop thread's CPU time in s, only when called on the loop thread),
    and, where measured, `media_cpu_s` (Python's CPU time on media threads, s) and `path` (which
    capture path runs). On the accelerated path also `pass_cpu_s` (of loop_cpu_s, the part spent
    in capture passes with the GIL released) and `pass_wall_s` (the wall time the loop thread
    waited for them, the pass's other threads included): the loop thread holds the GIL for
    loop_cpu_s - pass_cpu_s, and is busy for that + pass_wall_s. metrics.GIL_KEYS names what the
    exporter makes of each key."""
    from .switch import media
    cb = media.callback_cpu_s()
    path = backend().media_path()
    out = {"callback_cpu_s": cb, "media_cpu_s": cb, "path": path.name}
    if _thread is not None and threading.current_thread() is _thread:
        out["loop_cpu_s"] = time.thread_time()
        released = path.released_s()
        if released is not None:
            out["pass_cpu_s"], out["pass_wall_s"] = released
    return out


def register(stream, max_per_call=None):
    """Make `stream` live under (uuid, name). Returns None, or why not."""
    with _lock:
        if stream.key in streams:
            return "already streaming on %s%s (stop it first)" % (
                stream.uuid, "" if stream.name == "default" else " as '%s'" % stream.name)
        if max_per_call is not None and len(call_streams(stream.uuid)) >= max_per_call:
            return "%s already has %d streams (the most one call may have)" % (stream.uuid, max_per_call)
        streams[stream.key] = stream
        return None


def unregister(stream):
    with _lock:
        if streams.get(stream.key) is stream:
            del streams[stream.key]


def retire(stream):
    """The stream's media ended: off the registry; tracked until finished() if still closing."""
    with _lock:
        unregister(stream)
        if stream.state != "closed":
            finishing_streams.add(stream)


def finished(stream):
    """The stream's WebSocket side is done (loop thread; idempotent)."""
    with _lock:
        finishing_streams.discard(stream)


def busy():
    """True while any stream is live or closing (tests, shutdown)."""
    with _lock:
        return bool(streams or finishing_streams)


def get(uuid, name="default"):
    with _lock:
        return streams.get((uuid, name))


def call_streams(uuid):
    """The live streams of one call, oldest first."""
    with _lock:
        return [s for (u, _), s in streams.items() if u == uuid]


def all_streams():
    with _lock:
        return list(streams.values()), list(finishing_streams)


def live_count():
    """Live streams (max_streams in audio_stream.conf counts these)."""
    with _lock:
        return len(streams)


def _at_exit():
    """mod_python3 calls Py_Finalize when FreeSWITCH unloads it (fsctl shutdown): whatever is
    still streaming (graceful-shutdown, reconnecting) closes with 1001 within a second."""
    try:
        stop_loop(timeout=2.0)
    except Exception:
        pass


atexit.register(_at_exit)


def stop_loop(timeout=5.0):
    """Close every stream (1001, going away) and stop the loop thread. For shutdown and tests."""
    global _loop, _thread
    with _lock:
        lp, t = _loop, _thread
        _loop = _thread = None
    if lp is None:
        return

    from . import exporter

    async def close_all():
        global _http
        pending = list(streams.values()) + list(finishing_streams)
        if pending:
            await asyncio.gather(*(s.shutdown(1001, 1.0) for s in pending), return_exceptions=True)
        if _http is not None:
            await _http.close()
            _http = None
        await exporter.close()

    try:
        asyncio.run_coroutine_threadsafe(close_all(), lp).result(timeout)
    except Exception:
        pass
    lp.call_soon_threadsafe(lp.stop)
    if t is not None:
        t.join(timeout)
    from .switch import accel
    accel.unwatch()
    global _clock
    _clock = _Clock()
