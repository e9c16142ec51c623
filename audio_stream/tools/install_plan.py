"""The installer's decisions, without any I/O: what was found (Facts) → what to do (Plan) and
what the operator must do next. Everything here is a plain function of its arguments, so the
tests drive it with made-up facts; install_probe.py finds the facts, installer.py acts.
"""
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

# conf/ snippet (relative to the project's conf/) -> destination relative to the switch's conf_dir.
# "config": installed when missing, else a .dist copy beside the operator's file.
# "sample": an example that must not change call routing by itself: always the .dist name.
SNIPPETS = (
    ("autoload_configs/python.conf.xml", "autoload_configs/python.conf.xml", "config"),
    ("dialplan/audio_stream.xml", "dialplan/default/audio_stream.xml", "sample"),
)

STARTUP_LINE = '<param name="startup-script" value="audio_stream"/>'
LOAD_LINE = '<load module="mod_python3"/>'
PIP_PYTHON_OPTION = (22, 3)       # pip --python <interpreter>
PIP_BREAK_SYSTEM = (23, 0, 1)     # pip --break-system-packages (PEP 668)


@dataclass
class PythonInfo:
    """What the embedded Python said about itself (install_probe.CHECK_SCRIPT)."""
    executable: str
    version: str
    externally_managed: bool = False
    pip: Optional[str] = None             # its pip's version, None without pip
    purelib: Optional[str] = None
    package_path: Optional[str] = None    # where `import audio_stream` resolves, with the script dir first
    package_version: Optional[str] = None
    package_error: Optional[str] = None
    missing: Tuple[str, ...] = ()         # dependencies it cannot import


@dataclass
class Facts:
    our_version: str
    switch: str = ""                      # how the switch was asked
    switch_error: Optional[str] = None    # why it did not answer; None when it did
    fs_version: Optional[str] = None
    dirs: Dict[str, Tuple[str, str]] = field(default_factory=dict)   # name -> (path, where from)
    mod_python3_so: Optional[str] = None  # the module file, when it exists
    libpython: Optional[Tuple[str, Optional[str], str]] = None      # (soname, path or None, "3.11")
    ldd_error: Optional[str] = None
    python: Optional[PythonInfo] = None
    python_error: Optional[str] = None
    module_loaded: Optional[bool] = None  # module_exists mod_python3 (None: not asked)
    modules_conf: Optional[str] = None    # path of modules.conf.xml, when found
    modules_conf_loads: Optional[bool] = None
    answers: Optional[str] = None         # the reply to `python audio_stream` (now)
    answered_before: bool = False         # it answered -USAGE before this run installed anything
    python_log_error: Optional[str] = None  # the last import error mod_python3 logged for us
    script_copy: Optional[Tuple[str, Optional[str], bool]] = None   # (path, link target, has pip metadata)
    source: Optional[str] = None          # what pip installs (a project dir, a wheel, a requirement)
    conf_source: Optional[str] = None
    snippets: Dict[str, Optional[bytes]] = field(default_factory=dict)   # snippet -> its content
    conf_existing: Dict[str, Optional[bytes]] = field(default_factory=dict)  # dest path -> content
    startup_script_set: Optional[bool] = None
    our_pip: Optional[str] = None         # the pip next to the installer (for pip --python)
    installer_python: str = "python3"


@dataclass
class Options:
    method: str = "auto"                  # auto, target, site, none
    no_deps: bool = False
    reinstall: bool = False
    conf: bool = True
    dry_run: bool = False


@dataclass
class Step:
    kind: str                             # "pip", "write", "keep"
    text: str                             # what it does, for the operator
    argv: Optional[List[str]] = None      # pip
    path: Optional[str] = None            # write: destination
    content: Optional[bytes] = None
    why: Optional[str] = None


@dataclass
class Plan:
    steps: List[Step] = field(default_factory=list)
    blockers: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    method: Optional[str] = None


# ---- reading what tools print --------------------------------------------------------------------

