"""The installer's decisions, without any I/O: what was found (Facts) → what to do (Plan) and
what the operator must do next. Everything here is a plain function of its arguments, so the
tests drive it with made-up facts; install_probe.py finds the facts, installer.py acts.

The footprint (docs/operations.md): with the default method everything goes into ONE directory,
`<script_dir>/audio_stream`: the package, its dependencies in `audio_stream/_deps` (which the
package itself puts first on sys.path when mod_python3 imports it) and `install-manifest.json`,
the list of every file the installer added there and in the conf dir. `--uninstall` removes
exactly those; an upgrade builds the new directory beside the old one and swaps them.
"""
import hashlib
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

# conf/ snippet (relative to the project's conf/) -> destination relative to the switch's conf_dir.
# "config": installed when missing, else a .dist copy beside the operator's file.
# "sample": an example that must not change call routing by itself: always the .dist name.
SNIPPETS = (
    ("autoload_configs/python.conf.xml", "autoload_configs/python.conf.xml", "config"),
    ("autoload_configs/audio_stream.conf.xml", "autoload_configs/audio_stream.conf.xml", "config"),
    ("dialplan/audio_stream.xml", "dialplan/default/audio_stream.xml", "sample"),
)

STARTUP_LINE = '<param name="startup-script" value="audio_stream"/>'
LOAD_LINE = '<load module="mod_python3"/>'
PIP_PYTHON_OPTION = (22, 3)       # pip --python <interpreter>
PIP_BREAK_SYSTEM = (23, 0, 1)     # pip --break-system-packages (PEP 668)

PACKAGE = "audio_stream"
DEPS_DIR = "_deps"                # <package>/_deps: the dependencies (audio_stream/__init__.py puts it on sys.path)
MANIFEST = "install-manifest.json"             # <package>/install-manifest.json (method target)
OUTSIDE_MANIFEST = "audio_stream-install-manifest.json"   # <script_dir>/…, methods site and none
STAGING = ".audio_stream-install"  # <script_dir>/…: the new version is built here, then swapped in
LEFT_OUT = ("bin", "share")       # what pip --target adds besides packages: console scripts, data files
LEFT_OUT_PACKAGE = ("testing",)   # audio_stream/testing: the switch simulator, for tests and the demo
INSTALLED_BY = "audio-stream-install"


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
    ext_suffix: Optional[str] = None      # ".cpython-311-x86_64-linux-gnu.so"
    tag: Optional[str] = None             # its wheel tag for compiled code: "cp311-cp311-linux_x86_64"
    dists: Dict[str, str] = field(default_factory=dict)   # distributions in its site-packages: name -> version


@dataclass
class Source:
    """What pip installs. kind: "dir" (a project directory), "file" (a wheel or sdist),
    "requirement" (from the package index), or "installed" (the files of the distribution the
    installer runs from, packed into a wheel first: `location` is its site dir, `files` its files
    relative to it, from the distribution's RECORD)."""
    kind: str
    location: str
    why: str
    files: Tuple[str, ...] = ()


@dataclass
class Copy:
    """What is at <script_dir>/audio_stream now."""
    path: str
    link: Optional[str] = None            # a symbolic link's target
    manifest: Optional[dict] = None       # install-manifest.json, when this installer made it
    present: Tuple[str, ...] = ()         # every file in it, relative to it
    unknown: Tuple[str, ...] = ()         # files in it that the manifest does not list (not bytecode)
    legacy: Tuple[str, ...] = ()          # script-dir entries an earlier pip --target install left beside it


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
    copy: Optional[Copy] = None           # <script_dir>/audio_stream, when there is one
    outside_manifest: Optional[dict] = None  # <script_dir>/audio_stream-install-manifest.json
    source: Optional[Source] = None       # what pip installs
    source_error: Optional[str] = None    # why there is none
    conf_source: Optional[str] = None
    snippets: Dict[str, Optional[bytes]] = field(default_factory=dict)   # snippet -> its content
    conf_existing: Dict[str, Optional[bytes]] = field(default_factory=dict)  # dest path -> content
    startup_script_set: Optional[bool] = None
    fs_cli: Optional[str] = None          # the fs_cli found (the commands it prints use it)
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
    kind: str                             # "stage", "pip", "write", "keep", "remove", "pip-uninstall"
    text: str                             # what it does, for the operator
    argv: Optional[List[str]] = None      # pip
    path: Optional[str] = None            # write, remove: the file; stage: the package dir it makes
    content: Optional[bytes] = None
    why: Optional[str] = None
    wheel: Optional[str] = None           # stage/pip from the installed files: the wheel to pack first
    keep_ext: Tuple[str, ...] = ()        # ... with these compiled modules (built for the embedded Python)
    files: Tuple[str, ...] = ()           # remove-tree: the files (relative to path) to remove


