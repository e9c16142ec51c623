"""Per-stream settings from channel variables (STREAM_*), validated into one frozen object. Pure.

`settings_from(get_var, ptime_ms)` takes a function that returns a channel variable's value (or
None) and raises ConfigError with a reason a person can act on when a value is unusable: a stream
that silently ignores what the operator asked for is worse than one that refuses to start.
"""
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import ujson

from . import protocol
from .dialects import NAMES
from .switch.core import switch_true  # noqa: F401 (FreeSWITCH's truth, shared with switch/)

DEFAULTS = {
    "STREAM_BUFFER_SIZE": "20",          # ms of audio per binary WebSocket message
    "STREAM_HEART_BEAT": "0",            # s between WebSocket pings, 0 = off
    "STREAM_CONNECT_TIMEOUT": "5",       # s for TCP + TLS + WebSocket handshake
    "STREAM_PLAYBACK": "true",           # inject the server's audio into the call
    "STREAM_PLAYBACK_BUFFER": "60000",   # ms of server audio the playback queue may hold
    "STREAM_PLAYBACK_JITTER": "20",      # ms a burst from an empty queue waits for a cushion
    "STREAM_MAX_MESSAGE": "4194304",     # bytes: largest message accepted from the server
    "STREAM_RECONNECT_BUFFER": "5000",   # ms of the caller's audio kept while the server cannot take it
    "STREAM_RECONNECT_ATTEMPTS": "10",   # reconnection attempts in a row before giving up
    "STREAM_RECONNECT_MAX_SECONDS": "60",  # s without a connection before giving up
    "STREAM_GRACEFUL_TIMEOUT": "5",      # s graceful-shutdown waits for the server to close
    "STREAM_DTMF": "true",               # send the digits the call receives to the server
}

# every channel variable settings_from() reads (audio_stream.conf may set a default for each)
VARIABLES = (
    "STREAM_BUFFER_SIZE", "STREAM_HEART_BEAT", "STREAM_CONNECT_TIMEOUT", "STREAM_MESSAGE_DEFLATE",
    "STREAM_SUPPRESS_LOG", "STREAM_EXTRA_HEADERS", "STREAM_PLAYBACK", "STREAM_PLAYBACK_BUFFER",
    "STREAM_PLAYBACK_JITTER",
    "STREAM_MAX_MESSAGE", "STREAM_RECONNECT_BUFFER", "STREAM_SAMPLE_RATE", "STREAM_TLS_CA_FILE",
    "STREAM_TLS_CERT_FILE", "STREAM_TLS_KEY_FILE", "STREAM_TLS_DISABLE_HOSTNAME_VALIDATION", "STREAM_DTMF",
    "STREAM_NO_RECONNECT", "STREAM_RECONNECT_ATTEMPTS", "STREAM_RECONNECT_MAX_SECONDS", "STREAM_GRACEFUL_TIMEOUT",
    "STREAM_PROTOCOL", "STREAM_TWILIO_ACCOUNT_SID", "STREAM_ENCODING",
)