_LDD_RE = re.compile(r"^\s*(libpython(\d+\.\d+)[a-z]*\.so[.\d]*)\s*=>\s*(not found|(\S+))", re.M)


def parse_ldd(text):
    """(soname, path or None when 'not found', "3.11") of the libpython `ldd` lists, else None."""
    m = _LDD_RE.search(text or "")
    if not m:
        return None
    return m.group(1), m.group(4), m.group(2)


def version_tuple(text):
    return tuple(int(x) for x in re.findall(r"\d+", text or "")[:3])


def python_candidates(libpython, explicit=None):
    """Interpreters that may be the one linked to `libpython` (soname, path, version), best first."""
    if explicit:
        return [explicit]
    if not libpython:
        return []
    _, path, ver = libpython
    found = []
    if path:
        libdir = os.path.dirname(path)
        if re.search(r"/lib(64)?/[^/]+-linux-gnu[^/]*$", libdir) or libdir in ("/lib", "/lib64"):
            prefix = "/usr"          # Debian multiarch: /usr/lib/x86_64-linux-gnu, /lib/… (usrmerge)
        else:
            prefix = os.path.dirname(libdir)     # /opt/python3.11/lib -> /opt/python3.11
        found += [os.path.join(prefix, "bin", "python" + ver), os.path.join(prefix, "bin", "python3")]
    found += ["/usr/bin/python" + ver, "/usr/local/bin/python" + ver]
    return list(dict.fromkeys(found))


def layout_guesses(prefix):
    """The dirs FreeSWITCH uses under `prefix`: classic (./configure) and FHS (Debian packages,
    or any --prefix at build time)."""
    if prefix in ("/usr", "/"):
        return [{"script_dir": "/usr/share/freeswitch/scripts", "conf_dir": "/etc/freeswitch",
                 "mod_dir": "/usr/lib/freeswitch/mod", "log_dir": "/var/log/freeswitch"}]
    return [
        {"script_dir": prefix + "/scripts", "conf_dir": prefix + "/conf", "mod_dir": prefix + "/mod",
         "log_dir": prefix + "/log"},
        {"script_dir": prefix + "/share/freeswitch/scripts", "conf_dir": prefix + "/etc/freeswitch",
         "mod_dir": prefix + "/lib/freeswitch/mod", "log_dir": prefix + "/var/log/freeswitch"},
    ]


_COMMENT_RE = re.compile(r"<!--.*?-->", re.S)


def loads_module(xml_text, module="mod_python3"):
    """Whether modules.conf.xml has an active (not commented out) <load module="…"/>."""
    text = _COMMENT_RE.sub("", xml_text or "")
    return re.search(r"<load\s+module\s*=\s*[\"']%s[\"']" % re.escape(module), text) is not None


def startup_script_set(xml_text):
    text = _COMMENT_RE.sub("", xml_text or "")
    return re.search(r"name\s*=\s*[\"']startup-script[\"']\s+value\s*=\s*[\"']audio_stream[\"']", text) is not None


def python_error_from_log(log_tail, module="audio_stream"):
    """The last 'Python Error by calling script "audio_stream"' of mod_python3, with its message."""
    lines = (log_tail or "").splitlines()
    marker = 'Python Error by calling script "%s"' % module
    for i in range(len(lines) - 1, -1, -1):
        if marker in lines[i]:
            what = lines[i].split(marker, 1)[1].strip(": ")
            message = lines[i + 1].strip() if i + 1 < len(lines) and lines[i + 1].startswith("Message:") else ""
            return ("%s %s" % (what, message)).strip()
    return None


# ---- deciding -------------------------------------------------------------------------------------

def choose_method(facts, requested):
    """('target' | 'site' | 'none', why)."""
    py = facts.python
    if requested != "auto":
        return requested, "asked for with --method %s" % requested
    if py and py.externally_managed:
        return "target", ("%s is marked externally managed (PEP 668: its packages belong to the "
                          "system's package manager), so the package and its dependencies go into "
                          "the script dir with pip --target, which mod_python3 puts on its import "
                          "path; the system's Python packages stay untouched. --method site installs "
                          "into site-packages with --break-system-packages instead." % py.executable)
    return "site", ("%s is not externally managed: the package goes into its site-packages with "
                    "its own pip" % (py.executable if py else "the Python"))