@dataclass
class Plan:
    steps: List[Step] = field(default_factory=list)
    blockers: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    method: Optional[str] = None


def fs_cli(facts):
    """How the operator runs fs_cli here: the path found (not on PATH when built from source)."""
    return facts.fs_cli or "fs_cli"


def sha256(data):
    return hashlib.sha256(data).hexdigest()


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

def package_dir(facts):
    return os.path.join(facts.dirs["script_dir"][0], PACKAGE)


def staging_dir(facts):
    return os.path.join(facts.dirs["script_dir"][0], STAGING)


def choose_method(facts, requested):
    """('target' | 'site' | 'none', why)."""
    py = facts.python
    if requested != "auto":
        return requested, "asked for with --method %s" % requested
    return "target", ("mod_python3 puts the script dir first on its import path, so one directory "
                      "there holds everything (the package, its dependencies in %s/%s, the list of "
                      "files): %s and its site-packages stay untouched, and --uninstall removes "
                      "exactly that" % (PACKAGE, DEPS_DIR, py.executable if py else "the Python"))


def wheel_for(facts):
    """For a source of kind "installed": (wheel path, compiled modules kept, compiled modules left
    out). A compiled module goes along only when it was built for the embedded Python (same
    extension suffix); without it the package runs its pure-Python code."""
    py, src = facts.python, facts.source
    compiled = [f for f in src.files if f.endswith(".so")]
    keep = tuple(f for f in compiled if py.ext_suffix and f.endswith(py.ext_suffix))
    dropped = tuple(f for f in compiled if f not in keep)
    tag = py.tag if keep and py.tag else "py3-none-any"
    name = "%s-%s-%s.whl" % (PACKAGE, facts.our_version, tag)
    return os.path.join(staging_dir(facts), "wheel", name), keep, dropped


def pip_base(facts):
    """(the start of a pip command line for the embedded Python, None), or (None, reason): its
    own pip, else ours run with --python."""
    py = facts.python
    if py.pip:
        return [py.executable, "-m", "pip"], None
    if facts.our_pip and version_tuple(facts.our_pip) >= PIP_PYTHON_OPTION:
        return [facts.installer_python, "-m", "pip", "--python", py.executable], None
    return None, "%s has no pip: install it (Debian: apt-get install python3-pip) and run this again" % py.executable


def pip_argv(facts, method, opts, what):
    """The pip command line that installs `what`, or (None, reason) when there is no pip to run."""
    py = facts.python
    base, problem = pip_base(facts)
    if problem:
        return None, problem
    argv = base + ["install"]
    if method == "target":
        argv += ["--target", os.path.join(staging_dir(facts), "target")]
    else:
        argv += ["--upgrade"]
        if py.externally_managed and version_tuple(py.pip or facts.our_pip) >= PIP_BREAK_SYSTEM:
            argv += ["--break-system-packages"]
        if opts.reinstall:
            argv += ["--force-reinstall"]
    if opts.no_deps:
        argv += ["--no-deps"]
    return argv + [what], None


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
                         "number and the WebSocket URL, then %s -x reloadxml" % (dist, dest, fs_cli(facts)))
    return steps, notes


