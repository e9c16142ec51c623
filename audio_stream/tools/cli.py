"""What every command-line tool of the package shares: one-line errors with a non-zero exit,
argument types that say what is wrong, and progress for anything slow.

    def main(argv=None):
        p = cli.parser("python -m audio_stream.x", __doc__)
        p.add_argument("--seconds", type=cli.seconds, default=3.0, help="...")
        a = p.parse_args(argv)
        ...
    if __name__ == "__main__":
        cli.run(main)

Errors a person can fix are raised as CLIError (exit 1) or reported by the parser (exit 2); an
unexpected exception prints one line naming it (AUDIO_STREAM_DEBUG=1 prints the traceback).
"""
import argparse
import contextlib
import errno
import os
import sys
import threading
import time


class CLIError(Exception):
    """A problem the user can act on: printed as one line, exit status `code`."""

    def __init__(self, message, code=1):
        super().__init__(message)
        self.code = code


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the description's line breaks; show each option's default (not for on/off flags)."""

    def _get_help_string(self, action):
        if action.default in (None, False) or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, "%s: %s (see --help)\n" % (self.prog, message))


def parser(prog, doc, **kw):
    """An ArgumentParser whose description is the whole module docstring."""
    return ArgumentParser(prog=prog, description=(doc or "").strip(), formatter_class=_Formatter, **kw)


def run(main, argv=None):
    """Call main(argv) and exit with its status; turn errors into one line on stderr."""
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "audio_stream"
    try:
        status = main(argv)
    except CLIError as e:
        print("error: %s" % e, file=sys.stderr)
        status = e.code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        status = 130
    except OSError as e:
        if os.environ.get("AUDIO_STREAM_DEBUG"):
            raise
        print("error: %s" % describe_os_error(e), file=sys.stderr)
        status = 1
    except Exception as e:  # a bug: say so in one line, keep the traceback available
        if os.environ.get("AUDIO_STREAM_DEBUG"):
            raise
        print("%s: internal error: %r (set AUDIO_STREAM_DEBUG=1 for the traceback)" % (prog, e),
              file=sys.stderr)
        status = 70
    sys.exit(status or 0)


def describe_os_error(e):
    """'cannot open /x: Permission denied' rather than a 20-line traceback."""
    what = e.strerror or str(e)
    if e.filename is not None:
        return "%s: %s" % (e.filename, what)
    return what


# ---- argument types ------------------------------------------------------------------------------

def _number(text):
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a number, got '%s'" % text) from None


def seconds(text):
    """A duration in seconds, more than 0 and at most one hour."""
    value = _number(text)
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError("must be more than 0 and at most 3600, got %s" % text)
    return value


def port(text):
    """A TCP port to listen on: 0 (any free port) to 65535."""
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError("must be an integer, got '%s'" % text) from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError("must be from 0 to 65535, got %s" % text)
    return value


def stream_rate(text):
    """A stream rate as the `start` command takes it: 8k, 16k or an integer from 8000 to 48000."""
    from ..commands import CommandError, parse_rate
    try:
        return parse_rate(text)
    except CommandError as e:
        raise argparse.ArgumentTypeError(e.reply[len("-ERR "):]) from None


def rate_choice(*allowed):
    """A sample rate written as 8k/16k/8000…, limited to `allowed`."""
    def parse(text):
        w = text.strip().lower()
        try:
            value = int(float(w[:-1]) * 1000) if w.endswith("k") else int(w, 10)
        except ValueError:
            value = None
        if value not in allowed:
            raise argparse.ArgumentTypeError("must be one of %s, got '%s'"
                                             % (", ".join(str(r) for r in allowed), text))
        return value
    parse.__name__ = "rate"
    return parse


def host_port(default_port):
    """host:port (or host, or :port)."""
    def parse(text):
        host, sep, p = text.rpartition(":") if ":" in text else (text, "", "")
        if not sep:
            host, p = text, str(default_port)
        try:
            value = int(p or default_port)
        except ValueError:
            raise argparse.ArgumentTypeError("expected host:port, got '%s'" % text) from None
        if not 0 < value <= 65535:
            raise argparse.ArgumentTypeError("the port must be from 1 to 65535, got '%s'" % text)
        return (host.strip("[]") or "127.0.0.1", value)
    parse.__name__ = "host:port"
    return parse


def output_dir(path):
    """Create `path` (and parents) if needed and check that files can be written there."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise CLIError("cannot create the directory %s: %s" % (path, e.strerror or e)) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise CLIError("cannot write to the directory %s: %s" % (path, os.strerror(errno.EACCES)))
    return path


# ---- progress ------------------------------------------------------------------------------------

@contextlib.contextmanager
def progress(message, after=1.5, every=5.0, stream=None):
    """Say `message …` only if the block takes longer than `after` seconds, then how long it has
    taken every `every` seconds, and how long it took at the end. Quick blocks print nothing."""
    out = stream or sys.stderr
    done = threading.Event()
    shown = []
    start = time.monotonic()

    def watch():
        if done.wait(after):
            return
        print("%s ..." % message, file=out, flush=True)
        shown.append(True)
        while not done.wait(every):
            print("  ... still %s (%.0f s)" % (message[:1].lower() + message[1:], time.monotonic() - start),
                  file=out, flush=True)

    t = threading.Thread(target=watch, name="progress", daemon=True)
    t.start()
    try:
        yield
    finally:
        done.set()
        t.join()
        if shown:
            print("  done in %.1f s" % (time.monotonic() - start), file=out, flush=True)
