"""The installer's eyes: find FreeSWITCH, ask it (fs_cli or the event socket), read its files,
run ldd and the embedded Python. Only reads; returns install_plan.Facts."""
import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from urllib.parse import urlsplit
from urllib.request import url2pathname

from . import esl, install_plan as P

WELL_KNOWN_PREFIXES = ("/usr/local/freeswitch", "/usr", "/opt/freeswitch", "/usr/local")
DEPENDENCIES = ("aiohttp", "numpy", "samplerate", "ujson")

# Run by the embedded Python with the script dir on PYTHONPATH, as mod_python3 runs it.
CHECK_SCRIPT = r"""
import json, os, sys, sysconfig
paths = sysconfig.get_paths()
out = {"executable": sys.executable, "version": "%d.%d.%d" % sys.version_info[:3],
       "ldlibrary": sysconfig.get_config_var("INSTSONAME") or sysconfig.get_config_var("LDLIBRARY"),
       "libdir": sysconfig.get_config_var("LIBDIR"), "purelib": paths["purelib"],
       # PEP 668: the marker does not apply inside a virtual environment
       "externally_managed": os.path.exists(os.path.join(paths["stdlib"], "EXTERNALLY-MANAGED"))
                             and sys.prefix == sys.base_prefix}
try:
    import pip
    out["pip"] = pip.__version__
except Exception:
    out["pip"] = None
try:
    import audio_stream
    from audio_stream.version import VERSION
    out["package_path"], out["package_version"] = os.path.dirname(audio_stream.__file__), VERSION
except Exception as e:
    out["package_error"] = "%s: %s" % (type(e).__name__, e)
out["missing"] = []
for name in sys.argv[1:]:
    try:
        __import__(name)
    except Exception as e:
        out["missing"].append("%s (%s: %s)" % (name, type(e).__name__, e))
out["ext_suffix"] = sysconfig.get_config_var("EXT_SUFFIX")
ver = "%d%d" % sys.version_info[:2]
plat = sysconfig.get_platform().replace("-", "_").replace(".", "_")
out["tag"] = "cp%s-cp%s-%s" % (ver, ver, plat) if sys.implementation.name == "cpython" else None
try:
    import importlib.metadata as md
    out["dists"] = {d.metadata["Name"]: d.version for d in
                    md.distributions(path=sorted({paths["purelib"], paths["platlib"]})) if d.metadata["Name"]}
except Exception:
    out["dists"] = {}
print(json.dumps(out))
"""


class Switch:
    """Asks FreeSWITCH through fs_cli (which reads its own host and password settings) or
    through the event socket directly."""

    def __init__(self, fs_cli=None, host=None, port=None, password=None):
        self.fs_cli, self.host, self.port, self.password = fs_cli, host, port, password
        if fs_cli:
            self.name = "fs_cli " + fs_cli
        else:
            self.name = "the event socket at %s:%d" % (host, port)
        self.conn = None

    def api(self, cmd):
        if self.fs_cli:
            argv = [self.fs_cli]
            if self.host:
                argv += ["-H", self.host, "-P", str(self.port)]
            if self.password:
                argv += ["-p", self.password]
            r = subprocess.run(argv + ["-x", cmd], capture_output=True, text=True, timeout=30,
                               stdin=subprocess.DEVNULL)
            if r.returncode != 0:
                raise esl.ESLError((r.stderr or r.stdout).strip().splitlines()[-1] if (r.stderr or r.stdout).strip()
                                   else "%s exited with %d" % (self.fs_cli, r.returncode))
            return r.stdout.strip()
        if self.conn is None:
            self.conn = esl.connect(self.host, self.port, self.password or esl.DEFAULT_PASSWORD)
        return self.conn.api(cmd)

    def close(self):
        if self.conn is not None:
            self.conn.close()


def find_fs_cli(explicit=None, prefix=None):
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    prefixes = [prefix] if prefix else []
    found = shutil.which("fs_cli")
    if found and not prefix:
        return found
    for p in prefixes + list(WELL_KNOWN_PREFIXES):
        path = os.path.join(p, "bin", "fs_cli")
        if os.access(path, os.X_OK):
            return path
    return None