def pip_argv(facts, method, opts):
    """The pip command line, or (None, reason) when there is no pip to run."""
    py = facts.python
    if py.pip:
        base = [py.executable, "-m", "pip"]
    elif facts.our_pip and version_tuple(facts.our_pip) >= PIP_PYTHON_OPTION:
        base = [facts.installer_python, "-m", "pip", "--python", py.executable]
    else:
        return None, ("%s has no pip: install it (Debian: apt-get install python3-pip) and run "
                      "this again" % py.executable)
    argv = base + ["install", "--upgrade"]
    if method == "target":
        argv += ["--target", facts.dirs["script_dir"][0]]
    elif py.externally_managed and version_tuple(py.pip or facts.our_pip) >= PIP_BREAK_SYSTEM:
        argv += ["--break-system-packages"]
    if opts.no_deps:
        argv += ["--no-deps"]
    if opts.reinstall:
        argv += ["--force-reinstall"]
    return argv + [facts.source], None


def conf_steps(facts):
    """Steps that put conf/ snippets in the switch's conf dir without replacing anything of the
    operator's, and the notes that go with them."""
    steps, notes = [], []
    conf_dir = facts.dirs["conf_dir"][0]
    for src, dest_rel, kind in SNIPPETS:
        content = facts.snippets.get(src)
        if content is None:
            continue
        dest = os.path.join(conf_dir, dest_rel)
        current = facts.conf_existing.get(dest)
        if kind == "config" and current is None:
            steps.append(Step("write", "install %s" % dest, path=dest, content=content))
            continue
        if current == content:
            steps.append(Step("keep", "keep %s (already the same as conf/%s)" % (dest, src)))
            continue
        dist = dest + ".dist"
        if facts.conf_existing.get(dist) == content:
            steps.append(Step("keep", "keep %s (already the same as conf/%s)" % (dist, src)))
        else:
            why = ("yours is kept; FreeSWITCH does not load *.dist files" if current is not None
                   else "an example: FreeSWITCH does not load *.dist files")
            steps.append(Step("write", "write %s (%s)" % (dist, why), path=dist, content=content))
        if kind == "sample" and current is None:
            notes.append("the dialplan example %s answers 5000 in the default context (the stock "
                         "configuration's IVR demo has that number too): copy it to %s, change the "
                         "number and the WebSocket URL, then fs_cli -x reloadxml" % (dist, dest))
    return steps, notes


