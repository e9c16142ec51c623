"""Ask a running FreeSWITCH how audio_stream is doing, over its event socket.

Checks that mod_python3 is loaded and that `python audio_stream` answers, then runs
`python audio_stream status` and shows its answer: as a table (--pretty, the default on a
terminal) or as the switch's JSON document alone (--json, the default when the output is not a
terminal: for jq and scripts; the checks then go to stderr when one fails). Exit status 0 when
audio_stream answers, 1 when it does not, 2 when no switch could be reached.

The event socket comes from --esl / --password, else AUDIO_STREAM_ESL (host:port) and
AUDIO_STREAM_ESL_PASSWORD, else 127.0.0.1:8021 with FreeSWITCH's default password.
"""
import json
import os
import shutil
import sys

from . import cli, esl, view

PROG = "python -m audio_stream status"


def add_esl_options(p):
    # a string default goes through `type` too, and --help shows it as written
    default = os.environ.get("AUDIO_STREAM_ESL") or "%s:%d" % (esl.DEFAULT_HOST, esl.DEFAULT_PORT)
    p.add_argument("--esl", type=cli.host_port(esl.DEFAULT_PORT), default=default, metavar="HOST:PORT",
                   help="FreeSWITCH's event socket (event_socket.conf.xml: listen-ip, listen-port)")
    p.add_argument("--password", default=os.environ.get("AUDIO_STREAM_ESL_PASSWORD", esl.DEFAULT_PASSWORD),
                   help="the event socket's password (event_socket.conf.xml: password)")


def check(conn):
    """[(label, reply, ok)] for the switch behind `conn`."""
    rows = [("FreeSWITCH", conn.api("version"), True)]
    loaded = conn.api("module_exists mod_python3")
    rows.append(("module_exists mod_python3", loaded, loaded == "true"))
    usage = conn.api("python audio_stream")
    rows.append(("python audio_stream", usage, usage.startswith("-USAGE")))
    status = conn.api("python audio_stream status")
    rows.append(("python audio_stream status", status, not status.startswith("-ERR no reply")))
    return rows


def advice(rows):
    """What to do about the first failed check, or None."""
    for label, reply, ok in rows:
        if ok:
            continue
        if label == "module_exists mod_python3":
            from .install_probe import find_fs_cli
            return ("mod_python3 is not loaded: add <load module=\"mod_python3\"/> to modules.conf.xml "
                    "and run %s -x 'load mod_python3'" % (find_fs_cli() or "fs_cli"))
        if label == "python audio_stream":
            return ("mod_python3 cannot import audio_stream (FreeSWITCH's log says why: look for "
                    "'Python Error by calling script \"audio_stream\"'); install it with "
                    "python -m audio_stream install")
    return None


def connect_error(e, host, port):
    """The CLIError (exit status 2) for an event socket that cannot be used."""
    if isinstance(e, esl.ESLError):
        hint = ("give the right --password (event_socket.conf.xml)" if "password" in str(e)
                else "start FreeSWITCH, or give --esl HOST:PORT")
        return cli.CLIError("%s: %s" % (e, hint), 2)
    return cli.CLIError("the event socket at %s:%d failed: %s" % (host, port, cli.describe_os_error(e)), 2)


def document(rows):
    """The switch's status document (a dict) when every check passed, else None."""
    if advice(rows):
        return None
    try:
        doc = json.loads(rows[-1][1])
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def print_rows(rows, host, port, out):
    print("event socket %s:%d" % (host, port), file=out)
    for label, reply, ok in rows:
        lines = reply.splitlines() or [""]
        print("%-28s %s" % (label + ":", lines[0]), file=out)
        for line in lines[1:]:
            print("%-28s %s" % ("", line), file=out)
    status_reply = rows[-1][1]
    if status_reply.startswith("-ERR") and "missing command" in status_reply:
        print("(this version of audio_stream in the switch has no status command yet: the answer above "
              "is what it said)", file=out)


def pretty(rows, doc, host, port, width, color):
    """The lines of --pretty for a switch whose checks all passed."""
    version = rows[0][1].splitlines()[0] if rows[0][1] else "?"
    return [("event socket %s:%d: %s" % (host, port, version))[:width],
            "mod_python3 loaded, python audio_stream answers"] + view.render_status(doc, width, color)


def main(argv=None, prog=PROG):
    p = cli.parser(prog, __doc__)
    add_esl_options(p)
    how = p.add_mutually_exclusive_group()
    how.add_argument("--pretty", action="store_true", help="a table (the default when the output is a terminal)")
    how.add_argument("--json", action="store_true", help="the switch's JSON document alone (the default otherwise)")
    a = p.parse_args(argv)
    host, port = a.esl
    tty = sys.stdout.isatty()
    as_json = a.json or not (a.pretty or tty)
    try:
        with esl.connect(host, port, a.password) as conn:
            rows = check(conn)
    except (esl.ESLError, OSError) as e:
        raise connect_error(e, host, port)
    doc = document(rows)
    hint = advice(rows)
    if as_json and doc is not None:
        print(rows[-1][1])
    elif doc is not None:
        width = shutil.get_terminal_size((100, 24)).columns if tty else 160
        color = tty and not os.environ.get("NO_COLOR")
        print("\n".join(pretty(rows, doc, host, port, width, color)))
    else:
        out = sys.stderr if as_json else sys.stdout
        print_rows(rows, host, port, out)
        if hint:
            print("next: " + hint, file=out)
    return 1 if hint else 0


if __name__ == "__main__":
    cli.run(main)