def _read(path, limit=None):
    try:
        with open(path, "rb") as f:
            if limit:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - limit))
            return f.read()
    except OSError:
        return None


def _guess_dirs(prefix):
    """The first layout whose script or mod dir exists, under --prefix or a well-known prefix."""
    for p in ([prefix] if prefix else list(WELL_KNOWN_PREFIXES)):
        for layout in P.layout_guesses(p.rstrip("/") or "/"):
            if os.path.isdir(layout["mod_dir"]) and os.path.exists(os.path.join(layout["mod_dir"], "mod_python3.so")) \
                    or os.path.isdir(layout["script_dir"]) and os.path.isdir(layout["conf_dir"]):
                return layout, p
    return None, None


def run_python_check(python, script_dir):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(x for x in (env.get("PYTHONPATH"), script_dir) if x)
    with tempfile.TemporaryDirectory() as cwd:      # never import a copy from the current dir
        r = subprocess.run([python, "-c", CHECK_SCRIPT, *DEPENDENCIES], capture_output=True, text=True,
                           timeout=120, cwd=cwd, env=env, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise RuntimeError((r.stderr.strip().splitlines() or ["exit status %d" % r.returncode])[-1])
    return json.loads(r.stdout.strip().splitlines()[-1])


def _python_info(data):
    return P.PythonInfo(executable=data["executable"], version=data["version"],
                        externally_managed=data["externally_managed"], pip=data.get("pip"),
                        purelib=data.get("purelib"), package_path=data.get("package_path"),
                        package_version=data.get("package_version"), package_error=data.get("package_error"),
                        missing=tuple(data.get("missing", ())), ext_suffix=data.get("ext_suffix"),
                        tag=data.get("tag"), dists=data.get("dists") or {})


def find_python(facts, explicit, script_dir):
    """The interpreter behind mod_python3's libpython, checked by asking it about itself."""
    candidates = P.python_candidates(facts.libpython, explicit)
    lib = facts.libpython
    if explicit and not os.access(explicit, os.X_OK):
        facts.python_error = "--python %s is not an executable" % explicit
        return None
    fallback = None
    for cand in candidates:
        if not os.access(cand, os.X_OK):
            continue
        try:
            data = run_python_check(cand, script_dir)
        except (OSError, RuntimeError, ValueError, subprocess.TimeoutExpired) as e:
            facts.python_error = "%s does not run: %s" % (cand, e)
            continue
        if explicit or not lib:
            return _python_info(data)
        if not data["version"].startswith(lib[2] + "."):
            continue
        ours = os.path.realpath(os.path.join(data.get("libdir") or "", data.get("ldlibrary") or ""))
        if lib[1] and ours == os.path.realpath(lib[1]):
            return _python_info(data)
        fallback = fallback or data
    if fallback:
        return _python_info(fallback)
    if lib and not facts.python_error:
        facts.python_error = "no Python %s found that uses %s (tried %s)" % (
            lib[2], lib[1] or lib[0], ", ".join(candidates))
    return None


def _is_project(root):
    """Whether `root` is a checkout of this project (setup.cfg naming it, the package beside it)."""
    setup = _read(os.path.join(root, "setup.cfg")) or b""
    return b"name = audio_stream" in setup and os.path.isfile(os.path.join(root, P.PACKAGE, "__init__.py"))


def _file_hash(path):
    """sha256 of a file as RECORD writes it (urlsafe base64, no padding), or None."""
    data = _read(path)
    if data is None:
        return None
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _our_distribution(package_dir):
    """The installed distribution (importlib.metadata) whose files are this package, or None."""
    try:
        import importlib.metadata as md
    except ImportError:                 # Python < 3.8
        return None
    for dist in md.distributions(path=[os.path.dirname(package_dir)]):
        if (dist.metadata["Name"] or "").lower().replace("-", "_") == P.PACKAGE:
            return dist
    return None


def _installed_from(dist):
    """The local directory pip installed `dist` from (PEP 610 direct_url.json), or None."""
    try:
        info = json.loads(dist.read_text("direct_url.json") or "null")
    except ValueError:
        return None
    if not isinstance(info, dict) or "dir_info" not in info or not str(info.get("url", "")).startswith("file://"):
        return None
    return url2pathname(urlsplit(info["url"]).path)


def _same_files(dist, checkout):
    """Whether the checkout's package is, file for file, what pip installed from it."""
    recorded = {str(f): f.hash.value for f in dist.files or () if str(f).startswith(P.PACKAGE + "/")
                and str(f).endswith(".py") and f.hash}
    if not recorded:
        return False
    there = set()
    for dirpath, dirnames, files in os.walk(os.path.join(checkout, P.PACKAGE)):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        there |= {os.path.relpath(os.path.join(dirpath, f), checkout) for f in files if f.endswith(".py")}
    if there != set(recorded):
        return False
    return all(_file_hash(os.path.join(checkout, f)) == h for f, h in recorded.items())


def _distribution_files(dist, site):
    """The distribution's files relative to `site` (RECORD; without it, what is on disk), without
    bytecode, scripts and data outside site-packages, or the record of how pip installed it."""
    junk = ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json")
    if dist.files:
        names = [str(f) for f in dist.files]
    else:
        names = []
        info = "%s-%s.dist-info" % (P.PACKAGE, dist.version)
        for top in (P.PACKAGE, info):
            for dirpath, _, files in os.walk(os.path.join(site, top)):
                names += [os.path.relpath(os.path.join(dirpath, f), site) for f in files]
    return tuple(sorted(n for n in names if not n.startswith("..") and "__pycache__" not in n
                        and not (".dist-info/" in n and n.rsplit("/", 1)[1] in junk)))


def own_source(package_dir=None):
    """(Source, None) for the audio_stream this installer runs from, or (None, why not).

    A project checkout (python -m audio_stream install in it, or an editable install) is the
    source itself. An installed distribution (pip install ., a wheel, the package index) is
    installed again from the checkout it came from when that is still there, unchanged (so the
    embedded Python builds the optional compiled accelerator for itself), else from its own
    installed files, packed into a wheel."""
    pkg = package_dir or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    root, version = os.path.dirname(pkg), None
    if _is_project(root):
        return P.Source("dir", root, "the source is the project checkout this installer runs from"), None
    dist = _our_distribution(pkg)
    if dist is None:
        return None, ("the audio_stream this installer runs from (%s) is neither a project checkout "
                      "nor an installed distribution" % pkg)
    version = dist.version
    origin = _installed_from(dist)
    if origin and _is_project(origin) and _same_files(dist, origin):
        return P.Source("dir", origin, "the source is the checkout audio_stream %s was installed from, "
                        "unchanged since (pip builds it for the embedded Python)" % version), None
    files = _distribution_files(dist, root)
    if not any(f.startswith(P.PACKAGE + "/") for f in files):
        return None, "the installed distribution audio_stream %s at %s lists no files" % (version, root)
    return P.Source("installed", root, "the source is audio_stream %s as installed at %s, packed into a "
                    "wheel" % (version, root), files), None


def given_source(text):
    if os.path.isdir(text):
        return P.Source("dir", os.path.abspath(text), "the source is %s (--source)" % text)
    if os.path.isfile(text):
        return P.Source("file", os.path.abspath(text), "the source is %s (--source)" % text)
    return P.Source("requirement", text, "the source is the requirement %s (--source), from the package index" % text)


def conf_source(source=None):
    """The conf samples: the source's conf/, the checkout this runs from, or where pip put the
    data files (<prefix>/share/audio-stream/conf; the .deb: /usr/share/audio-stream/conf)."""
    own = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    roots = [source.location] if source and source.kind == "dir" else []
    roots += [own] if _is_project(own) else []
    candidates = [os.path.join(r, "conf") for r in roots] + [
        os.path.join(sys.prefix, "share", "audio-stream", "conf"),
        "/usr/share/audio-stream/conf", "/usr/local/share/audio-stream/conf"]
    for c in candidates:
        if os.path.exists(os.path.join(c, "autoload_configs", "python.conf.xml")):
            return c
    return None


def read_json(path):
    data = _read(path)
    try:
        value = json.loads(data.decode("utf-8")) if data is not None else None
    except ValueError:
        return None
    return value if isinstance(value, dict) and value.get("installed_by") == P.INSTALLED_BY else None


def files_under(root):
    """Every file (and link) under `root`, relative to it."""
    out = []
    for dirpath, dirnames, files in os.walk(root):
        out += [os.path.relpath(os.path.join(dirpath, f), root) for f in files]
        out += [os.path.relpath(os.path.join(dirpath, d), root) for d in dirnames
                if os.path.islink(os.path.join(dirpath, d))]
    return tuple(sorted(out))


def _legacy_entries(script_dir):
    """Script-dir entries that an earlier installer (pip --target <script_dir>) put there: the
    top-level names in the RECORDs of the distributions it installed, when audio_stream is one."""
    try:
        infos = [n for n in os.listdir(script_dir) if n.endswith(".dist-info")]
    except OSError:
        return ()
    if not any(n.lower().startswith(P.PACKAGE + "-") for n in infos):
        return ()
    tops = set(infos)
    for info in infos:
        for line in (_read(os.path.join(script_dir, info, "RECORD")) or b"").decode("utf-8", "replace").splitlines():
            top = line.split(",", 1)[0].split("/", 1)[0]
            if top and top != ".." and os.path.lexists(os.path.join(script_dir, top)):
                tops.add(top)
    tops.discard(P.PACKAGE)
    return tuple(sorted(tops))


def script_copy(script_dir):
    path = os.path.join(script_dir, P.PACKAGE)
    if not os.path.lexists(path):
        return None
    if os.path.islink(path):
        return P.Copy(path, link=os.readlink(path))
    manifest = read_json(os.path.join(path, P.MANIFEST))
    present = files_under(path) if os.path.isdir(path) else ()
    return P.Copy(path, manifest=manifest, present=present,
                  unknown=P.unknown_files(manifest, present) if manifest else (),
                  legacy=() if manifest else _legacy_entries(script_dir))


def _pip_version():
    try:
        from pip import __version__
        return __version__
    except Exception:
        return None


def probe(a, our_version):
    """Facts from the command-line options `a` (see installer.py)."""
    facts = P.Facts(our_version=our_version, our_pip=_pip_version(), installer_python=sys.executable)
    host, port = a.esl if a.esl else (None, None)
    fs_cli = None if (a.esl and not a.fs_cli) else find_fs_cli(a.fs_cli, a.prefix)
    if a.fs_cli and not fs_cli:
        facts.switch_error = "%s is not an executable" % a.fs_cli
    if not fs_cli and not host:
        host, port = esl.DEFAULT_HOST, esl.DEFAULT_PORT
    facts.fs_cli = fs_cli or find_fs_cli(None, a.prefix)
    switch = Switch(fs_cli, host, port, a.password) if (fs_cli or host) else None
    dirs = {}
    if switch:
        facts.switch = switch.name
        try:
            facts.fs_version = switch.api("version")
            for name in ("script_dir", "conf_dir", "mod_dir", "log_dir"):
                value = switch.api("global_getvar " + name)
                if value and not value.startswith("-ERR"):
                    dirs[name] = (value, "from the switch")
            facts.module_loaded = switch.api("module_exists mod_python3") == "true"
            if facts.module_loaded:
                facts.answers = switch.api("python audio_stream")
                facts.answered_before = facts.answers.startswith("-USAGE")
        except (esl.ESLError, OSError, subprocess.TimeoutExpired) as e:
            facts.switch_error = str(e) or e.__class__.__name__
        finally:
            switch.close()
    if "script_dir" not in dirs:
        layout, where = _guess_dirs(a.prefix)
        if layout:
            for name, value in layout.items():
                dirs.setdefault(name, (value, "guessed from %s" % where))
    for name in ("script_dir", "conf_dir", "mod_dir"):
        value = getattr(a, name)
        if value:
            dirs[name] = (value, "given")
    facts.dirs = dirs

    if "mod_dir" in dirs:
        so = os.path.join(dirs["mod_dir"][0], "mod_python3.so")
        if os.path.exists(so):
            facts.mod_python3_so = so
            try:
                r = subprocess.run(["ldd", so], capture_output=True, text=True, timeout=30)
                facts.libpython = P.parse_ldd(r.stdout)
                if facts.libpython is None:
                    facts.ldd_error = "ldd %s lists no libpython" % so
            except (OSError, subprocess.TimeoutExpired) as e:
                facts.ldd_error = "cannot run ldd: %s" % e
    if "script_dir" in dirs and (a.python or facts.libpython):
        facts.python = find_python(facts, a.python, dirs["script_dir"][0])

    facts.source, facts.source_error = (given_source(a.source), None) if a.source else own_source()
    if "conf_dir" in dirs:
        conf_dir = dirs["conf_dir"][0]
        modules_conf = os.path.join(conf_dir, "autoload_configs", "modules.conf.xml")
        text = _read(modules_conf)
        if text is not None:
            facts.modules_conf = modules_conf
            facts.modules_conf_loads = P.loads_module(text.decode("utf-8", "replace"))
        pyconf = _read(os.path.join(conf_dir, "autoload_configs", "python.conf.xml"))
        if pyconf is not None:
            facts.startup_script_set = P.startup_script_set(pyconf.decode("utf-8", "replace"))
        facts.conf_source = a.conf_source or conf_source(facts.source)
        if facts.conf_source:
            for src, dest_rel, _ in P.SNIPPETS:
                facts.snippets[src] = _read(os.path.join(facts.conf_source, src))
        for _, dest_rel, _ in P.SNIPPETS:
            dest = os.path.join(conf_dir, dest_rel)
            facts.conf_existing[dest] = _read(dest)
            facts.conf_existing[dest + ".dist"] = _read(dest + ".dist")
    if "script_dir" in dirs:
        facts.copy = script_copy(dirs["script_dir"][0])
        facts.outside_manifest = read_json(os.path.join(dirs["script_dir"][0], P.OUTSIDE_MANIFEST))
    if facts.answers is not None and not facts.answers.startswith("-USAGE") and "log_dir" in dirs:
        tail = _read(os.path.join(dirs["log_dir"][0], "freeswitch.log"), limit=256 * 1024)
        if tail:
            facts.python_log_error = P.python_error_from_log(tail.decode("utf-8", "replace"))
    return facts


def recheck(a, facts):
    """After installing: ask the switch and the embedded Python again."""
    if facts.switch and not facts.switch_error and facts.module_loaded:
        fs_cli = None if (a.esl and not a.fs_cli) else find_fs_cli(a.fs_cli, a.prefix)
        host, port = a.esl if a.esl else ((None, None) if fs_cli else (esl.DEFAULT_HOST, esl.DEFAULT_PORT))
        switch = Switch(fs_cli, host, port, a.password)
        try:
            facts.answers = switch.api("python audio_stream")
        except (esl.ESLError, OSError, subprocess.TimeoutExpired) as e:
            facts.switch_error = str(e)
        finally:
            switch.close()
    if facts.python:
        try:
            facts.python = _python_info(run_python_check(facts.python.executable, facts.dirs["script_dir"][0]))
        except (OSError, RuntimeError, ValueError, subprocess.TimeoutExpired) as e:
            facts.python_error = str(e)
    return facts


def recheck_dists(facts):
    """After pip installed into site-packages: what is there now."""
    facts.python = _python_info(run_python_check(facts.python.executable, facts.dirs["script_dir"][0]))