def _install_steps(facts, opts, method, why, plan):
    py, copy = facts.python, facts.copy
    src = facts.source
    what = src.location
    if src.kind == "installed":
        wheel, keep, dropped = wheel_for(facts)
        what = wheel
        text = "pack the installed files of audio_stream %s (%s) into %s" % (facts.our_version, src.location, wheel)
        if keep:
            text += ", with the compiled accelerator built for %s" % py.executable
        elif dropped:
            text += " (its compiled accelerator was built for another Python: left out, the pure-Python code runs)"
        plan.steps.append(Step("pack", text, path=wheel, keep_ext=keep, why=src.why))
    argv, problem = pip_argv(facts, method, opts, what)
    if problem:
        plan.blockers.append(problem)
        return
    deps = "" if opts.no_deps else " and its dependencies"
    if method == "target":
        target = package_dir(facts)
        parts = ["the package", "its dependencies in %s/%s" % (PACKAGE, DEPS_DIR) if deps else
                 "no dependencies (--no-deps)", "%s listing every file" % MANIFEST]
        text = "install audio_stream %s%s into %s (one directory: %s; the simulator audio_stream/testing and " \
               "pip's bin/ and share/ are left out)" % (facts.our_version, deps, target, ", ".join(parts))
        if copy and copy.manifest:
            text += ", replacing audio_stream %s installed there" % copy.manifest.get("version", "?")
        plan.steps.append(Step("stage", text, argv=argv, path=target,
                               why="%s; %s" % (why, src.why) if src.kind != "installed" else why))
    else:
        where = py.purelib or "site-packages"
        plan.steps.append(Step("pip", "install audio_stream %s%s into %s" % (facts.our_version, deps, where),
                               argv=argv, why="%s; %s" % (why, src.why) if src.kind != "installed" else why))


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
    same = (py.package_version == facts.our_version and not py.missing)
    copy = facts.copy
    if method != "none":
        if copy and copy.link:
            plan.blockers.append(
                "%s is a link to %s: mod_python3 imports that copy before anything installed "
                "elsewhere, and this installer never replaces a link. Remove the link (rm %s; its "
                "target stays) and run again, or keep using that copy (--method none)"
                % (copy.path, copy.link, copy.path))
        elif copy and method == "site":
            plan.blockers.append(
                "%s would shadow what pip installs into site-packages (mod_python3 puts the script "
                "dir first on its path): %s, or use --method target" % (
                    copy.path, "remove it with --uninstall" if copy.manifest else "remove it"))
        elif same and not opts.reinstall:
            plan.steps.append(Step("keep", "keep audio_stream %s at %s: the embedded Python already "
                                   "imports this version and its dependencies (--reinstall to install "
                                   "anyway)" % (py.package_version, py.package_path)))
            if copy and not copy.manifest:
                plan.notes.append("%s was not installed by this installer (no %s): --uninstall will "
                                  "not remove it" % (copy.path, MANIFEST))
        elif copy and not copy.manifest:
            legacy = (" An earlier audio-stream-install also put these beside it: %s (remove them "
                      "too)." % ", ".join(copy.legacy)) if copy.legacy else ""
            plan.blockers.append(
                "%s was not put there by this installer (it has no %s), so it is not replaced: move "
                "it out of the script dir and run again.%s" % (copy.path, MANIFEST, legacy))
        elif copy and copy.unknown:
            plan.blockers.append(
                "%s holds files this installer did not put there (%s%s): an upgrade replaces the whole "
                "directory, so move them out and run again" % (
                    copy.path, ", ".join(copy.unknown[:5]), ", …" if len(copy.unknown) > 5 else ""))
        elif facts.source is None:
            plan.blockers.append("no source to install audio_stream %s from: %s; give --source "
                                 "<dir|wheel|requirement>" % (facts.our_version, facts.source_error
                                                              or "none found"))
        else:
            _install_steps(facts, opts, method, why, plan)
    if opts.conf and "conf_dir" in facts.dirs:
        steps, notes = conf_steps(facts)
        plan.steps += steps
        plan.notes += notes
    elif opts.conf:
        plan.notes.append("no conf dir found: conf snippets not installed (give --conf-dir)")
    return plan


