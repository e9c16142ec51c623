"""audio_stream: stream FreeSWITCH call audio to a WebSocket, play the server's audio back.

mod_python3 entry points. mod_python3 imports AND reloads this module on every call, so it keeps
no state and delegates at once to submodules (imported once, never reloaded).

  API:        python audio_stream <uuid> start <ws-url> <mono|mixed|stereo> [8k|16k|rate] [metadata]
  dialplan:   <action application="python" data="audio_stream start <ws-url> mono 16k"/>
  startup:    <param name="startup-script" value="audio_stream"/> in python.conf.xml
"""


def fsapi(session=None, stream=None, env=None, args=None):
    """`python audio_stream <args>` from fs_cli / ESL."""
    if stream is None:
        # mod_python3 calls us with no arguments, and a UnicodeDecodeError pending, when the line
        # is not valid UTF-8: nothing can be done or answered (FreeSWITCH says "-ERR no reply").
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
