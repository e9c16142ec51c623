"""Run one command line against the switch and the stream registry; return the reply text.

Called on FreeSWITCH's API or session thread (fsapi/handler). It validates, locates the session
(read lock held only for the duration of the call), and hands work to the loop without waiting
for the network: `start` answers as soon as the bug is attached.
"""
import concurrent.futures
import time

from . import commands, config, connection, dialects, exporter, protocol, service, settings_xml, wiring
from .commands import CommandError, err
from .config import ConfigError
from .switch import backend
from .version import VERSION

LOOP_TIMEOUT = 5.0


def execute(line, be=None):
    """The reply for one command line: '+OK …', '-ERR …' or '-USAGE: …'. Never raises."""
    try:
        cmd = commands.parse(line)
        return run(cmd, be or backend())
    except CommandError as e:
        return e.reply
    except Exception as e:  # last line of defence: the switch must get an answer
        try:
            (be or backend()).log("ERR", "internal error on '%s': %r" % (line, e))
        except Exception:
            pass
        return "-ERR internal error: %s" % (e,)


MAX_STREAMS_PER_CALL = 4


def run(cmd, be):
    if cmd.uuid is None:
        return _reload(be) if cmd.name == "reload" else _global(cmd)
    core = be.core
    session = core.locate(cmd.uuid)
    if not session:
        raise err("no such channel '%s'" % cmd.uuid)
    try:
        return _dispatch(cmd, be, session)
    finally:
        core.unlock(session)


def _reload(be):
    """`reload`: read audio_stream.conf through the switch again (after `reloadxml`)."""
    conf = settings_xml.current(be, force=True)
    if conf.error:
        raise err(conf.error)
    reply = "+OK reloaded: %d settings" % conf.count
    if conf.problems:
        reply += ", %d ignored (see the log)" % len(conf.problems)
    if not conf.found:
        reply += " (no %s: built-in defaults)" % settings_xml.CONF_NAME
    try:
        metrics = exporter.apply(conf, be, force=True, wait=True)
    except concurrent.futures.TimeoutError:
        metrics = "metrics: the loop thread did not answer within %g s" % exporter.APPLY_TIMEOUT_S
    if metrics:
        reply += "; " + metrics
    return reply


def _live(cmd):
    stream = service.get(cmd.uuid, cmd.stream)
    if stream is None:
        if cmd.stream != commands.DEFAULT_NAME:
            raise err("no stream named '%s' on %s" % (cmd.stream, cmd.uuid))
        raise err("not streaming on %s" % cmd.uuid)
    return stream


def _status(streams, totals=None):
    """The status of every stream asked for; `totals` (a dict) gets service.gil_stats(), taken
    on the loop thread."""
    async def collect():
        if totals is not None:
            totals.update(service.gil_stats())
        return [s.status() for s in streams]
    try:
        return service.call(collect(), LOOP_TIMEOUT)
    except concurrent.futures.TimeoutError:
        raise err("audio_stream's loop thread did not answer within %g s: the process is overloaded"
                  % LOOP_TIMEOUT) from None


def _global(cmd):
    if cmd.name == "version":
        import sys
        from .switch import accel
        path = backend().media_path().name
        return "audio_stream %s (python %s, media path: %s)" % (
            VERSION, sys.version.split()[0], path if path == "accel" else "python: %s" % (accel.why_not() or
                                                                                            "audio_stream_accel=false"))
    live, finishing = service.all_streams()
    totals = {"live": len(live), "closing": len(finishing), "loop_lag_ms": service.loop_lag_ms()}
    streams = _status(live + finishing, totals) if (live or finishing) else []
    return protocol.dumps({"version": VERSION, "streams": streams, "totals": totals})


def _on_loop(fn, *args):
    """Run a plain function on the loop thread and wait for it (stream controls)."""
    async def call():
        return fn(*args)
    try:
        return service.call(call(), LOOP_TIMEOUT)
    except concurrent.futures.TimeoutError:
        raise err("audio_stream's loop thread did not answer within %g s: the process is overloaded"
                  % LOOP_TIMEOUT) from None


def _dispatch(cmd, be, session):
    name = cmd.name
    if name == "start":
        return _start(cmd, be, session)
    if name == "status":
        streams = service.call_streams(cmd.uuid)
        if cmd.stream != commands.DEFAULT_NAME:
            streams = [s for s in streams if s.name == cmd.stream]
        return protocol.dumps({"version": VERSION, "streams": _status(streams) if streams else []})
    stream = _live(cmd)
    controls = stream.controls
    if name in ("stop", "graceful_shutdown"):
        if cmd.text is not None:
            commands.check_utf8(cmd.text, "the stop text")
        why = _on_loop(controls.stop if name == "stop" else controls.graceful_shutdown, cmd.text)
    elif name == "send_text":
        why = _on_loop(controls.send_text, commands.check_utf8(cmd.text, "the text"))
    elif name in ("pause", "resume"):
        why = _on_loop(controls.pause, name == "pause")
    else:           # playback_pause, playback_resume, playback_clear
        if stream.player.queue is None:
            raise err("playback is off for this stream (STREAM_PLAYBACK=false)")
        if name == "playback_clear":
            why = _on_loop(controls.playback_clear)
        else:
            why = _on_loop(controls.playback_pause, name == "playback_pause")
    if why:
        raise err(why)
    return commands.OK


def _start(cmd, be, session):
    core = be.core
    if cmd.text is not None:
        commands.check_utf8(cmd.text, "the metadata")
    if service.get(cmd.uuid, cmd.stream) is not None:
        raise err("already streaming on %s%s (stop it first)" % (
            cmd.uuid, "" if cmd.stream == commands.DEFAULT_NAME else " as '%s'" % cmd.stream))
    if not core.pre_answer(session):
        raise err("cannot pre-answer %s: the channel has no media" % cmd.uuid)
    impl = core.read_impl(session)
    if impl is None or not impl.actual_samples_per_second or impl.microseconds_per_packet <= 0:
        raise err("channel %s has no read codec yet" % cmd.uuid)
    call_rate = impl.actual_samples_per_second
    ptime_ms = impl.microseconds_per_packet // 1000
    conf = settings_xml.current(be)
    exporter.apply(conf, be)
    try:
        settings = config.settings_from(lambda n: core.get_var(session, n), ptime_ms, defaults=conf.defaults)
    except ConfigError as e:
        raise err(str(e)) from None
    settings = conf.limit(settings, lambda level, message: be.log(level, message, cmd.uuid))
    why = dialects.dialect_class(settings.protocol).refuse(cmd.mix, cmd.rate, settings)
    if why:
        raise err(why)
    # one stream per call plays the server's audio into it: two would fight over every frame
    plays = not any(s.player.queue is not None for s in service.call_streams(cmd.uuid))
    stream = wiring.make_stream(be, service, cmd.uuid, cmd, settings, call_rate, ptime_ms, plays)
    # registered while attaching: a command that finds it now waits for the attach (lifecycle.py)
    why = service.register(stream, MAX_STREAMS_PER_CALL)
    if why:
        raise err(why)
    if conf.max_streams and service.live_count() > conf.max_streams:
        service.unregister(stream)
        raise err("too many streams (%d, max_streams in %s)" % (conf.max_streams, settings_xml.CONF_NAME))
    ok, reason = stream.attach(session)
    if not ok:
        service.unregister(stream)
        stream.attach_failed()
        raise err(reason)
    service.submit(stream.run())
    if not settings.suppress_log:
        be.log("INFO", "streaming %s %d Hz to %s" % (cmd.mix, cmd.rate, connection.redact(cmd.url)), cmd.uuid)
    return commands.OK