def manifest_path(facts, method, installing):
    """Where this run records what it added: inside the package dir when the package is (or
    stays) ours there, else beside it in the script dir."""
    copy = facts.copy
    if (installing and method == "target") or (not installing and copy and copy.manifest and not copy.link):
        return os.path.join(package_dir(facts), MANIFEST)
    return os.path.join(facts.dirs["script_dir"][0], OUTSIDE_MANIFEST)


def merge_manifest(facts, version, method, python, source, files, written, current, added_dists=(), made_dirs=()):
    """The manifest after this run: `files` (relative to the package dir; None: no package
    installed by this run, keep the old list), the conf files `written` now (path -> sha256), and
    the conf files earlier runs wrote that still hold what they wrote (`current`: path -> sha256
    or None when missing)."""
    old = [m for m in ((facts.copy.manifest if facts.copy else None), facts.outside_manifest) if m]
    conf = {}
    dists, dirs = [], list(made_dirs)
    for m in old:
        for path, digest in (m.get("conf") or {}).items():
            if current.get(path) == digest:
                conf[path] = digest
        dists += [d for d in m.get("dists") or () if d not in dists]
        dirs += [d for d in m.get("conf_dirs") or () if d not in dirs]
    conf.update(written)
    dists += [d for d in added_dists if d not in dists]
    if files is None:
        files = next((m.get("files") for m in old if m.get("files")), [])
    return {"installed_by": INSTALLED_BY, "version": version, "method": method, "python": python,
            "source": source, "files": sorted(files), "conf": dict(sorted(conf.items())),
            "conf_dirs": sorted(set(dirs)), "dists": sorted(dists)}


def is_bytecode_of(rel, listed):
    """Whether `rel` (a path in the package dir) is Python's bytecode cache of a listed .py file."""
    head, name = os.path.split(rel)
    if os.path.basename(head) != "__pycache__" or not name.endswith(".pyc"):
        return False
    module = name.split(".", 1)[0]
    return os.path.join(os.path.dirname(head), module + ".py") in listed


def unknown_files(manifest, present):
    """Files in the package dir that the manifest does not list and that are not bytecode of
    files it lists: not the installer's."""
    listed = set(manifest.get("files") or ()) | {MANIFEST}
    return tuple(sorted(f for f in present if f not in listed and not is_bytecode_of(f, listed)))


def uninstall_plan(facts, present, current):
    """What --uninstall removes. `present`: the files now in the package dir (relative; empty
    when there is none); `current`: conf path -> sha256 of its content now (None: missing)."""
    plan = Plan()
    if "script_dir" not in facts.dirs:
        plan.blockers.append("cannot find FreeSWITCH's script directory: %s. Give --prefix, --fs-cli, "
                             "--esl or --script-dir" % (facts.switch_error or "no layout found"))
        return plan
    copy = facts.copy
    pkg = package_dir(facts)
    if copy and copy.link:
        plan.notes.append("%s is a link to %s: not installed by this installer, left alone" % (copy.path, copy.link))
    elif copy and not copy.manifest:
        plan.notes.append("%s was not installed by this installer (no %s): left alone" % (copy.path, MANIFEST))
    elif copy:
        listed = set(copy.manifest.get("files") or ()) | {MANIFEST}
        mine = sorted(f for f in present if f in listed or is_bytecode_of(f, listed))
        left = unknown_files(copy.manifest, present)
        plan.steps.append(Step("remove-tree", "remove %s: the %d files audio_stream %s put there%s" % (
            pkg, len(mine), copy.manifest.get("version", "?"),
            " (not %s: this installer did not put %s there)" % (", ".join(left[:5]), "them" if len(left) > 1 else "it")
            if left else ""), path=pkg, files=tuple(mine)))
        if left:
            plan.notes.append("left in %s: %s (not put there by this installer)" % (pkg, ", ".join(left)))
    manifests = [m for m in ((copy.manifest if copy and not copy.link else None), facts.outside_manifest) if m]
    conf = {}
    dists, dirs = [], set()
    for m in manifests:
        conf.update(m.get("conf") or {})
        dists += [d for d in m.get("dists") or () if d not in dists]
        dirs |= set(m.get("conf_dirs") or ())
    for path, digest in sorted(conf.items()):
        now = current.get(path)
        if now is None:
            continue
        if now == digest:
            plan.steps.append(Step("remove", "remove %s (installed by audio-stream-install, unchanged)" % path,
                                   path=path))
        else:
            plan.notes.append("%s was changed since audio-stream-install wrote it: kept" % path)
    for d in sorted(dirs, key=len, reverse=True):          # the deepest first
        plan.steps.append(Step("remove-dir", "remove %s if it is empty (made for the conf files)" % d, path=d))
    if dists:
        py = facts.python
        if py is None:
            plan.blockers.append("%s installed %s into the site-packages of a Python that cannot be found now: "
                                 "give --python" % (INSTALLED_BY, ", ".join(dists)))
        elif pip_base(facts)[1]:
            plan.blockers.append(pip_base(facts)[1])
        else:
            argv = pip_base(facts)[0] + ["uninstall", "--yes"]
            if py.externally_managed and version_tuple(py.pip or facts.our_pip) >= PIP_BREAK_SYSTEM:
                argv.append("--break-system-packages")
            plan.steps.append(Step("pip-uninstall", "uninstall %s from %s (what %s added there)" % (
                ", ".join(dists), py.purelib or "its site-packages", INSTALLED_BY), argv=argv + dists))
    if facts.outside_manifest is not None:
        outside = os.path.join(facts.dirs["script_dir"][0], OUTSIDE_MANIFEST)
        plan.steps.append(Step("remove", "remove %s (the list of what was installed)" % outside, path=outside))
    if not plan.steps:
        plan.notes.append("nothing installed by %s in %s" % (INSTALLED_BY, facts.dirs["script_dir"][0]))
    return plan


