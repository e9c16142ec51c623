"""audio_stream.conf: defaults for the STREAM_* channel variables and global limits. Pure.

The switch serves the file (`switch_xml_open_cfg`, in switch/core.py: after reloadxml's
preprocessing, so X-PRE-PROCESS includes and $${vars} are done); this module turns its text into
one frozen `XmlSettings`::

    <configuration name="audio_stream.conf">
      <settings>                       <!-- defaults; a channel variable overrides each per call -->
        <param name="STREAM_BUFFER_SIZE" value="40"/>
      </settings>
      <limits>
        <param name="max_streams" value="200"/>            <!-- 0: no limit -->
        <param name="max_message_size" value="1048576"/>   <!-- caps STREAM_MAX_MESSAGE -->
      </limits>
      <metrics>                        <!-- Prometheus metrics; off without this section -->
        <param name="listen" value="127.0.0.1:9464"/>
      </metrics>
    </configuration>

A value that cannot be used is one log line and the built-in default: it never fails a call.
Names are case-insensitive, as channel variables are.

`Loader.get(read, log)` reads the text on every call (the switch hands it over in a few µs) and
parses it only when it changed, so `reloadxml` takes effect at the next `start` and each problem
is logged once per change; `force=True` (`python audio_stream reload`) parses and logs again.
"""
import ipaddress
import re
import threading
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
from typing import Optional

from . import config
from .config import ConfigError

CONF_NAME = "audio_stream.conf"
MAX_STREAMS_LIMIT = 1000000
MESSAGE_SIZE_RANGE = (1024, 256 * 1024 * 1024)


@dataclass(frozen=True)
class XmlSettings:
    defaults: dict = field(default_factory=dict)   # STREAM_* name -> value, each one valid
    max_streams: int = 0                           # 0: no limit
    max_message_size: Optional[int] = None         # the most STREAM_MAX_MESSAGE may be, None: no cap
    metrics_listen: Optional[tuple] = None         # (host, port) of the metrics endpoint, None: off
    problems: tuple = ()                           # one line each, for the log
    found: bool = False                            # the switch has an audio_stream.conf
    error: Optional[str] = None                    # the file could not be used at all

    @property
    def count(self):
        """Settings in effect: defaults plus the limits that are set."""
        return len(self.defaults) + bool(self.max_streams) + (self.max_message_size is not None)

    def limit(self, settings, log):
        """The stream's settings within the global limits (a variable above a cap: the cap, logged)."""
        cap = self.max_message_size
        if cap is not None and settings.max_message > cap:
            log("WARNING", "STREAM_MAX_MESSAGE=%d is over max_message_size in %s: using %d"
                % (settings.max_message, CONF_NAME, cap))
            settings = replace(settings, max_message=cap)
        return settings


def _params(section, where, problems):
    out = []
    for el in list(section):
        if not isinstance(el.tag, str):
            continue                                   # a comment or processing instruction
        if el.tag != "param":
            problems.append("%s: <%s> in <%s> is not a <param>: ignored" % (CONF_NAME, el.tag, where))
            continue
        name, value = el.get("name"), el.get("value")
        if not name or value is None:
            problems.append("%s: a <param> in <%s> without name or value: ignored" % (CONF_NAME, where))
            continue
        out.append((name.strip(), value.strip()))
    return out


def _builtin(name):
    value = config.DEFAULTS.get(name)
    return "the built-in default %s" % value if value is not None else "built-in behaviour (not set)"


def _settings(params, problems):
    defaults = {}
    known = {n.upper(): n for n in config.VARIABLES}
    for raw_name, value in params:
        name = known.get(raw_name.upper())
        if name is None:
            problems.append("%s: unknown setting '%s': ignored (known: STREAM_* variables)" % (CONF_NAME, raw_name))
            continue
        if value == "":
            defaults.pop(name, None)                   # empty: as if unset, like a channel variable
            continue
        try:
            config.check_default(name, value)
        except ConfigError as e:
            problems.append("%s: %s: using %s" % (CONF_NAME, e, _builtin(name)))
            defaults.pop(name, None)
            continue
        if name in defaults:
            problems.append("%s: %s is set twice: the last one counts" % (CONF_NAME, name))
        defaults[name] = value
    return defaults


def _int(name, value, lo, hi, problems):
    try:
        n = int(value, 10)
    except ValueError:
        problems.append("%s: %s='%s' is not an integer: ignored" % (CONF_NAME, name, value))
        return None
    if not lo <= n <= hi:
        problems.append("%s: %s=%s is out of range (%d to %d): ignored" % (CONF_NAME, name, value, lo, hi))
        return None
    return n


