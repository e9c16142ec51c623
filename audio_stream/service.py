"""Process-wide state that must survive mod_python3's reload of the entry module: the one
asyncio loop thread that owns every WebSocket, and the registry of live streams.
"""
import asyncio
import concurrent.futures
import threading

import aiohttp

_lock = threading.RLock()
_loop = None
_thread = None
_http = None
streams = {}          # uuid -> Stream (the live one for that call)
finishing_streams = set()   # streams whose media has ended and whose WebSocket is closing


def loop():
    """The background loop, started on first use (or by the startup script)."""
    global _loop, _thread
    with _lock:
        if _loop is not None and _thread is not None and _thread.is_alive():
            return _loop
        ready = threading.Event()
        new_loop = asyncio.new_event_loop()

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
    """The shared aiohttp ClientSession (loop thread only)."""
    global _http
    if _http is None or _http.closed:
        _http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True))
    return _http


def register(uuid, stream):
    """Make `stream` the call's live stream; False if one is already live."""
    with _lock:
        if uuid in streams:
            return False
        streams[uuid] = stream
        return True


def unregister(uuid, stream):
    with _lock:
        if streams.get(uuid) is stream:
            del streams[uuid]


def retire(uuid, stream):
    """The stream's media ended: off the registry; tracked until finished() if still closing."""
    with _lock:
        unregister(uuid, stream)
        if not stream.finished:
            finishing_streams.add(stream)


def finished(stream):
    """The stream's WebSocket side is done (any thread; idempotent)."""
    with _lock:
        stream.finished = True
        finishing_streams.discard(stream)


def busy():
    """True while any stream is live or closing (tests, shutdown)."""
    with _lock:
        return bool(streams or finishing_streams)


def get(uuid):
    with _lock:
        return streams.get(uuid)


def stop_loop(timeout=5.0):
    """Close every stream (1001, going away) and stop the loop thread. For shutdown and tests."""
    global _loop, _thread, _http
    with _lock:
        lp, t = _loop, _thread
        _loop = _thread = None
    if lp is None:
        return

    async def close_all():
        global _http
        for s in list(streams.values()) + list(finishing_streams):
            await s.shutdown()
        if _http is not None:
            await _http.close()
            _http = None

    try:
        asyncio.run_coroutine_threadsafe(close_all(), lp).result(timeout)
    except Exception:
        pass
    lp.call_soon_threadsafe(lp.stop)
    if t is not None:
        t.join(timeout)