def after_uninstall(facts, removed_paths):
    """What the operator still has to do after --uninstall."""
    out = []
    conf_dir = facts.dirs.get("conf_dir", (None,))[0]
    if conf_dir:
        pyconf = os.path.join(conf_dir, "autoload_configs", "python.conf.xml")
        if facts.startup_script_set and pyconf not in removed_paths:
            out.append("remove %s from %s: mod_python3 would try to start audio_stream every time it "
                       "loads" % (STARTUP_LINE, pyconf))
        dialplan = os.path.join(conf_dir, "dialplan", "default", "audio_stream.xml")
        if facts.conf_existing.get(dialplan) is not None and dialplan not in removed_paths:
            out.append("your dialplan %s still calls audio_stream: remove it, then %s -x reloadxml"
                       % (dialplan, fs_cli(facts)))
    if facts.answered_before:
        out.append("restart FreeSWITCH when no call is streaming: the audio_stream code it already "
                   "imported stays in its memory until then")
    return out


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
            out.append("mod_python3 is not loaded: add %s to %s and run %s -x 'load mod_python3'"
                       % (LOAD_LINE, conf, fs_cli(facts)))
        else:
            out.append("mod_python3 is not loaded: run %s -x 'load mod_python3' and read " % fs_cli(facts) +
                       "FreeSWITCH's log if it fails")
    if facts.module_loaded and facts.answers is not None and not facts.answers.startswith("-USAGE") \
            and not will_install:
        why = facts.python_log_error or "FreeSWITCH's log says why (look for 'Python Error by calling script')"
        out.append("%s -x 'python audio_stream' answered '%s' instead of -USAGE: %s"
                   % (fs_cli(facts), facts.answers.strip().splitlines()[0] if facts.answers.strip() else "", why))
    if installed and facts.answered_before:
        out.append("restart FreeSWITCH when no call is streaming, so that it loads the version just "
                   "installed (mod_python3 keeps an imported package until the process ends)")
    if facts.startup_script_set is False:
        out.append("optional: add %s inside <settings> of %s, so audio_stream's loop starts when "
                   "mod_python3 loads rather than on the first call (from the next start of "
                   "FreeSWITCH: mod_python3 cannot be reloaded)" % (
                       STARTUP_LINE, os.path.join(facts.dirs.get("conf_dir", ("<conf_dir>",))[0],
                                                  "autoload_configs", "python.conf.xml")))
    return out
