"""audio_stream: stream FreeSWITCH call audio to a WebSocket, play the server's audio back.

mod_python3 entry points. mod_python3 imports AND reloads this module on every call, so it keeps
no state and delegates at once to submodules (imported once, never reloaded).

  API:        python audio_stream <uuid> start <ws-url> <mono|mixed|stereo> [8k|16k|rate] [metadata]
  dialplan:   <action application="python" data="audio_stream start <ws-url> mono 16k"/>
  startup:    <param name="startup-script" value="audio_stream"/> in python.conf.xml
"""
import os as _os
import sys as _sys

# audio-stream-install puts the dependencies in _deps inside the package (docs/operations.md):
# first on the path, so that they win over older copies elsewhere (Debian's python3-aiohttp).
_DEPS = _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "_deps")
if _DEPS not in _sys.path and _os.path.isdir(_DEPS):
    _sys.path.insert(0, _DEPS)


import ctypes as _ctypes

# bound at import (mod_python3 reloads this module before each call, with no error pending)
_clear_error = _ctypes.pythonapi.PyErr_Clear


def fsapi(session=None, stream=None, env=None, args=None):
    """`python audio_stream <args>` from fs_cli / ESL."""
    if stream is None:
        # mod_python3 calls us with no arguments, and a UnicodeDecodeError pending, when the line
        # is not valid UTF-8: nothing can be answered (FreeSWITCH says "-ERR no reply"), but the
        # pending error must not outlive the call (Python would report a SystemError). Nothing
        # else may run before the clear: an import or a global that misses would raise it.
        _clear_error()
        from .switch import backend
        backend().log("ERR", "a 'python audio_stream' command line that is not valid UTF-8 was ignored")
        return
    from . import api
    stream.write(api.execute(args) + "\n")


def handler(session, args=None):
    """`<action application="python" data="audio_stream <command> …"/>`: acts on this call."""
    from . import api
    from .switch import backend
    uuid = session.get_uuid()
    reply = api.execute("%s %s" % (uuid, args or ""))
    level = "INFO" if reply.startswith("+OK") else "ERR"
    backend().log(level, "%s -> %s" % ((args or "").split(" ", 1)[0], reply), uuid)


def runtime(args=None):
    """startup-script: start the background loop at load, so the first call pays nothing, and the
    metrics endpoint if audio_stream.conf has one."""
    from . import exporter, service
    service.loop()
    exporter.startup()
