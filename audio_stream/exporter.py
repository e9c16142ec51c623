"""The metrics endpoint: `GET /metrics` over HTTP on the loop thread, in Prometheus's text format
(metrics.py makes the text). Off unless audio_stream.conf has `<metrics><param name="listen"
value="127.0.0.1:9464"/></metrics>`.

`apply(conf, be)` (API threads) makes the endpoint match the conf: it starts, moves or stops the
listener on the loop when `listen` changed since the last apply; `python audio_stream reload`
(force) also retries a listener that could not be bound. A scrape renders on the loop thread in
well under a millisecond per hundred streams, and at most once per MIN_RENDER_INTERVAL_S: more
frequent scrapes get the same text, so a busy scraper cannot take the loop from the calls.
"""
import asyncio
import os
import socket
import threading
import time

from . import metrics, service
from .version import VERSION

MIN_RENDER_INTERVAL_S = 0.25
APPLY_TIMEOUT_S = 5.0

_lock = threading.Lock()
_applied = None          # the (host, port) the last apply asked for (API threads)

# loop thread only
_runner = None
_bound = None            # (host, port) listening now
_error = None            # why the last bind failed
_switching = None        # (loop, asyncio.Lock): one change at a time
_cache = (0.0, b"")


def _address(listen):
    host, port = listen
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


def describe():
    """One phrase for replies: where the endpoint listens, or why not (None: off)."""
    if _bound is not None:
        return "metrics on http://%s/metrics" % _address(_bound)
    if _error is not None:
        return "metrics off: %s" % _error
    return None


def apply(conf, be, force=False, wait=False):
    """Make the endpoint match `conf.metrics_listen` (API thread). Does nothing when it did not
    change since the last call, unless `force`. `wait`: wait for the change and return
    describe(), else return at once (None)."""
    global _applied
    want = conf.metrics_listen
    with _lock:
        before, _applied = _applied, want
    if want == before and (not force or want is None):
        return None                  # no change (a reload retries a listener that failed)
    if not wait:
        service.submit(_switch(want, be))
        return None
    return service.call(_switch(want, be), APPLY_TIMEOUT_S)


def startup():
    """At load (the startup script): listen if audio_stream.conf says so."""
    from . import settings_xml
    from .switch import backend
    be = backend()
    try:
        apply(settings_xml.current(be), be)
    except Exception as e:  # the startup script must not fail for the metrics' sake
        be.log("ERR", "metrics: cannot start the endpoint at load: %r" % (e,))


async def _switch(want, be):
    global _switching
    lp = asyncio.get_running_loop()
    if _switching is None or _switching[0] is not lp:
        _switching = (lp, asyncio.Lock())
    async with _switching[1]:
        await _change(want, be)
    return describe()


async def _change(want, be):
    global _runner, _bound, _error
    if want is not None and want == _bound:
        return
    if _runner is not None:
        old = _bound
        await _stop()
        be.log("NOTICE", "metrics endpoint on %s stopped" % _address(old))
    _error = None
    if want is None:
        return
    from aiohttp import web
    app = web.Application()
    app.router.add_get("/metrics", _handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, want[0], want[1])
        await site.start()
    except OSError as e:
        await runner.cleanup()
        _error = "cannot listen on %s: %s" % (_address(want), _why(e))
        be.log("ERR", "metrics: %s (<metrics> listen in audio_stream.conf): no metrics until it is changed and "
               "`python audio_stream reload` runs" % _error)
        return
    _runner, _bound = runner, want
    be.log("NOTICE", "metrics on http://%s/metrics" % _address(want))


def _why(e):
    if isinstance(e, socket.gaierror) or not e.errno or e.errno < 0:
        return e.strerror or str(e)
    return os.strerror(e.errno)         # asyncio's message repeats the address


async def _stop():
    global _runner, _bound, _cache
    runner, _runner, _bound = _runner, None, None
    _cache = (0.0, b"")
    if runner is not None:
        try:
            await asyncio.wait_for(runner.cleanup(), 2.0)
        except (asyncio.TimeoutError, Exception):
            pass


async def close():
    """The loop is stopping: stop listening; the next apply starts again."""
    global _applied, _error
    with _lock:
        _applied = None
    _error = None
    await _stop()


def render():
    """The text of a scrape now (loop thread)."""
    t0 = time.perf_counter()
    live, finishing = service.all_streams()
    text = metrics.exposition(live, finishing, service.loop_lag_ms() / 1000.0, service.gil_stats(), VERSION)
    metrics.SCRAPE.set(round(time.perf_counter() - t0, 6))
    return text


async def _handle(request):
    global _cache
    from aiohttp import web
    now = time.monotonic()
    at, body = _cache
    if not body or now - at >= MIN_RENDER_INTERVAL_S:
        body = render().encode()
        _cache = (now, body)
    return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})