MAX_BUFFER_MS = 10000
_HEADER_TOKEN = set("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


# headers the WebSocket handshake owns (RFC 6455 4.1), plus ours (the stream's identity and format)
_HANDSHAKE_HEADERS = {"host", "upgrade", "connection", "content-length", "transfer-encoding",
                      "x-audio-stream-id", "x-audio-stream-reconnect", "x-audio-stream-encoding",
                      "x-audio-stream-rate", "x-audio-stream-channels"}


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Settings:
    buffer_ms: int = 20
    heart_beat: float = 0.0
    connect_timeout: float = 5.0
    deflate: bool = False
    suppress_log: bool = False
    extra_headers: Tuple[Tuple[str, str], ...] = ()
    playback: bool = True
    playback_buffer_ms: int = 60000
    playback_jitter_ms: int = 20          # STREAM_PLAYBACK_JITTER
    max_message: int = 4 * 1024 * 1024
    backlog_ms: int = 5000                # STREAM_RECONNECT_BUFFER
    reconnect: bool = True                # not STREAM_NO_RECONNECT
    reconnect_attempts: int = 10
    reconnect_max_s: float = 60.0
    graceful_timeout: float = 5.0
    protocol: str = "audio_stream"        # STREAM_PROTOCOL: audio_stream | twilio
    encoding: str = "L16"                 # STREAM_ENCODING: L16 | PCMU | PCMA (the uplink's binary audio)
    encoding_set: bool = False            # STREAM_ENCODING was given (channel variable or audio_stream.conf)
    twilio_account_sid: Optional[str] = None
    sample_rate: Optional[int] = None     # rate of binary audio from the server (None: stream rate)
    tls_ca_file: str = "SYSTEM"
    tls_cert_file: Optional[str] = None
    tls_key_file: Optional[str] = None
    tls_no_hostname_check: bool = False
    dtmf: bool = True                     # STREAM_DTMF


def _ascii_number(raw):
    text = raw.strip()
    if not text.isascii() or "_" in text:
        raise ValueError(text)
    return text


def _int(name, raw, lo, hi):
    try:
        value = int(_ascii_number(raw), 10)
    except (ValueError, AttributeError):
        raise ConfigError("%s='%s' is not an integer" % (name, raw)) from None
    if not lo <= value <= hi:
        raise ConfigError("%s=%s is out of range (%d to %d)" % (name, raw, lo, hi))
    return value


def _number(name, raw, lo, hi):
    try:
        value = float(_ascii_number(raw))
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(raw)
    except (ValueError, AttributeError):
        raise ConfigError("%s='%s' is not a number" % (name, raw)) from None
    if not lo <= value <= hi:
        raise ConfigError("%s=%s is out of range (%g to %g)" % (name, raw, lo, hi))
    return value


def parse_extra_headers(raw):
    """STREAM_EXTRA_HEADERS: a JSON object of string values → tuple of (name, value)."""
    try:
        obj = ujson.loads(raw)
    except (ValueError, TypeError):
        raise ConfigError("STREAM_EXTRA_HEADERS is not valid JSON: %s" % raw[:200]) from None
    if not isinstance(obj, dict):
        raise ConfigError("STREAM_EXTRA_HEADERS must be a JSON object of strings")
    out = []
    for name, value in obj.items():
        if not isinstance(value, str):
            raise ConfigError("STREAM_EXTRA_HEADERS: the value of '%s' is not a string" % name)
        if not name or not set(name) <= _HEADER_TOKEN:
            raise ConfigError("STREAM_EXTRA_HEADERS: '%s' is not a valid header name" % name)
        low = name.lower()
        if low in _HANDSHAKE_HEADERS or low.startswith("sec-websocket-"):
            raise ConfigError("STREAM_EXTRA_HEADERS: '%s' is part of the WebSocket handshake and cannot be "
                              "set" % name)
        if any(c in value for c in "\r\n\0"):
            raise ConfigError("STREAM_EXTRA_HEADERS: the value of '%s' contains CR, LF or NUL" % name)
        out.append((name, value))
    return tuple(out)


def _heart_beat(raw):
    value = _number("STREAM_HEART_BEAT", raw, 0, 3600)
    if 0 < value < 1:
        raise ConfigError("STREAM_HEART_BEAT=%s is too short: 0 (off) or 1 to 3600 seconds" % raw)
    return value


PROTOCOLS = NAMES                        # dialects.REGISTRY


def _protocol(raw):
    value = (raw or "audio_stream").strip().lower()
    if value not in PROTOCOLS:
        raise ConfigError("STREAM_PROTOCOL='%s' is not one of %s" % (raw, ", ".join(PROTOCOLS)))
    return value


ENCODINGS = protocol.ENCODINGS          # L16, PCMU, PCMA
ENCODING_ALIASES = {"ULAW": "PCMU", "MULAW": "PCMU", "ALAW": "PCMA"}


def _encoding(raw):
    value = (raw or "L16").strip().upper()
    value = ENCODING_ALIASES.get(value, value)
    if value not in ENCODINGS:
        raise ConfigError("STREAM_ENCODING='%s' is not one of %s" % (raw, ", ".join(ENCODINGS)))
    return value


def _deflate(raw):
    return raw is not None and raw.strip() != "" and not switch_true(raw)


def settings_from(get_var: Callable[[str], Optional[str]], ptime_ms: int, defaults=None) -> Settings:
    """Build the settings of one stream from channel variables (get_var) over the defaults."""
    base = dict(DEFAULTS)
    if defaults:
        base.update(defaults)

    def var(name):
        value = get_var(name)
        return base.get(name) if value is None or value == "" else value

    buffer_ms = _int("STREAM_BUFFER_SIZE", var("STREAM_BUFFER_SIZE"), 1, MAX_BUFFER_MS)
    if ptime_ms and buffer_ms % ptime_ms and not get_var("STREAM_BUFFER_SIZE"):
        buffer_ms = -(-buffer_ms // ptime_ms) * ptime_ms   # the default on a 30 ms call: 30 ms
    if ptime_ms and buffer_ms % ptime_ms:
        raise ConfigError("STREAM_BUFFER_SIZE=%d is not a multiple of the call's %d ms ptime"
                          % (buffer_ms, ptime_ms))
    rate = var("STREAM_SAMPLE_RATE")
    raw_headers = var("STREAM_EXTRA_HEADERS")
    return Settings(
        buffer_ms=buffer_ms,
        heart_beat=_heart_beat(var("STREAM_HEART_BEAT")),
        connect_timeout=_number("STREAM_CONNECT_TIMEOUT", var("STREAM_CONNECT_TIMEOUT"), 0.1, 120),
        # mod_audio_stream: STREAM_MESSAGE_DEFLATE=true *disables* permessage-deflate, which it
        # offers by default. Here it is off unless asked for (=false, C's default made explicit):
        # on PCM it saves 5-9 % on speech for ~25 us of CPU per message and ~130 KB per stream.
        deflate=_deflate(var("STREAM_MESSAGE_DEFLATE")),
        suppress_log=switch_true(var("STREAM_SUPPRESS_LOG")),
        extra_headers=parse_extra_headers(raw_headers) if raw_headers else (),
        playback=switch_true(var("STREAM_PLAYBACK")),
        playback_buffer_ms=_int("STREAM_PLAYBACK_BUFFER", var("STREAM_PLAYBACK_BUFFER"), 100, 3600000),
        playback_jitter_ms=_int("STREAM_PLAYBACK_JITTER", var("STREAM_PLAYBACK_JITTER"), 0, 1000),
        max_message=_int("STREAM_MAX_MESSAGE", var("STREAM_MAX_MESSAGE"), 1024, 256 * 1024 * 1024),
        backlog_ms=_int("STREAM_RECONNECT_BUFFER", var("STREAM_RECONNECT_BUFFER"), 100, 600000),
        reconnect=not switch_true(var("STREAM_NO_RECONNECT")),
        reconnect_attempts=_int("STREAM_RECONNECT_ATTEMPTS", var("STREAM_RECONNECT_ATTEMPTS"), 0, 1000),
        reconnect_max_s=_number("STREAM_RECONNECT_MAX_SECONDS", var("STREAM_RECONNECT_MAX_SECONDS"), 0, 3600),
        graceful_timeout=_number("STREAM_GRACEFUL_TIMEOUT", var("STREAM_GRACEFUL_TIMEOUT"), 0, 600),
        protocol=_protocol(var("STREAM_PROTOCOL")),
        encoding=_encoding(var("STREAM_ENCODING")),
        encoding_set=bool((var("STREAM_ENCODING") or "").strip()),
        twilio_account_sid=var("STREAM_TWILIO_ACCOUNT_SID") or None,
        sample_rate=_int("STREAM_SAMPLE_RATE", rate, 8000, 192000) if rate else None,
        tls_ca_file=var("STREAM_TLS_CA_FILE") or "SYSTEM",
        tls_cert_file=var("STREAM_TLS_CERT_FILE"),
        tls_key_file=var("STREAM_TLS_KEY_FILE"),
        tls_no_hostname_check=switch_true(var("STREAM_TLS_DISABLE_HOSTNAME_VALIDATION")),
        dtmf=switch_true(var("STREAM_DTMF")),
    )


def check_default(name, value):
    """Raise ConfigError when `value` cannot be the default of variable `name` (no call context:
    what depends on the call's ptime is settled per call)."""
    settings_from(lambda n: value if n == name else None, 0)
