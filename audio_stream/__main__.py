"""python -m audio_stream <command> [options]: what an operator runs from a shell.

Not used inside FreeSWITCH (mod_python3 imports the package itself, never this file).
"""
import importlib
import sys

# name -> (module with a main(argv) function, one line of help)
COMMANDS = {
    "demo": ("audio_stream.demo", "a simulated call streams through the real stack (no FreeSWITCH needed)"),
    "install": ("audio_stream.tools.installer", "install where FreeSWITCH's mod_python3 imports it (--uninstall: remove it)"),
    "status": ("audio_stream.tools.status", "ask a running FreeSWITCH whether audio_stream answers"),
    "top": ("audio_stream.tools.top", "watch a running FreeSWITCH's streams, refreshed every second"),
    "record-server": ("audio_stream.examples.record_server", "example server: one WAV file per stream"),
    "echo-bot": ("audio_stream.examples.echo_bot", "example server: plays the caller back, with marks and barge-in"),
    "twilio-bot": ("audio_stream.examples.twilio_bot", "example Twilio Media Streams server (STREAM_PROTOCOL=twilio)"),
}


def usage():
    from .version import VERSION
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: python -m audio_stream <command> [options]   (audio_stream %s)" % VERSION, "",
             "commands:"]
    lines += ["  %-*s  %s" % (width, name, text) for name, (_, text) in COMMANDS.items()]
    lines += ["  %-*s  %s" % (width, "version", "print the version"), "",
              "'python -m audio_stream <command> --help' describes each command.",
              "Inside FreeSWITCH: fs_cli -x 'python audio_stream' lists the call commands."]
    return "\n".join(lines)


def main(argv=None):
    from .tools import cli
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name in ("version", "--version"):
        from . import accelerator
        from .version import VERSION
        print(VERSION)
        print(accelerator.media_path())
        return 0
    if name not in COMMANDS:
        raise cli.CLIError("unknown command '%s' (one of: %s; see python -m audio_stream --help)"
                           % (name, ", ".join(list(COMMANDS) + ["version"])), 2)
    module = importlib.import_module(COMMANDS[name][0])
    return module.main(rest, prog="python -m audio_stream %s" % name)


if __name__ == "__main__":
    from .tools import cli
    cli.run(main)
