"""The only package that touches FreeSWITCH.

`backend()` returns the process's Backend: the core C API (ctypes) plus mod_python3's
`freeswitch` module. Inside FreeSWITCH it binds `ctypes.CDLL(None)` and `import freeswitch` on
first use; tests and the demo call `install()` first with the simulator and a stand-in module.
"""
import importlib
import threading

from . import core

LEVELS = ("DEBUG", "INFO", "NOTICE", "WARNING", "ERR", "CRIT", "ALERT")

_backend = None
_lock = threading.Lock()


ACCEL_VARIABLE = "audio_stream_accel"     # global variable: false = the pure-Python media path
OFF_VALUES = ("0", "false", "no", "off")


class Backend:
    def __init__(self, core_api, fs_module):
        self.core = core_api
        self.fs = fs_module
        self._python_path = None

    def media_path(self):
        """The media path for a new stream: the compiled accelerator when it is built and loads
        (switch/accel.py), unless the global variable audio_stream_accel (or the environment's
        AUDIO_STREAM_ACCEL) is false; else the pure-Python path (switch/media.py)."""
        from . import accel, media
        try:
            want = (self.fs.getGlobalVariable(ACCEL_VARIABLE) or "").strip().lower() not in OFF_VALUES
        except Exception:
            want = True
        p = accel.path(self.core) if want else None
        if p is None:
            if self._python_path is None:
                self._python_path = media.PythonPath(self.core)
            p = self._python_path
        return p

    def log(self, level, message, uuid=None):
        """Log through FreeSWITCH (consoleLog); never raises."""
        try:
            text = ("%s %s" % (uuid, message)) if uuid else message
            self.fs.consoleLog(level, "audio_stream: %s\n" % text)
        except Exception:
            pass

    def fire(self, uuid, subclass, body, headers=None):
        """Fire CUSTOM `subclass` with the channel's headers (when the call is still up) and
        a body, through the `freeswitch` module's native Event."""
        ev = self.fs.Event("CUSTOM", subclass)
        session = self.core.locate(uuid) if uuid else None
        if session:
            try:
                self.core.event_set_data(session, int(ev.event))
            finally:
                self.core.unlock(session)
        elif uuid:
            ev.addHeader("Unique-ID", uuid)
        for name, value in (headers or {}).items():
            ev.addHeader(name, str(value))
        if body is not None:
            ev.addBody(body)
        return ev.fire()

    def temp_dir(self):
        try:
            value = self.fs.getGlobalVariable("temp_dir")
        except Exception:
            value = None
        if not value:
            import tempfile
            value = tempfile.gettempdir()
        return value


def install(core_api, fs_module):
    """Use this core and `freeswitch` module (the simulator in tests and the demo)."""
    global _backend
    with _lock:
        _backend = Backend(core_api, fs_module)
    return _backend


def backend():
    global _backend
    if _backend is None:
        with _lock:
            if _backend is None:
                _backend = Backend(core.load_default(), importlib.import_module("freeswitch"))
    return _backend
