"""What `status --pretty` and `top` show: the switch's status document as text lines. Pure: the
document (what `python audio_stream status` answers) in, lines out; no terminal, no socket.

Colour is optional (`color=True`: ANSI SGR codes only, nothing a plain terminal over SSH lacks);
lines are cut to `width` columns before colour is added, so they never wrap.
"""
import json
import time

BOLD, DIM, RED, GREEN, YELLOW, REVERSE, RESET = "\x1b[1m", "\x1b[2m", "\x1b[31m", "\x1b[32m", "\x1b[33m", \
    "\x1b[7m", "\x1b[0m"
SEP = " | "           # ASCII only: any terminal, any locale
STATE_COLOR = {"streaming": GREEN, "connecting": YELLOW, "reconnecting": YELLOW, "closing": DIM, "closed": DIM}


def age(seconds):
    """12s, 4:05, 1:02:03."""
    s = int(seconds or 0)
    if s < 60:
        return "%ds" % s
    h, rest = divmod(s, 3600)
    return "%d:%02d:%02d" % (h, rest // 60, rest % 60) if h else "%d:%02d" % (rest // 60, rest % 60)


def khz(rate):
    """8000 -> 8k, 44100 -> 44.1k."""
    if not rate:
        return "-"
    return "%gk" % (rate / 1000.0)


def size(nbytes):
    """1023 B, 12.3 kB, 4.5 MB, 1.2 GB."""
    n = float(nbytes or 0)
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return ("%d %s" % (n, unit)) if unit == "B" else ("%.1f %s" % (n, unit))
        n /= 1000.0


def key(stream):
    return stream.get("uuid"), stream.get("name")


def label(stream):
    """The uuid's first 8 characters, and the stream's name when it has one."""
    name = stream.get("name") or "default"
    short = (stream.get("uuid") or "?")[:8]
    return short if name == "default" else "%s/%s" % (short, name)


def rates(previous, current, dt):
    """Bytes per second sent by each stream of `current` ({key: B/s}), from the previous
    document `dt` seconds before; a stream not in it gets its average since it started."""
    before = {key(s): s.get("bytes_sent", 0) for s in (previous or {}).get("streams", [])}
    out = {}
    for s in current.get("streams", []):
        k = key(s)
        sent = s.get("bytes_sent", 0)
        if k in before and dt > 0 and sent >= before[k]:
            out[k] = (sent - before[k]) / dt
        else:
            secs = s.get("seconds") or 0
            out[k] = sent / secs if secs > 0 else 0.0
    return out


def _playback(s):
    state = s.get("playback", "off")
    if state in ("off",):
        return "off"
    queued = "%d ms" % s.get("playback_queued_ms", 0)
    return queued + (" (paused)" if state == "paused" else "")


def _state(s):
    state = s.get("state", "?")
    return state + " (paused)" if s.get("paused") else state


COLUMNS = ("STREAM", "STATE", "MIX", "RATE", "SENT", "DROPPED", "PLAYBACK", "RECONN", "AGE", "URL")
RIGHT = {"SENT", "DROPPED", "PLAYBACK", "RECONN", "AGE", "kB/s"}


def rows(doc, per_second=None):
    """One tuple of cells per stream (COLUMNS; SENT becomes kB/s when `per_second` is given)."""
    out = []
    for s in doc.get("streams", []):
        sent = "%.1f" % (per_second.get(key(s), 0.0) / 1000.0) if per_second is not None else size(s.get("bytes_sent"))
        out.append((label(s), _state(s), s.get("mix", "?"), khz(s.get("rate")), sent,
                    "%d ms" % s.get("dropped_ms", 0), _playback(s), str(s.get("reconnects", 0)),
                    age(s.get("seconds")), s.get("url", "")))
    return out


def table(cells, headers, width, color=False, height=None):
    """Aligned lines: a header line, then one per row; the last column takes what is left of
    `width`. With `height`, at most that many lines, the last one saying how many are hidden."""
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    shown = cells
    hidden = 0
    if height is not None and len(cells) + 1 > height:
        keep = max(0, height - 2)
        shown, hidden = cells[:keep], len(cells) - keep

    def line(values, header=False):
        parts = []
        for i, (h, v) in enumerate(zip(headers, values)):
            if i == len(headers) - 1:
                parts.append(v)
            else:
                parts.append(v.rjust(widths[i]) if h in RIGHT else v.ljust(widths[i]))
        text = "  ".join(parts)[:width].rstrip()
        if not color:
            return text
        if header:
            return BOLD + REVERSE + text.ljust(width) + RESET
        return _paint(text, values)

    out = [line(headers, True)] + [line(r) for r in shown]
    if hidden:
        more = "... %d more stream%s (a taller terminal shows them)" % (hidden, "" if hidden == 1 else "s")
        out.append((DIM + more[:width] + RESET) if color else more[:width])
    return out


def _paint(text, values):
    """Colour a row's state (and its dropped audio, when there is some) where they appear."""
    state = values[1]
    c = STATE_COLOR.get(state.split(" ")[0])
    if c:
        at = text.find(state, len(values[0]))
        if at >= 0:
            text = text[:at] + c + state + RESET + text[at + len(state):]
    if values[5] != "0 ms":
        at = text.rfind(values[5])
        if at >= 0:
            text = text[:at] + RED + values[5] + RESET + text[at + len(values[5]):]
    return text


def last_error(body):
    """The text of an error or disconnect event's body ({"message": {"code", "error"|"reason"}})."""
    try:
        m = json.loads(body)["message"]
        return "%s (code %s)" % (m.get("error") or m.get("reason") or "", m.get("code"))
    except (ValueError, TypeError, KeyError, AttributeError):
        return str(body)


def totals_line(doc, per_second=None, cpu_share=None):
    """live, closing, loop lateness, and (top) what is sent per second and the loop's CPU share."""
    t = doc.get("totals", {})
    streams = doc.get("streams", [])
    parts = ["%d live, %d closing" % (t.get("live", 0), t.get("closing", 0))]
    if per_second is not None:
        parts.append("sent %.1f kB/s" % (sum(per_second.values()) / 1000.0))
    else:
        parts.append("sent %s" % size(sum(s.get("bytes_sent", 0) for s in streams)))
    parts.append("dropped %d ms" % sum(s.get("dropped_ms", 0) for s in streams))
    parts.append("reconnects %d" % sum(s.get("reconnects", 0) for s in streams))
    parts.append("loop late %d ms" % t.get("loop_lag_ms", 0))
    if cpu_share is not None:
        parts.append("loop CPU %d%%" % round(cpu_share * 100))
    if t.get("path"):
        parts.append("path %s" % t["path"])
    return SEP.join(parts)


def render_status(doc, width=100, color=False):
    """`status --pretty`: the totals, then one row per stream."""
    out = [("audio_stream %s: %s" % (doc.get("version", "?"), totals_line(doc)))[:width]]
    if not doc.get("streams"):
        out.append("no streams")
        return out
    out += table(rows(doc), COLUMNS, width, color)
    for s in doc["streams"]:
        if s.get("last_error"):
            out.append(("%s last error: %s" % (label(s), last_error(s["last_error"])))[:width])
    return out


def render_top(doc, per_second, width=100, height=24, where="", interval=1.0, cpu_share=None, notice=None,
               color=False, now=None, version=None):
    """One frame of `top`: a title, the totals, a notice (the switch went away...), the streams.
    `version`: what to show when there is no document."""
    clock = time.strftime("%H:%M:%S", time.localtime(now))
    title = SEP.join(("audio_stream %s on %s", "%s", "every %g s", "Ctrl-C quits")) % (
        (doc or {}).get("version", version or "?"), where, clock, interval)
    out = [(BOLD + title[:width] + RESET) if color else title[:width]]
    if doc is not None:
        out.append(totals_line(doc, per_second, cpu_share)[:width])
    if notice:
        out.append((YELLOW + notice[:width] + RESET) if color else notice[:width])
    if doc is None:
        return out
    if not doc.get("streams"):
        out.append("no streams")
        return out
    headers = COLUMNS[:4] + ("kB/s",) + COLUMNS[5:]
    out += table(rows(doc, per_second), headers, width, color, height=max(2, height - len(out)))
    return out