def _limits(params, problems):
    max_streams, max_message = 0, None
    for raw_name, value in params:
        name = raw_name.lower().replace("-", "_")
        if name == "max_streams":
            n = _int(raw_name, value, 0, MAX_STREAMS_LIMIT, problems)
            max_streams = max_streams if n is None else n
        elif name == "max_message_size":
            n = _int(raw_name, value, *MESSAGE_SIZE_RANGE, problems)
            max_message = max_message if n is None else n
        else:
            problems.append("%s: unknown limit '%s': ignored (known: max_streams, max_message_size)"
                            % (CONF_NAME, raw_name))
    return max_streams, max_message


_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,62}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*$")


def parse_listen(value):
    """(host, port) from `host:port` or `[ipv6]:port`; ValueError saying what is wrong."""
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError("expected [IPv6 address]:port")
        port = rest[1:]
    else:
        host, sep, port = value.rpartition(":")
        if not sep:
            raise ValueError("expected host:port, e.g. 127.0.0.1:9464")
        if ":" in host:
            raise ValueError("an IPv6 address goes in brackets, e.g. [::1]:9464")
    if not host:
        raise ValueError("no address before the port: 127.0.0.1:%s for this machine only, 0.0.0.0:%s for every "
                         "interface" % (port, port))
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOSTNAME_RE.match(host):
            raise ValueError("'%s' is not an IP address or a host name" % host) from None
    try:
        n = int(port, 10)
    except ValueError:
        raise ValueError("the port '%s' is not an integer" % port) from None
    if not 1 <= n <= 65535:
        raise ValueError("the port %d is not from 1 to 65535" % n)
    return host, n


def _metrics(params, problems):
    listen = None
    for raw_name, value in params:
        if raw_name.lower() != "listen":
            problems.append("%s: unknown metrics setting '%s': ignored (known: listen)" % (CONF_NAME, raw_name))
            continue
        if value == "":
            listen = None                              # empty: as if unset
            continue
        try:
            listen = parse_listen(value)
        except ValueError as e:
            problems.append("%s: metrics listen='%s': %s: metrics are off" % (CONF_NAME, value, e))
            listen = None
    return listen


def parse(text):
    """XmlSettings from the text of the <configuration> element (None: there is no such file).
    Never raises: what cannot be used is in `problems`."""
    if text is None or not text.strip():
        return XmlSettings()
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        error = "%s is not well-formed XML (%s): using the built-in defaults" % (CONF_NAME, e)
        return XmlSettings(problems=(error,), found=True, error=error)
    problems = []
    settings, limits, metrics = [], [], []
    for el in list(root):
        if not isinstance(el.tag, str):
            continue
        if el.tag == "settings":
            settings += _params(el, "settings", problems)
        elif el.tag == "limits":
            limits += _params(el, "limits", problems)
        elif el.tag == "metrics":
            metrics += _params(el, "metrics", problems)
        else:
            problems.append("%s: unknown section <%s>: ignored (known: settings, limits, metrics)"
                            % (CONF_NAME, el.tag))
    defaults = _settings(settings, problems)
    max_streams, max_message = _limits(limits, problems)
    listen = _metrics(metrics, problems)
    return XmlSettings(defaults=defaults, max_streams=max_streams, max_message_size=max_message,
                       metrics_listen=listen, problems=tuple(problems), found=True)


_UNREAD = object()


class Loader:
    """The current XmlSettings, re-read through the switch on every get() and re-parsed when the
    text changed. Thread-safe (API threads start streams concurrently)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._text = _UNREAD
        self._conf = XmlSettings()
        self._read_failed = False

    def get(self, read, log, force=False):
        """`read()` gives the text or None; `log(level, message)`. Never raises."""
        try:
            text = read()
            failed = False
        except Exception as e:  # the switch's XML API must not fail a call
            text, failed = None, True
            if not self._read_failed:
                log("ERR", "cannot read %s through the switch (%r): using the built-in defaults" % (CONF_NAME, e))
        with self._lock:
            self._read_failed = failed
            if text == self._text and not force:
                return self._conf
            conf = parse(text)
            self._text, self._conf = text, conf
        for problem in conf.problems:
            log("WARNING", problem)
        return conf


LOADER = Loader()


def current(be, force=False):
    """The XmlSettings in effect now, read through the backend's switch."""
    return LOADER.get(lambda: be.core.config_xml(CONF_NAME), be.log, force)