def build_plan(facts, opts):
    plan = Plan()
    if "script_dir" not in facts.dirs:
        plan.blockers.append("cannot find FreeSWITCH's script directory: %s. Give --prefix (where "
                             "FreeSWITCH is installed), --fs-cli or --esl, or --script-dir and "
                             "--conf-dir" % (facts.switch_error or "no layout found"))
        return plan
    if facts.python is None and facts.module_loaded and facts.mod_python3_so is None:
        plan.blockers.append("FreeSWITCH (%s) says mod_python3 is loaded, but %s/mod_python3.so is not on "
                             "this machine: run the installer on the switch's own machine"
                             % (facts.switch, facts.dirs.get("mod_dir", ("its mod dir",))[0]))
        return plan
    if facts.python is None:
        plan.blockers.append("cannot tell which Python mod_python3 embeds: %s. Give --python "
                             "(the interpreter whose libpython mod_python3.so links)"
                             % (facts.python_error or facts.ldd_error or "mod_python3.so not found"))
        return plan
    py = facts.python
    method, why = choose_method(facts, opts.method)
    plan.method = method
    script_dir = facts.dirs["script_dir"][0]
    same = (py.package_version == facts.our_version and not py.missing)
    if method != "none":
        copy = facts.script_copy
        if copy and copy[1]:
            plan.blockers.append(
                "%s is a link to %s: mod_python3 imports that copy before anything installed "
                "elsewhere, and this installer never replaces a link. Remove the link (rm %s; its "
                "target stays) and run again, or keep using that copy (--method none)"
                % (copy[0], copy[1], copy[0]))
        elif copy and method == "site":
            plan.blockers.append(
                "%s would shadow what pip installs into site-packages (mod_python3 puts the script "
                "dir first on its path): remove it, or use --method target" % copy[0])
        elif same and not opts.reinstall:
            plan.steps.append(Step("keep", "keep audio_stream %s at %s: the embedded Python already "
                                   "imports this version and its dependencies (--reinstall to install "
                                   "anyway)" % (py.package_version, py.package_path)))
        elif not facts.source:
            plan.blockers.append("no source to install audio_stream %s from: run the installer from "
                                 "the project's checkout, or give --source <dir|wheel|requirement>"
                                 % facts.our_version)
        else:
            argv, problem = pip_argv(facts, method, opts)
            if problem:
                plan.blockers.append(problem)
            else:
                where = script_dir if method == "target" else (py.purelib or "site-packages")
                plan.steps.append(Step("pip", "install audio_stream %s%s into %s" % (
                    facts.our_version, "" if opts.no_deps else " and its dependencies", where),
                    argv=argv, why=why))
    if opts.conf and "conf_dir" in facts.dirs:
        steps, notes = conf_steps(facts)
        plan.steps += steps
        plan.notes += notes
    elif opts.conf:
        plan.notes.append("no conf dir found: conf snippets not installed (give --conf-dir)")
    return plan


def next_steps(facts, installed, will_install=False):
    """What the operator still has to do, exactly; [] when audio_stream answers in the switch.
    `installed`: whether this run changed the package; `will_install`: a dry run that would (so
    the switch not answering yet is expected)."""
    out = []
    conf = facts.modules_conf or "modules.conf.xml"
    if facts.switch_error:
        out.append("FreeSWITCH did not answer (%s): start it, or point the installer at it with "
                   "--fs-cli PATH or --esl HOST:PORT --password …, then run this again to check"
                   % facts.switch_error)
    if facts.mod_python3_so is None and "mod_dir" in facts.dirs:
        out.append("mod_python3.so is not in %s: install it (Debian packages: apt-get install "
                   "freeswitch-mod-python3; from source: enable languages/mod_python3 in "
                   "modules.conf, then make mod_python3-install)" % facts.dirs["mod_dir"][0])
    elif facts.libpython and facts.libpython[1] is None:
        out.append("mod_python3.so links %s, which is not installed: install that Python's shared "
                   "library (Debian: apt-get install libpython%s)" % (facts.libpython[0], facts.libpython[2]))
    if facts.module_loaded is False:
        if facts.modules_conf_loads is False:
            out.append("mod_python3 is not loaded: add %s to %s and run fs_cli -x 'load mod_python3'"
                       % (LOAD_LINE, conf))
        else:
            out.append("mod_python3 is not loaded: run fs_cli -x 'load mod_python3' and read "
                       "FreeSWITCH's log if it fails")
    if facts.module_loaded and facts.answers is not None and not facts.answers.startswith("-USAGE") \
            and not will_install:
        why = facts.python_log_error or "FreeSWITCH's log says why (look for 'Python Error by calling script')"
        out.append("fs_cli -x 'python audio_stream' answered '%s' instead of -USAGE: %s"
                   % (facts.answers.strip().splitlines()[0] if facts.answers.strip() else "", why))
    if installed and facts.answered_before:
        out.append("restart FreeSWITCH when no call is streaming, so that it loads the version just "
                   "installed (mod_python3 keeps an imported package until the process ends)")
    if facts.startup_script_set is False:
        out.append("optional: add %s inside <settings> of %s, so audio_stream's loop starts when "
                   "mod_python3 loads rather than on the first call" % (
                       STARTUP_LINE, os.path.join(facts.dirs.get("conf_dir", ("<conf_dir>",))[0],
                                                  "autoload_configs", "python.conf.xml")))
    return out
