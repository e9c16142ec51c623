"""A strict reader of Prometheus's text exposition format (version 0.0.4), for the tests: it
parses what /metrics serves and fails on anything a Prometheus server would reject or
misread, plus the naming rules audio_stream keeps (counters end in _total)."""
import math
import re
import urllib.error
import urllib.request

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r"[a-zA-Z_][a-zA-Z0-9_]*"
_SAMPLE_RE = re.compile(r"^(%s)(\{(.*)\})? (\S+)$" % NAME)
_PAIR_RE = re.compile(r'(%s)="((?:[^"\\\n]|\\\\|\\"|\\n)*)"(,|$)' % LABEL)
TYPES = ("counter", "gauge", "histogram", "summary", "untyped")


class FormatError(AssertionError):
    pass


def _unescape(v):
    return re.sub(r"\\(.)", lambda m: {"\\": "\\", '"': '"', "n": "\n"}[m.group(1)], v)


def _value(text, line):
    if text in ("+Inf", "-Inf", "NaN"):
        return float(text.replace("Inf", "inf").replace("NaN", "nan"))
    try:
        return float(text)
    except ValueError:
        raise FormatError("not a number %r in %r" % (text, line)) from None


def _labels(text, line):
    out = {}
    pos = 0
    while pos < len(text):
        m = _PAIR_RE.match(text, pos)
        if not m:
            raise FormatError("bad labels in %r" % line)
        if m.group(1) in out:
            raise FormatError("label %s twice in %r" % (m.group(1), line))
        out[m.group(1)] = _unescape(m.group(2))
        pos = m.end()
    return out


def _family_of(sample, types):
    for suffix in ("_bucket", "_sum", "_count"):
        if sample.endswith(suffix) and types.get(sample[:-len(suffix)]) in ("histogram", "summary"):
            return sample[:-len(suffix)]
    return sample


def parse(text):
    """{family: {"type", "help", "samples": [(name, labels dict, value)]}}; raises FormatError."""
    if not text.endswith("\n"):
        raise FormatError("the text does not end with a newline")
    families, types, done = {}, {}, set()
    current = None
    for line in text[:-1].split("\n"):
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) < 3 or parts[1] not in ("HELP", "TYPE") or not re.match("^%s$" % NAME, parts[2]):
                raise FormatError("bad comment line %r" % line)
            name = parts[2]
            fam = families.setdefault(name, {"type": "untyped", "help": None, "samples": []})
            if name in done or (current != name and fam["samples"]):
                raise FormatError("%s is not one contiguous group" % name)
            if current is not None and current != name:
                done.add(current)
            current = name
            if parts[1] == "TYPE":
                if name in types or len(parts) != 4 or parts[3] not in TYPES:
                    raise FormatError("bad or second TYPE line %r" % line)
                types[name] = fam["type"] = parts[3]
            else:
                if fam["help"] is not None:
                    raise FormatError("second HELP line for %s" % name)
                help_text = parts[3] if len(parts) == 4 else ""
                if re.search(r"\\[^\\n]", help_text.replace("\\\\", "")):
                    raise FormatError("bad escape in %r" % line)
                fam["help"] = help_text.replace("\\n", "\n").replace("\\\\", "\\")
            continue
        if not line:
            raise FormatError("empty line")
        m = _SAMPLE_RE.match(line)
        if not m:
            raise FormatError("bad sample line %r" % line)
        sample, labels, value = m.group(1), _labels(m.group(3) or "", line), _value(m.group(4), line)
        name = _family_of(sample, types)
        if name != current or families[name]["help"] is None or name not in types:
            raise FormatError("%s: not right after its own HELP and TYPE lines" % line)
        families[name]["samples"].append((sample, labels, value))
    for name, fam in families.items():
        _check(name, fam)
    return families


def _check(name, fam):
    if fam["type"] == "counter":
        if not name.endswith("_total"):
            raise FormatError("counter %s does not end in _total" % name)
        for _, _, v in fam["samples"]:
            if v < 0 or math.isnan(v):
                raise FormatError("counter %s has %r" % (name, v))
    seen = set()
    for sample, labels, _ in fam["samples"]:
        key = (sample, tuple(sorted(labels.items())))
        if key in seen:
            raise FormatError("%s%r twice" % (sample, labels))
        seen.add(key)
    if fam["type"] != "histogram":
        return
    series = {}
    for sample, labels, v in fam["samples"]:
        rest = tuple(sorted((k, x) for k, x in labels.items() if k != "le"))
        s = series.setdefault(rest, {"buckets": [], "sum": None, "count": None})
        if sample == name + "_bucket":
            s["buckets"].append((_value(labels["le"], sample), v))
        elif sample == name + "_sum":
            s["sum"] = v
        elif sample == name + "_count":
            s["count"] = v
        else:
            raise FormatError("%s in histogram %s" % (sample, name))
    for s in series.values():
        bounds = [b for b, _ in s["buckets"]]
        counts = [c for _, c in s["buckets"]]
        if not bounds or bounds[-1] != math.inf or bounds != sorted(bounds):
            raise FormatError("%s: buckets not ascending to +Inf: %r" % (name, bounds))
        if counts != sorted(counts):
            raise FormatError("%s: buckets not cumulative: %r" % (name, counts))
        if s["count"] is None or s["sum"] is None or counts[-1] != s["count"]:
            raise FormatError("%s: +Inf bucket %r, count %r, sum %r" % (name, counts[-1], s["count"], s["sum"]))


def value(families, sample, **labels):
    """The value of one sample (labels must match exactly), or None."""
    for fam in families.values():
        for name, lab, v in fam["samples"]:
            if name == sample and lab == labels:
                return v
    return None


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def scrape(url):
    """GET `url` (a /metrics endpoint): its families, parsed (the status and content type checked)."""
    with urllib.request.urlopen(url, timeout=5) as r:
        if r.status != 200 or r.headers.get("Content-Type") != CONTENT_TYPE:
            raise AssertionError("%s: HTTP %s, %s" % (url, r.status, r.headers.get("Content-Type")))
        return parse(r.read().decode())


def refused(url):
    """True when nothing listens there any more."""
    try:
        urllib.request.urlopen(url, timeout=5).close()
    except urllib.error.URLError as e:
        return isinstance(e.reason, ConnectionRefusedError)
    return False
