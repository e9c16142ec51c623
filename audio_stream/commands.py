"""Parse and validate `python audio_stream <uuid> <command> [args…]` command lines. Pure.

The grammar and the replies follow mod_audio_stream's `uuid_audio_stream` API so ESL applications
keep working: `+OK Success` on success, `-ERR <reason>` on failure (the reason names what is
wrong, where the C module only said "Operation Failed"), `-USAGE: …` for an empty call.
"""
import re
from dataclasses import dataclass, replace
from typing import Optional
from urllib.parse import urlsplit

USAGE = ("-USAGE: <uuid> start [name=<name>] <ws-url> <mono|mixed|stereo> [8k|16k|<rate>] [metadata] | "
         "<uuid> stop [name=<name>] [text] | <uuid> graceful-shutdown [name=<name>] [text] | "
         "<uuid> send_text [name=<name>] <text> | <uuid> pause|resume [name=<name>] | "
         "<uuid> playback_pause|playback_resume|playback_clear [name=<name>] | <uuid> status | "
         "status | version | reload")

OK = "+OK Success"

MIXES = ("mono", "mixed", "stereo")
MIN_RATE, MAX_RATE = 8000, 48000

COMMANDS = ("start", "stop", "graceful_shutdown", "send_text", "pause", "resume",
            "playback_pause", "playback_resume", "playback_clear", "status")
# how replies and docs spell them: mod_audio_stream's `graceful-shutdown` (either spelling is accepted)
SPELLED = tuple(c.replace("_", "-") if c == "graceful_shutdown" else c for c in COMMANDS)
GLOBAL_COMMANDS = ("status", "version", "reload")     # without a uuid
DEFAULT_NAME = "default"                   # the call's stream when no name= is given
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")

_UUID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,255}$")
_HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,62}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*\.?$")


class CommandError(Exception):
    """The reply for a command that cannot run (starts with -ERR or -USAGE)."""

    def __init__(self, reply):
        super().__init__(reply)
        self.reply = reply


@dataclass(frozen=True)
class Command:
    uuid: str
    name: str
    url: Optional[str] = None
    mix: Optional[str] = None
    rate: Optional[int] = None
    text: Optional[str] = None   # metadata for start, final text for stop, the text for send_text
    stream: str = DEFAULT_NAME   # name=<name>: which of the call's streams


def err(reason):
    return CommandError("-ERR " + reason)


def check_utf8(text, what):
    """mod_python3 hands us str; lone surrogates mean the bytes were not valid UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise err("%s is not valid UTF-8" % what) from None
    return text


def parse_rate(word):
    w = word.strip().lower()
    try:
        if not w.isascii() or "_" in w:
            raise ValueError(w)
        if w.endswith("k"):
            value = float(w[:-1]) * 1000
            if not value.is_integer():
                raise ValueError
            rate = int(value)
        else:
            rate = int(w, 10)
    except ValueError:
        raise err("invalid sample rate '%s': use 8k, 16k or an integer from %d to %d"
                  % (word, MIN_RATE, MAX_RATE)) from None
    if not MIN_RATE <= rate <= MAX_RATE:
        raise err("invalid sample rate '%s': must be from %d to %d" % (word, MIN_RATE, MAX_RATE))
    return rate


def parse_url(url):
    """Accept ws:// and wss:// URLs with a valid host (name, IPv4 or [IPv6]) and optional port."""
    bad = "invalid websocket url '%s': " % url
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError on a bad port
    except ValueError as e:
        raise err(bad + str(e)) from None
    if parts.scheme.lower() not in ("ws", "wss"):
        raise err(bad + "only ws:// and wss:// are supported")
    host = parts.hostname
    if not host:
        raise err(bad + "no host")
    if ":" not in host and not _HOST_RE.match(host):
        raise err(bad + "bad host name '%s'" % host)
    if port == 0:
        raise err(bad + "port 0")
    if any(c in url for c in " \t\r\n"):
        raise err(bad + "white space in the url")
    return url


def parse(line):
    """Parse the argument string of `python audio_stream …` into a Command or raise CommandError."""
    if line is None or not line.strip():
        raise CommandError(USAGE)
    check_utf8(line, "the command line")
    parts = line.strip().split(None, 2)
    uuid = parts[0]
    if uuid.lower() in GLOBAL_COMMANDS:
        if len(parts) > 1:
            raise err("%s takes no arguments" % uuid.lower())
        return Command(None, uuid.lower())
    if not _UUID_RE.match(uuid):
        raise err("invalid uuid '%s'" % uuid)
    if len(parts) < 2:
        raise err("missing command after uuid (one of: %s)" % ", ".join(SPELLED))
    name = parts[1].lower().replace("-", "_")
    rest = parts[2] if len(parts) > 2 else ""
    if name not in COMMANDS:
        raise err("unknown command '%s' (one of: %s)" % (parts[1], ", ".join(SPELLED)))
    stream = DEFAULT_NAME
    if rest.startswith("name="):
        token, _, rest = rest.partition(" ")
        stream = token[5:]
        if not _NAME_RE.match(stream):
            raise err("invalid stream name '%s': 1 to 32 letters, digits, '_', '.' or '-'" % stream)
        rest = rest.lstrip()
    cmd = _parse_command(uuid, name, rest)
    return cmd if stream == DEFAULT_NAME else replace(cmd, stream=stream)


def _parse_command(uuid, name, rest):
    if name == "start":
        args = rest.split(None, 3)
        if len(args) < 2:
            raise err("start needs <ws-url> <mono|mixed|stereo> [8k|16k|rate] [metadata]")
        url = parse_url(args[0])
        mix = args[1].lower()
        if mix not in MIXES:
            raise err("unknown mix '%s': must be mono, mixed or stereo" % args[1])
        rate = parse_rate(args[2]) if len(args) > 2 else 8000
        metadata = args[3] if len(args) > 3 else None
        return Command(uuid, name, url=url, mix=mix, rate=rate, text=metadata)

    if name == "send_text":
        if not rest:
            raise err("send_text needs the text to send")
        return Command(uuid, name, text=rest)

    if name in ("stop", "graceful_shutdown"):
        return Command(uuid, name, text=rest or None)

    if rest:
        raise err("%s takes no arguments (but name=<name>)" % name)
    return Command(uuid, name)
