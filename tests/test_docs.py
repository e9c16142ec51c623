"""The docs agree with the code: every STREAM_* channel variable, event subclass and command word
the code defines is in the README or docs/, and every one they name exists in the code. The
code's lists come from the code itself: config.py's variables (checked against what it reads),
the events the package fires, commands.py's commands."""
import glob
import os
import re

import pytest

from audio_stream import commands, config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "audio_stream")
DOCS = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True))


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def _product_sources():
    for path in glob.glob(os.path.join(PACKAGE, "**", "*.py"), recursive=True):
        if os.sep + "testing" + os.sep not in path:
            yield path, _read(path)


def docs_text():
    return "\n".join(_read(p) for p in DOCS)


def where(pattern, text=None):
    """{match: [doc names]} of a regex's first group over the docs."""
    found = {}
    for path in DOCS:
        for m in re.finditer(pattern, _read(path)):
            found.setdefault(m.group(1), []).append(os.path.relpath(path, ROOT))
    return found


# ---- what the code defines ------------------------------------------------------------------------

def code_variables():
    """config.VARIABLES, after checking that it is exactly what config.py reads."""
    read = set(re.findall(r'"(STREAM_[A-Z_]+)"', _read(os.path.join(PACKAGE, "config.py"))))
    assert read == set(config.VARIABLES), "config.VARIABLES differs from what config.py reads: %s" % (
        read ^ set(config.VARIABLES))
    return set(config.VARIABLES)


def code_events():
    """The subclasses the package fires: `fire("<name>", …)` under the mod_audio_stream:: prefix."""
    names = set()
    for path, text in _product_sources():
        names |= set(re.findall(r'\bfire\(\s*"([a-z_]+)"', text))
    assert len(names) >= 10, names
    return {"mod_audio_stream::" + n for n in names}


def code_commands():
    """Every command word, as the docs spell them (graceful-shutdown), and the global ones."""
    return set(commands.SPELLED) | set(commands.GLOBAL_COMMANDS)


# ---- the checks -----------------------------------------------------------------------------------

def test_every_variable_is_documented_and_every_documented_one_exists():
    variables = code_variables()
    named = where(r"\b(STREAM_[A-Z][A-Z0-9_]*[A-Z0-9])\b")
    assert variables - set(named) == set(), "variables the docs never name"
    unknown = {v: docs for v, docs in named.items() if v not in variables}
    assert unknown == {}, "the docs name variables the code does not read"


def test_every_event_is_documented_and_every_documented_one_is_fired():
    events = code_events()
    named = where(r"\b(mod_audio_stream::[a-z_]+)")
    assert events - set(named) == set(), "events the docs never name"
    unknown = {e: docs for e, docs in named.items() if e not in events}
    assert unknown == {}, "the docs name events the code never fires"


def test_the_events_page_subscribes_to_every_event():
    (line,) = [x for x in _read(os.path.join(ROOT, "docs", "events.md")).splitlines()
               if x.startswith("event plain CUSTOM")]
    assert set(line.split()[3:]) == code_events()


def _documented_commands():
    """Command words the docs use: after `python audio_stream [<uuid>]`, in the dialplan's
    data="audio_stream <command>", and the first column of the README's command table."""
    found = {}
    placeholder = re.compile(r"^(<[^>]*>|\$\{?\w+\}?|[0-9a-f]{8}[-0-9a-f…]*|…|\S*…)$")
    for path in DOCS:
        text = _read(path)
        doc = os.path.relpath(path, ROOT)
        for m in re.finditer(r"python audio_stream((?: +[^\s`'\"\]|]+){1,2})", text):
            words = m.group(1).split()
            word = words[1] if placeholder.match(words[0]) and len(words) > 1 else words[0]
            if not placeholder.match(word):
                found.setdefault(word, []).append(doc)
        for m in re.finditer(r'data="audio_stream ([a-z_-]+)', text):
            found.setdefault(m.group(1), []).append(doc)
    table = _read(DOCS[0]).split("## Commands", 1)[1].split("\n## ", 1)[0]
    for first_column in re.findall(r"^\| (`[^|]+?) \|", table, re.M):
        for word in re.findall(r"`([a-z_-]+)", first_column):
            found.setdefault(word, []).append("README.md (commands table)")
    return found


def test_every_command_is_documented_and_every_documented_one_exists():
    cmds = code_commands()
    named = _documented_commands()
    assert cmds - set(named) == set(), "commands the docs never show"
    accepted = cmds | set(commands.COMMANDS)
    unknown = {c: docs for c, docs in named.items() if c.lower() not in accepted}
    assert unknown == {}, "the docs use command words the code does not know"
    assert {"start", "stop", "graceful-shutdown", "status", "reload"} <= set(named)


@pytest.mark.parametrize("wrong", [
    "no reconnection at all", "There is none, as in mod_audio_stream", "is ignored by both",
    "One stream per call", "one stream per call", "`STREAM_CONNECT_TIMEOUT` + 1 s",
    "should be refused (or ignored", "suggested name", "graceful_shutdown"])
def test_what_the_docs_once_said_wrongly_is_gone(wrong):
    assert wrong not in docs_text()


def test_the_offline_install_downloads_what_the_package_requires():
    """docs/operations.md's `pip download` line names every requirement with setup.cfg's minimum
    (and the build requirements, which pip needs to build the checkout without an index)."""
    import configparser
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    required = {r.strip().replace(" ", "") for r in cfg["options"]["install_requires"].split("\n") if r.strip()}
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as f:
        build = set(re.search(r"requires = \[([^\]]*)\]", f.read()).group(1).replace('"', "").replace(" ", "").split(","))
    (line,) = [x for x in _read(os.path.join(ROOT, "docs", "operations.md")).splitlines() if "pip download -d" in x]
    line += " " + _read(os.path.join(ROOT, "docs", "operations.md")).split(line, 1)[1].splitlines()[1]
    named = set(re.findall(r"'([^']+)'", line)) | ({"wheel"} if re.search(r"\bwheel\b", line) else set())
    assert required | build == named


def _slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped (not - and _), spaces to -."""
    text = re.sub(r"`|\*", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text, flags=re.UNICODE).replace(" ", "-")


def test_every_link_between_the_docs_reaches_its_file_and_heading():
    broken = []
    for path in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", _read(path)):
            if re.match(r"[a-z]+://", target):
                continue
            file, _, anchor = target.partition("#")
            dest = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
            if not os.path.exists(dest):
                broken.append((os.path.relpath(path, ROOT), target, "no such file"))
            elif anchor and dest.endswith(".md"):
                slugs = {_slug(h) for h in re.findall(r"^#+ (.+)$", _read(dest), re.M)}
                if anchor not in slugs:
                    broken.append((os.path.relpath(path, ROOT), target, "no such heading"))
    assert broken == []


def test_the_metrics_table_names_every_metric_and_its_label_values():
    """operations.md's table of Prometheus metrics against metrics.py: the same names, and the
    label values it lists are the ones the code exports."""
    from audio_stream import metrics
    code = set(re.findall(r'"(audio_stream_[a-z_]+)"', _read(os.path.join(PACKAGE, "metrics.py"))))
    ops = _read(os.path.join(ROOT, "docs", "operations.md"))
    table = ops.split("| metric | type | labels | what |", 1)[1].split("\n\n", 1)[0]
    rows = [r for r in table.splitlines() if r.startswith("| `")]
    documented = {n for r in rows for n in re.findall(r"`(audio_stream_[a-z_]+)`", r.split(" | ")[0])}
    assert documented == code
    row = {re.search(r"`(audio_stream_[a-z_]+)`", r).group(1): r for r in rows}
    for name, values in [("audio_stream_streams", metrics.STATES + metrics.PROTOCOLS),
                         ("audio_stream_streams_ended_total", metrics.END_REASONS),
                         ("audio_stream_playback_streams", metrics.PLAYBACK_STATES),
                         ("audio_stream_events_suppressed_total", metrics.SUPPRESSED_KINDS)]:
        labels = row[name].split(" | ")[2]
        assert set(re.findall(r"[a-z_-]+", labels.split("`", 2)[2])) >= set(values), (name, labels)
    # every metric named elsewhere in the docs (queries, examples) exists
    for name in re.findall(r"\b(audio_stream_[a-z_]+_(?:total|seconds|info|bucket)|audio_stream_streams)\b", docs_text()):
        assert re.sub(r"_bucket$", "", name) in code, name


def test_the_twilio_page_shows_the_dialect_as_it_is():
    """docs/twilio.md's sketch of TwilioDialect: its constructor's parameters, and every method
    it calls exists."""
    import inspect
    from audio_stream import twilio
    page = _read(os.path.join(ROOT, "docs", "twilio.md"))
    block = page.split("d = TwilioDialect(", 1)[1].split("```", 1)[0]
    params = re.sub(r"\([^()]*\)", "()", block.split(")\n", 1)[0])        # tracks=("inbound",)
    named = [p.split("=")[0].strip() for p in params.replace("\n", " ").split(",") if p.strip() not in ("*", "")]
    assert named == [p for p in inspect.signature(twilio.TwilioDialect).parameters]
    for method in re.findall(r"^d\.([a-z_]+)\(", block, re.M):
        assert callable(getattr(twilio.TwilioDialect, method, None)), method


@pytest.mark.parametrize("doc", ["README.md", os.path.join("docs", "configuration.md")])
def test_the_variable_tables_give_the_code_s_defaults(doc):
    """The default column of README's and configuration.md's variable tables starts with
    config.DEFAULTS' value, for every variable that has one."""
    shown = {}
    for row in _read(os.path.join(ROOT, doc)).splitlines():
        m = re.match(r"\| `(STREAM_[A-Z_]+)`(?:, `STREAM_[A-Z_]+`)? \| ([^|]*) \|", row)
        if m:
            shown[m.group(1)] = m.group(2).replace("`", "").strip().split(" ")[0]
    assert {v: shown.get(v) for v in config.DEFAULTS} == dict(config.DEFAULTS)
