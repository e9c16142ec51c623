"""The installer: its decisions (pure, from made-up facts) and whole runs against a fake
FreeSWITCH tree (a fake fs_cli that answers like a switch, a fake mod dir, a fake ldd)."""
import functools
import json
import os
import subprocess
import sys
import sysconfig
import textwrap

import pytest

from audio_stream.tools import install_plan as P
from audio_stream.version import VERSION

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ---- reading tools' output -------------------------------------------------------------------

LDD_DEBIAN = """\tlinux-vdso.so.1 (0x00007ffc)
\tlibpython3.11.so.1.0 => /lib/x86_64-linux-gnu/libpython3.11.so.1.0 (0x00007fac5b000000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)
"""


def test_parse_ldd():
    assert P.parse_ldd(LDD_DEBIAN) == ("libpython3.11.so.1.0", "/lib/x86_64-linux-gnu/libpython3.11.so.1.0", "3.11")
    assert P.parse_ldd("\tlibpython3.9.so.1.0 => not found\n") == ("libpython3.9.so.1.0", None, "3.9")
    assert P.parse_ldd("\tlibc.so.6 => /lib/libc.so.6\n") is None
    assert P.parse_ldd("") is None


def test_python_candidates():
    debian = P.parse_ldd(LDD_DEBIAN)
    assert P.python_candidates(debian)[0] == "/usr/bin/python3.11"
    opt = ("libpython3.12.so.1.0", "/opt/py312/lib/libpython3.12.so.1.0", "3.12")
    assert P.python_candidates(opt)[:2] == ["/opt/py312/bin/python3.12", "/opt/py312/bin/python3"]
    assert P.python_candidates(debian, "/x/python") == ["/x/python"]
    assert P.python_candidates(None) == []


def test_layout_guesses():
    classic, fhs = P.layout_guesses("/usr/local/freeswitch")
    assert classic["script_dir"] == "/usr/local/freeswitch/scripts" and classic["mod_dir"] == "/usr/local/freeswitch/mod"
    assert fhs["conf_dir"] == "/usr/local/freeswitch/etc/freeswitch"
    (deb,) = P.layout_guesses("/usr")
    assert deb == {"script_dir": "/usr/share/freeswitch/scripts", "conf_dir": "/etc/freeswitch",
                   "mod_dir": "/usr/lib/freeswitch/mod", "log_dir": "/var/log/freeswitch"}


def test_reading_modules_and_python_conf():
    assert P.loads_module('<modules>\n  <load module="mod_python3"/>\n</modules>')
    assert not P.loads_module('<modules>\n  <!-- <load module="mod_python3"/> -->\n</modules>')
    assert not P.loads_module('<load module="mod_python"/>')
    assert P.startup_script_set('<param name="startup-script" value="audio_stream"/>')
    assert not P.startup_script_set('<!--<param name="startup-script" value="audio_stream"/>-->')


def test_python_error_from_log():
    log = textwrap.dedent("""\
        [ERR] mod_python3.c:184 Python Error by calling script "other": <class 'X'>
        Message: nope
        [NOTICE] mod_python3.c:231 Invoking py module: audio_stream
        [ERR] mod_python3.c:184 Python Error by calling script "audio_stream": <class 'ModuleNotFoundError'>
        Message: No module named 'samplerate'
        [INFO] later
        """)
    assert P.python_error_from_log(log) == "<class 'ModuleNotFoundError'> Message: No module named 'samplerate'"
    assert P.python_error_from_log("nothing here") is None


PIP_OFFLINE = """\
WARNING: Retrying (Retry(total=0, connect=None, read=None, redirect=None, status=None)) after connection broken by 'NewConnectionError('<pip._vendor.urllib3.connection.HTTPSConnection object at 0x7f94>: Failed to establish a new connection: [Errno -3] Temporary failure in name resolution')': /simple/samplerate/
ERROR: Could not find a version that satisfies the requirement samplerate>=0.1.0 (from audio-stream) (from versions: none)
ERROR: No matching distribution found for samplerate>=0.1.0
"""


def test_a_pip_that_cannot_reach_the_index_points_at_the_offline_install():
    from audio_stream.tools.installer import pip_failure
    text = pip_failure(1, PIP_OFFLINE)
    assert text.startswith("pip failed (exit status 1); its last lines:\n")
    assert "No matching distribution found for samplerate>=0.1.0" in text
    assert "could not reach the package index" in text and "PIP_NO_INDEX=1 PIP_FIND_LINKS=<dir>" in text
    with open(os.path.join(ROOT, "docs", "operations.md"), encoding="utf-8") as f:
        assert "### Without the package index" in f.read()       # the section the hint names
    # a failure of another kind (here: a build) gets pip's lines alone
    built = pip_failure(1, "error: command 'gcc' failed: No such file or directory\nERROR: Failed building wheel")
    assert "package index" not in built and built.endswith("ERROR: Failed building wheel")


# ---- deciding ----------------------------------------------------------------------------------

SRC = P.Source("dir", "/src/audio_stream", "the source is the project checkout this installer runs from")
STAGED = "/fs/scripts/.audio_stream-install/target"


def facts(**kw):
    py = kw.pop("python", None) or P.PythonInfo("/usr/bin/python3.11", "3.11.2", externally_managed=True,
                                                pip="23.0.1", purelib="/usr/local/lib/python3.11/dist-packages",
                                                ext_suffix=".cpython-311-x86_64-linux-gnu.so",
                                                tag="cp311-cp311-linux_x86_64")
    f = P.Facts(our_version=VERSION, switch="fs_cli /x/fs_cli", python=py, source=SRC,
                dirs={"script_dir": ("/fs/scripts", "from the switch"), "conf_dir": ("/fs/conf", "from the switch"),
                      "mod_dir": ("/fs/mod", "from the switch")}, mod_python3_so="/fs/mod/mod_python3.so",
                module_loaded=True, our_pip="23.2.1", installer_python="/venv/bin/python")
    for k, v in kw.items():
        setattr(f, k, v)
    return f


def step_of(plan, kind):
    (step,) = [s for s in plan.steps if s.kind == kind]
    return step


def ours(version="0.0.9", files=("__init__.py",), unknown=()):
    manifest = {"installed_by": P.INSTALLED_BY, "version": version, "files": list(files), "conf": {}}
    return P.Copy("/fs/scripts/audio_stream", manifest=manifest, present=tuple(files) + (P.MANIFEST,) + unknown,
                  unknown=unknown)


def test_the_default_is_one_directory_in_the_script_dir():
    plan = P.build_plan(facts(), P.Options())
    assert plan.method == "target" and not plan.blockers
    step = step_of(plan, "stage")
    assert step.argv == ["/usr/bin/python3.11", "-m", "pip", "install", "--target", STAGED, "/src/audio_stream"]
    assert step.path == "/fs/scripts/audio_stream"
    assert "audio_stream/_deps" in step.text and P.MANIFEST in step.text and "audio_stream/testing" in step.text
    assert "--uninstall removes exactly that" in step.why and "the project checkout" in step.why
    assert P.build_plan(facts(python=P.PythonInfo("/opt/py/bin/python3", "3.11.7", pip="24.0")),
                        P.Options()).method == "target"      # whether or not the Python is externally managed


def test_site_on_an_externally_managed_python_breaks_system_packages_knowingly():
    step = step_of(P.build_plan(facts(), P.Options(method="site", no_deps=True)), "pip")
    assert step.argv == ["/usr/bin/python3.11", "-m", "pip", "install", "--upgrade", "--break-system-packages",
                         "--no-deps", "/src/audio_stream"]
    plain = P.PythonInfo("/opt/py/bin/python3", "3.11.7", pip="24.0", purelib="/opt/py/lib/site")
    plan = P.build_plan(facts(python=plain), P.Options(method="site"))
    assert plan.method == "site" and "--break-system-packages" not in step_of(plan, "pip").argv


def test_a_python_without_pip_borrows_ours_or_says_what_to_install():
    nopip = P.PythonInfo("/usr/bin/python3.11", "3.11.2", externally_managed=True)
    step = step_of(P.build_plan(facts(python=nopip), P.Options()), "stage")
    assert step.argv[:5] == ["/venv/bin/python", "-m", "pip", "--python", "/usr/bin/python3.11"]
    plan = P.build_plan(facts(python=nopip, our_pip="21.0"), P.Options())
    assert plan.blockers == ["/usr/bin/python3.11 has no pip: install it (Debian: apt-get install python3-pip) "
                             "and run this again"]


def test_the_same_version_is_kept_unless_reinstalling():
    py = P.PythonInfo("/usr/bin/python3.11", "3.11.2", True, "23.0.1", package_path="/fs/scripts/audio_stream",
                      package_version=VERSION)
    plan = P.build_plan(facts(python=py, copy=ours(VERSION)), P.Options())
    assert [s.kind for s in plan.steps if "audio_stream %s" % VERSION in s.text] == ["keep"]
    assert step_of(P.build_plan(facts(python=py, copy=ours(VERSION)), P.Options(reinstall=True)), "stage")
    assert "--force-reinstall" in step_of(P.build_plan(facts(python=py), P.Options(method="site", reinstall=True)),
                                          "pip").argv
    py.missing = ("samplerate (ModuleNotFoundError: …)",)
    assert "replacing audio_stream %s" % VERSION in step_of(P.build_plan(facts(python=py, copy=ours(VERSION)),
                                                                         P.Options()), "stage").text


def test_an_upgrade_replaces_only_its_own_directory():
    plan = P.build_plan(facts(copy=ours("0.0.9")), P.Options())
    assert not plan.blockers and "replacing audio_stream 0.0.9 installed there" in step_of(plan, "stage").text
    plan = P.build_plan(facts(copy=ours("0.0.9", unknown=("my_notes.txt",))), P.Options())
    assert plan.blockers == ["/fs/scripts/audio_stream holds files this installer did not put there (my_notes.txt): "
                             "an upgrade replaces the whole directory, so move them out and run again"]
    hand = P.Copy("/fs/scripts/audio_stream", legacy=("aiohttp", "bin", "numpy", "numpy-2.4.6.dist-info"))
    (blocker,) = P.build_plan(facts(copy=hand), P.Options()).blockers
    assert "was not put there by this installer (it has no install-manifest.json)" in blocker
    assert "also put these beside it: aiohttp, bin, numpy, numpy-2.4.6.dist-info" in blocker


def test_a_link_in_the_script_dir_is_never_replaced():
    plan = P.build_plan(facts(copy=P.Copy("/fs/scripts/audio_stream", link="/work/main/audio_stream")), P.Options())
    assert len(plan.blockers) == 1 and "is a link to /work/main/audio_stream" in plan.blockers[0]
    assert not [s for s in plan.steps if s.kind in ("stage", "pip")]
    plan = P.build_plan(facts(copy=ours()), P.Options(method="site"))
    assert "would shadow" in plan.blockers[0] and "--uninstall" in plan.blockers[0]
    plan = P.build_plan(facts(copy=P.Copy("/fs/scripts/audio_stream", link="/x")), P.Options(method="none"))
    assert not plan.blockers


def test_the_installed_files_are_packed_with_an_accelerator_only_for_the_same_python():
    files = ("audio_stream/__init__.py", "audio_stream/_accel.cpython-311-x86_64-linux-gnu.so",
             "audio_stream-%s.dist-info/METADATA" % VERSION)
    installed = P.Source("installed", "/venv/lib/python3.11/site-packages", "the source is audio_stream as installed",
                         files)
    plan = P.build_plan(facts(source=installed), P.Options())
    pack, stage = plan.steps[:2]
    wheel = "/fs/scripts/.audio_stream-install/wheel/audio_stream-%s-cp311-cp311-linux_x86_64.whl" % VERSION
    assert pack.kind == "pack" and pack.path == wheel and pack.keep_ext == (files[1],)
    assert "with the compiled accelerator built for /usr/bin/python3.11" in pack.text
    assert stage.argv[-1] == wheel
    py312 = P.PythonInfo("/usr/bin/python3.12", "3.12.1", pip="24.0", ext_suffix=".cpython-312-x86_64-linux-gnu.so",
                         tag="cp312-cp312-linux_x86_64")
    pack = P.build_plan(facts(source=installed, python=py312), P.Options()).steps[0]
    assert pack.path.endswith("audio_stream-%s-py3-none-any.whl" % VERSION) and pack.keep_ext == ()
    assert "built for another Python: left out" in pack.text


def test_nothing_to_go_on():
    plan = P.build_plan(facts(dirs={}, switch_error="Error Connecting"), P.Options())
    assert "cannot find FreeSWITCH's script directory: Error Connecting" in plan.blockers[0]
    f = facts(ldd_error="ldd /fs/mod/mod_python3.so lists no libpython")
    f.python = None
    assert "lists no libpython" in P.build_plan(f, P.Options()).blockers[0]
    (blocker,) = P.build_plan(facts(source=None, source_error="it is not installed"), P.Options()).blockers
    assert blocker.startswith("no source to install audio_stream %s from: it is not installed; give --source" % VERSION)


def test_a_switch_on_another_machine():
    f = facts(mod_python3_so=None)
    f.python = None
    (blocker,) = P.build_plan(f, P.Options()).blockers
    assert "mod_python3 is loaded, but /fs/mod/mod_python3.so is not on this machine" in blocker


def test_conf_snippets_never_replace_a_file():
    ours_ = b"<configuration name='python.conf'/>"
    settings = b"<configuration name='audio_stream.conf'/>"
    sample = b"<include/>"
    snippets = {"autoload_configs/python.conf.xml": ours_, "autoload_configs/audio_stream.conf.xml": settings,
                "dialplan/audio_stream.xml": sample}
    pyconf, dialplan = "/fs/conf/autoload_configs/python.conf.xml", "/fs/conf/dialplan/default/audio_stream.xml"
    asconf = "/fs/conf/autoload_configs/audio_stream.conf.xml"

    def steps(existing):
        return P.conf_steps(facts(snippets=snippets, conf_existing=existing))

    fresh, notes = steps({})
    assert [(s.kind, s.path) for s in fresh] == [("write", pyconf), ("write", asconf), ("write", dialplan + ".dist")]
    assert "answers 5000" in notes[0] and "reloadxml" in notes[0]
    theirs, _ = steps({pyconf: b"theirs", asconf: settings, dialplan: b"theirs too"})
    assert [(s.kind, s.path) for s in theirs] == [("write", pyconf + ".dist"), ("keep", None),
                                                  ("write", dialplan + ".dist")]
    assert "yours is kept" in theirs[0].text
    again, _ = steps({pyconf: b"theirs", pyconf + ".dist": ours_, asconf: settings, dialplan: sample})
    assert [s.kind for s in again] == ["keep", "keep", "keep"]


def test_the_manifest_keeps_what_earlier_runs_wrote_while_it_is_unchanged():
    old = dict(ours().manifest, conf={"/fs/conf/a.xml": "1", "/fs/conf/b.xml": "2", "/fs/conf/c.xml": "3"})
    f = facts(copy=P.Copy("/fs/scripts/audio_stream", manifest=old))
    doc = P.merge_manifest(f, VERSION, "target", "/usr/bin/python3.11", "dir /src", ["b.py", "a.py"],
                           {"/fs/conf/d.xml": "4"}, {"/fs/conf/a.xml": "1", "/fs/conf/b.xml": "changed",
                                                      "/fs/conf/c.xml": None})
    assert doc["files"] == ["a.py", "b.py"] and doc["version"] == VERSION and doc["installed_by"] == P.INSTALLED_BY
    assert doc["conf"] == {"/fs/conf/a.xml": "1", "/fs/conf/d.xml": "4"}
    assert P.merge_manifest(f, VERSION, "target", None, None, None, {}, {})["files"] == ["__init__.py"]
    assert P.merge_manifest(f, VERSION, "target", None, None, None, {}, {},
                            made_dirs=["/fs/conf/dialplan"])["conf_dirs"] == ["/fs/conf/dialplan"]
    assert P.manifest_path(f, "target", True) == "/fs/scripts/audio_stream/" + P.MANIFEST
    assert P.manifest_path(facts(), "none", False) == "/fs/scripts/" + P.OUTSIDE_MANIFEST


def test_uninstall_removes_exactly_what_the_manifest_lists():
    files = ("__init__.py", "api.py", "__pycache__/api.cpython-311.pyc", "_deps/numpy/core.py")
    manifest = {"installed_by": P.INSTALLED_BY, "version": VERSION, "files": list(files) + [P.MANIFEST],
                "conf": {"/fs/conf/autoload_configs/python.conf.xml": "aa", "/fs/conf/dialplan/x.xml.dist": "bb"}}
    present = files + (P.MANIFEST, "__pycache__/__init__.cpython-311.opt-1.pyc", "mine.txt")
    copy = P.Copy("/fs/scripts/audio_stream", manifest=manifest, present=present)
    plan = P.uninstall_plan(facts(copy=copy), present, {"/fs/conf/autoload_configs/python.conf.xml": "aa",
                                                        "/fs/conf/dialplan/x.xml.dist": "changed"})
    tree, conf = plan.steps
    assert tree.kind == "remove-tree" and "mine.txt" not in tree.files
    assert set(tree.files) == set(files) | {P.MANIFEST, "__pycache__/__init__.cpython-311.opt-1.pyc"}
    assert (conf.kind, conf.path) == ("remove", "/fs/conf/autoload_configs/python.conf.xml")
    assert "left in /fs/scripts/audio_stream: mine.txt (not put there by this installer)" in plan.notes
    assert "/fs/conf/dialplan/x.xml.dist was changed since audio-stream-install wrote it: kept" in plan.notes
    plan = P.uninstall_plan(facts(copy=P.Copy("/fs/scripts/audio_stream", link="/src/audio_stream")), (), {})
    assert not plan.steps and "/fs/scripts/audio_stream is a link to /src/audio_stream: not installed by this installer, left alone" in plan.notes
    plan = P.uninstall_plan(facts(), (), {})
    assert not plan.steps and plan.notes == ["nothing installed by audio-stream-install in /fs/scripts"]
    site = facts(outside_manifest={"installed_by": P.INSTALLED_BY, "dists": ["audio-stream", "samplerate"], "conf": {}})
    pip, manifest_file = P.uninstall_plan(site, (), {}).steps
    assert pip.argv == ["/usr/bin/python3.11", "-m", "pip", "uninstall", "--yes", "--break-system-packages",
                        "audio-stream", "samplerate"]
    assert manifest_file.path == "/fs/scripts/" + P.OUTSIDE_MANIFEST


def test_after_uninstall_says_what_still_points_at_audio_stream():
    f = facts(startup_script_set=True, answered_before=True,
              conf_existing={"/fs/conf/dialplan/default/audio_stream.xml": b"<include/>"})
    startup, dialplan, restart = P.after_uninstall(f, set())
    assert startup.startswith("remove %s from /fs/conf/autoload_configs/python.conf.xml" % P.STARTUP_LINE)
    assert "your dialplan /fs/conf/dialplan/default/audio_stream.xml still calls audio_stream" in dialplan
    assert restart.startswith("restart FreeSWITCH")
    assert P.after_uninstall(facts(startup_script_set=True), {"/fs/conf/autoload_configs/python.conf.xml"}) == []


def test_next_steps_say_exactly_what_to_do():
    f = facts(module_loaded=False, modules_conf="/fs/conf/autoload_configs/modules.conf.xml",
              modules_conf_loads=False)
    assert P.next_steps(f, False) == [
        "mod_python3 is not loaded: add <load module=\"mod_python3\"/> to "
        "/fs/conf/autoload_configs/modules.conf.xml and run fs_cli -x 'load mod_python3'"]
    f = facts(answers="-ERR no reply", python_log_error="<class 'ModuleNotFoundError'> Message: No module named 'x'")
    assert P.next_steps(f, True) == [
        "fs_cli -x 'python audio_stream' answered '-ERR no reply' instead of -USAGE: <class "
        "'ModuleNotFoundError'> Message: No module named 'x'"]
    f = facts(answers="-USAGE: …", answered_before=True, startup_script_set=False)
    restart, optional = P.next_steps(f, True)
    assert restart.startswith("restart FreeSWITCH") and optional.startswith("optional: add " + P.STARTUP_LINE)
    assert optional.endswith("(from the next start of FreeSWITCH: mod_python3 cannot be reloaded)")  # reload mod_python3: -ERR
    assert P.next_steps(facts(answers="-USAGE: …"), True) == []
    f = facts(mod_python3_so=None)
    assert "apt-get install freeswitch-mod-python3" in P.next_steps(f, False)[0]
    f = facts(module_loaded=False, fs_cli="/usr/local/freeswitch/bin/fs_cli")       # built from source
    assert "run /usr/local/freeswitch/bin/fs_cli -x 'load mod_python3'" in P.next_steps(f, False)[0]
    f = facts(libpython=("libpython3.9.so.1.0", None, "3.9"))
    assert "apt-get install libpython3.9" in P.next_steps(f, False)[0]


# ---- whole runs against a fake FreeSWITCH tree -------------------------------------------------

FAKE_FS_CLI = r'''#!{python}
"""Answers `fs_cli -x CMD` like a switch whose state is in state.json beside it."""
import json, os, subprocess, sys
here = os.path.dirname(os.path.abspath(__file__))
state = json.load(open(os.path.join(here, "state.json")))
if not state["up"]:
    sys.stderr.write("[ERROR] fs_cli.c:1699 main() Error Connecting []\n")
    sys.exit(255)
cmd = sys.argv[sys.argv.index("-x") + 1]
name, _, arg = cmd.partition(" ")
if name == "global_getvar":
    print(state["vars"].get(arg, ""))
elif cmd == "module_exists mod_python3":
    print("true" if state["loaded"] else "false")
elif cmd == "version":
    print("FreeSWITCH Version 1.10.12-fake")
elif cmd == "python audio_stream":
    # what mod_python3 does: import it with the script dir on the path and call fsapi()
    scripts = state["vars"]["script_dir"]
    code = ("import sys\n"
            "try:\n    import audio_stream\n"
            "except Exception as e:\n    sys.stderr.write('<class %r>\\nMessage: %s' % (type(e).__name__, e)); sys.exit(1)\n"
            "class S:\n    def write(self, s): sys.stdout.write(s)\n"
            "audio_stream.fsapi('na', S(), None, '')\n")
    r = subprocess.run([state["python"], "-c", code], env=dict(os.environ, PYTHONPATH=scripts), cwd=here,
                       capture_output=True, text=True)
    if r.returncode:
        with open(os.path.join(state["vars"]["log_dir"], "freeswitch.log"), "a") as log:
            log.write('[ERR] mod_python3.c:184 Python Error by calling script "audio_stream": %s\n' % r.stderr)
    sys.stdout.write(r.stdout or "-ERR no reply\n")
else:
    print("-ERR %s Command not found!" % name)
'''

MODULES_CONF = """<configuration name="modules.conf">
  <modules>
    <load module="mod_event_socket"/>
    %s
  </modules>
</configuration>
"""


LIBPYTHON = "libpython%s.so.1.0" % sysconfig.get_python_version()


@pytest.fixture(scope="module")
def embedded_python(tmp_path_factory):
    """A Python without pip and without audio_stream that can import the dependencies: what
    mod_python3 embeds on a machine where only the dependencies are installed. Its prefix has a
    lib/libpython3.X.so.1.0 (a link to this Python's), so the installer finds it from ldd."""
    venv = tmp_path_factory.mktemp("embedded") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    ours = os.path.dirname(os.path.dirname(__import__("numpy").__file__))
    deps = venv.parent / "deps"       # our site-packages but for pip and audio_stream itself
    deps.mkdir()
    for name in os.listdir(ours):
        if not name.lower().startswith(("pip", "audio_stream", "__editable__", "_pytest", "pytest")):
            os.symlink(os.path.join(ours, name), deps / name)
    with open(os.path.join(site, "deps.pth"), "w") as f:
        f.write(str(deps) + "\n")
    real = os.path.join(sysconfig.get_config_var("LIBDIR") or "/nowhere", sysconfig.get_config_var("INSTSONAME") or LIBPYTHON)
    os.symlink(real, venv / "lib" / LIBPYTHON)
    return str(venv / "bin" / ("python" + sysconfig.get_python_version()))


class FakeSwitch:
    def __init__(self, root, python, loaded=True, load_line=True, up=True, libpython=None):
        self.root = root
        self.dirs = {n: str(root / d) for n, d in (("script_dir", "scripts"), ("conf_dir", "conf"),
                                                    ("mod_dir", "mod"), ("log_dir", "log"))}
        for d in ("bin", "scripts", "conf/autoload_configs", "conf/dialplan/default", "mod", "log", "tools"):
            (root / d).mkdir(parents=True, exist_ok=True)
        (root / "conf/autoload_configs/modules.conf.xml").write_text(
            MODULES_CONF % ('<load module="mod_python3"/>' if load_line else ""))
        (root / "conf/autoload_configs/python.conf.xml").write_text("<configuration name='python.conf'/>\n")
        (root / "mod/mod_python3.so").write_bytes(b"\x7fELF fake")
        (root / "scripts/other_script.py").write_text("def fsapi(session, stream, env, args): pass\n")
        fs_cli = root / "bin" / "fs_cli"
        fs_cli.write_text(FAKE_FS_CLI.replace("{python}", sys.executable))
        fs_cli.chmod(0o755)
        self.state = {"up": up, "loaded": loaded, "vars": self.dirs, "python": python}
        (root / "bin" / "state.json").write_text(json.dumps(self.state))
        # ldd, as on the switch's machine: mod_python3.so links the embedded Python's libpython
        self.libpython = libpython or os.path.join(os.path.dirname(os.path.dirname(python)), "lib", LIBPYTHON)
        ldd = root / "tools" / "ldd"
        ldd.write_text("#!/bin/sh\nprintf '\\t%s => %s (0x1)\\n'\n" % (LIBPYTHON, self.libpython))
        ldd.chmod(0o755)
        self.env = dict(os.environ, PATH="%s:%s:%s" % (root / "bin", root / "tools", os.environ["PATH"]))

    def snapshot(self):
        """Every file and directory of the switch's tree (but the log), with the files' contents."""
        out = {}
        for p in sorted(self.root.rglob("*")):
            rel = p.relative_to(self.root)
            if not {"tools", "log"} & set(rel.parts):
                out[str(rel)] = p.read_bytes() if p.is_file() and not p.is_symlink() else None
        return out

    def run(self, argv, cwd=None):
        r = subprocess.run(argv, capture_output=True, text=True, env=self.env, timeout=600, cwd=cwd)
        return r.returncode, r.stdout, r.stderr

    def install(self, *args):
        return self.run([sys.executable, "-m", "audio_stream", "install", "--fs-cli", str(self.root / "bin/fs_cli"),
                         *args])


def test_dry_run_shows_the_plan_and_changes_nothing(tmp_path, embedded_python):
    fs = FakeSwitch(tmp_path / "fs", embedded_python)
    before = fs.snapshot()
    code, out, err = fs.install("--dry-run")
    assert code == 0, out + err
    assert "BLOCKED" not in out and out.rstrip().endswith("nothing blocks the install"), out
    assert "script_dir  %s (from the switch)" % fs.dirs["script_dir"] in out
    assert "Python mod_python3 embeds: %s " % embedded_python in out
    assert "it cannot import audio_stream yet" in out
    scripts = fs.dirs["script_dir"]
    assert ("--python %s install --target %s/.audio_stream-install/target %s" % (embedded_python, scripts, ROOT)) in out
    assert "into %s/audio_stream (one directory: the package, its dependencies in audio_stream/_deps" % scripts in out
    assert "python.conf.xml.dist (yours is kept" in out and "audio_stream.xml.dist (an example" in out
    assert "install %s/autoload_configs/audio_stream.conf.xml" % fs.dirs["conf_dir"] in out
    assert fs.snapshot() == before


def test_install_again_upgrade_and_uninstall_leave_the_tree_as_it_was(tmp_path, embedded_python, built_wheel):
    fs = FakeSwitch(tmp_path / "fs", embedded_python)
    before = fs.snapshot()
    fs.install = functools.partial(fs.install, "--source", str(built_wheel))    # no build on each run
    code, out, err = fs.install("--no-deps")
    assert code == 0, out + err
    scripts = fs.root / "scripts"
    assert sorted(os.listdir(scripts)) == ["audio_stream", "other_script.py"]      # one directory
    pkg = scripts / "audio_stream"
    assert (pkg / "__init__.py").exists() and not (pkg / "testing").exists()
    assert (pkg / "_deps" / ("audio_stream-%s.dist-info" % VERSION)).is_dir()
    manifest = json.loads((pkg / P.MANIFEST).read_text())
    assert manifest["version"] == VERSION and "api.py" in manifest["files"] and P.MANIFEST in manifest["files"]
    assert sorted(manifest["files"]) == sorted(str(p.relative_to(pkg)) for p in pkg.rglob("*") if p.is_file())
    conf = fs.root / "conf"
    assert set(manifest["conf"]) == {str(conf / "autoload_configs/python.conf.xml.dist"),
                                     str(conf / "autoload_configs/audio_stream.conf.xml"),
                                     str(conf / "dialplan/default/audio_stream.xml.dist")}
    assert "the embedded Python now imports audio_stream %s from %s" % (VERSION, pkg) in out
    assert "audio_stream answers in FreeSWITCH" in out
    assert "restart FreeSWITCH" not in out            # it was not loaded before: nothing to restart
    assert (conf / "autoload_configs/python.conf.xml").read_text() == "<configuration name='python.conf'/>\n"
    assert b"startup-script" in (conf / "autoload_configs/python.conf.xml.dist").read_bytes()
    assert not (conf / "dialplan/default/audio_stream.xml").exists()
    assert "optional: add %s" % P.STARTUP_LINE in out

    code, out, err = fs.install("--no-deps")
    assert code == 0, out + err
    assert "keep audio_stream %s at %s" % (VERSION, pkg) in out
    assert "$ " not in out and "wrote" not in out

    # an upgrade over an older version: the directory is replaced, the conf records are kept
    manifest["version"] = "0.0.1"
    (pkg / P.MANIFEST).write_text(json.dumps(manifest))
    (pkg / "stale_module.py").write_text("")     # an old version's module ...
    manifest["files"].append("stale_module.py")  # ... that the old manifest lists
    (pkg / P.MANIFEST).write_text(json.dumps(manifest))
    (pkg / "__init__.py").write_text("raise ImportError('the old version')\n")
    code, out, err = fs.install("--no-deps")
    assert code == 0, out + err
    assert "replacing audio_stream 0.0.1 installed there" in out and "restart FreeSWITCH" not in out
    assert not (pkg / "stale_module.py").exists() and "the old version" not in (pkg / "__init__.py").read_text()
    assert set(json.loads((pkg / P.MANIFEST).read_text())["conf"]) == set(manifest["conf"])
    assert not (scripts / P.STAGING).exists()

    # a file of the operator's in it: not replaced, and not removed
    (pkg / "my_notes.txt").write_text("mine")
    code, out, err = fs.install("--no-deps", "--reinstall")
    assert code == 1 and "holds files this installer did not put there (my_notes.txt)" in out

    snapshot = fs.snapshot()
    code, out, err = fs.install("--uninstall", "--dry-run")
    assert code == 0, out + err
    assert "remove %s: the " % pkg in out and "(not my_notes.txt: this installer did not put it there)" in out
    assert fs.snapshot() == snapshot
    code, out, err = fs.install("--uninstall")
    assert code == 0, out + err
    assert sorted(os.listdir(pkg)) == ["my_notes.txt"]
    (pkg / "my_notes.txt").unlink()
    pkg.rmdir()
    assert fs.snapshot() == before
    code, out, err = fs.install("--uninstall")
    assert code == 0 and "nothing installed by audio-stream-install in %s" % scripts in out


def test_uninstall_keeps_conf_files_changed_since(tmp_path, embedded_python):
    fs = FakeSwitch(tmp_path / "fs", embedded_python)
    (fs.root / "conf/dialplan/default").rmdir()       # made by the installer, removed by --uninstall
    (fs.root / "conf/dialplan").rmdir()
    code, out, err = fs.install("--method", "none")     # conf only (audio_stream is not importable: exit 1)
    assert "recorded what was installed in %s/%s" % (fs.dirs["script_dir"], P.OUTSIDE_MANIFEST) in out, out + err
    scripts, conf = fs.root / "scripts", fs.root / "conf"
    assert sorted(os.listdir(scripts)) == [P.OUTSIDE_MANIFEST, "other_script.py"]
    settings = conf / "autoload_configs/audio_stream.conf.xml"
    settings.write_text(settings.read_text().replace("<settings>", "<settings><param name='STREAM_HEART_BEAT' value='9'/>"))
    code, out, err = fs.install("--uninstall")
    assert code == 0, out + err
    assert "%s was changed since audio-stream-install wrote it: kept" % settings in out
    assert settings.exists() and not (conf / "autoload_configs/python.conf.xml.dist").exists()
    assert not (conf / "dialplan").exists()
    assert sorted(os.listdir(scripts)) == ["other_script.py"]


def test_install_into_site_packages_and_uninstall(tmp_path, embedded_python):
    import glob
    import shutil
    venv = tmp_path / "venv"      # a copy: this one gets the package
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    pth = glob.glob(os.path.dirname(os.path.dirname(embedded_python)) + "/lib/python*/site-packages/deps.pth")
    site = glob.glob(str(venv / "lib/python*/site-packages"))[0]
    shutil.copy(pth[0], site)
    python = str(venv / "bin" / "python")
    fs = FakeSwitch(tmp_path / "fs", python)
    code, out, err = fs.install("--python", python, "--no-deps", "--no-conf", "--method", "site")
    assert code == 0, out + err
    assert "asked for with --method site" in out
    assert os.path.exists(os.path.join(site, "audio_stream", "__init__.py"))
    assert sorted(os.listdir(fs.root / "scripts")) == [P.OUTSIDE_MANIFEST, "other_script.py"]
    assert json.loads((fs.root / "scripts" / P.OUTSIDE_MANIFEST).read_text())["dists"] == ["audio_stream"]
    code, out, err = fs.install("--python", python, "--uninstall")
    assert code == 0, out + err
    assert not os.path.exists(os.path.join(site, "audio_stream"))
    assert sorted(os.listdir(site)) == ["deps.pth"]
    assert sorted(os.listdir(fs.root / "scripts")) == ["other_script.py"]


def _copy_checkout(dest):
    import shutil
    shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", ".venv", "venv",
                                                              "__pycache__", ".pytest_cache", "demo-out", "out"))
    return dest


def test_the_readme_flow_literally(tmp_path, embedded_python):
    """README: `python3 -m venv .venv && .venv/bin/pip install .`, then `.venv/bin/audio-stream-install
    --dry-run` and `.venv/bin/audio-stream-install` in the checkout, fs_cli on PATH; then
    --uninstall gives the switch's tree back as it was."""
    checkout = _copy_checkout(tmp_path / "checkout")
    subprocess.run([sys.executable, "-m", "venv", ".venv"], cwd=checkout, check=True)
    r = subprocess.run([".venv/bin/pip", "install", "-q", "."], cwd=checkout, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    fs = FakeSwitch(tmp_path / "fs", embedded_python)
    before = fs.snapshot()
    code, out, err = fs.run([".venv/bin/audio-stream-install", "--dry-run"], cwd=checkout)
    assert code == 0, out + err
    assert "BLOCKED" not in out and "nothing blocks the install" in out
    assert "why: %s; the source is the checkout audio_stream %s was installed from, unchanged since" % (
        P.choose_method(P.Facts(VERSION), "auto")[1].replace("the Python", embedded_python), VERSION) in out
    assert fs.snapshot() == before
    code, out, err = fs.run([".venv/bin/audio-stream-install"], cwd=checkout)
    assert code == 0, out + err
    assert "audio_stream answers in FreeSWITCH" in out
    deps = fs.root / "scripts" / "audio_stream" / "_deps"
    for name in ("aiohttp", "numpy", "samplerate", "ujson"):
        assert any(n.lower().startswith(name) for n in os.listdir(deps)), name
    probe = ("import sys, audio_stream, numpy, aiohttp; print(numpy.__file__); print(aiohttp.__file__); "
             "audio_stream.fsapi('na', sys.stdout, None, '')")
    r = subprocess.run([embedded_python, "-c", probe], capture_output=True, text=True, cwd=str(tmp_path),
                       env=dict(os.environ, PYTHONPATH=fs.dirs["script_dir"]))
    numpy_at, aiohttp_at, usage = r.stdout.splitlines()[:3]
    assert numpy_at.startswith(str(deps)) and aiohttp_at.startswith(str(deps)) and usage.startswith("-USAGE"), r
    code, out, err = fs.run([".venv/bin/audio-stream-install", "--uninstall"], cwd=checkout)
    assert code == 0, out + err
    assert fs.snapshot() == before


@pytest.fixture(scope="module")
def built_wheel(tmp_path_factory):
    """The project's wheel, as `pip wheel` builds it from a copy of the checkout."""
    tmp = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp / "wheels"),
                        str(_copy_checkout(tmp / "checkout"))], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    (wheel,) = (tmp / "wheels").glob("audio_stream-*.whl")
    return wheel


@pytest.mark.parametrize("how", ["wheel", "index"])
def test_an_install_from_a_wheel_or_an_index_installs_its_own_files(tmp_path, embedded_python, built_wheel, how):
    wheel, wheels = built_wheel, built_wheel.parent
    venv = tmp_path / "tools"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    what = [str(wheel)] if how == "wheel" else ["--no-index", "--find-links", str(wheels), "audio_stream"]
    r = subprocess.run([str(venv / "bin/pip"), "install", "-q", "--no-deps", *what], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    fs = FakeSwitch(tmp_path / "fs", embedded_python)
    code, out, err = fs.run([str(venv / "bin/audio-stream-install"), "--dry-run", "--no-deps"], cwd=str(tmp_path))
    assert code == 0, out + err
    site = glob_one(str(venv / "lib/python*/site-packages"))
    assert "1. pack the installed files of audio_stream %s (%s) into %s/.audio_stream-install/wheel/audio_stream-%s-" % (
        VERSION, site, fs.dirs["script_dir"], VERSION) in out, out
    code, out, err = fs.run([str(venv / "bin/audio-stream-install"), "--no-deps"], cwd=str(tmp_path))
    assert code == 0, out + err
    for conf in ("autoload_configs/audio_stream.conf.xml", "autoload_configs/python.conf.xml.dist",
                 "dialplan/default/audio_stream.xml.dist"):        # the samples from <venv>/share/audio-stream
        assert "wrote %s/%s" % (fs.dirs["conf_dir"], conf) in out
    pkg = fs.root / "scripts" / "audio_stream"
    assert (pkg / "api.py").read_bytes() == open(os.path.join(site, "audio_stream", "api.py"), "rb").read()
    assert "audio_stream answers in FreeSWITCH" in out


def glob_one(pattern):
    import glob
    (found,) = glob.glob(pattern)
    return found


def test_finds_the_python_from_mod_python3s_libpython(tmp_path, embedded_python):
    real = os.path.join(sysconfig.get_config_var("LIBDIR") or "/nowhere", sysconfig.get_config_var("INSTSONAME") or LIBPYTHON)
    fs = FakeSwitch(tmp_path / "fs", embedded_python, libpython=real)
    if not os.path.exists(fs.libpython):
        pytest.skip("this Python has no shared libpython (%s) to find it by" % fs.libpython)
    code, out, err = fs.install("--dry-run")
    base = os.path.realpath(os.path.join(sysconfig.get_config_var("BINDIR"), "python" + sysconfig.get_python_version()))
    assert "links libpython%s.so.1.0 (%s)" % (sysconfig.get_python_version(), fs.libpython) in out
    assert "Python mod_python3 embeds: %s" % base in out or \
        "Python mod_python3 embeds: %s" % os.path.join(sysconfig.get_config_var("BINDIR"), "python" + sysconfig.get_python_version()) in out


def test_mod_python3_not_loaded(tmp_path, embedded_python):
    fs = FakeSwitch(tmp_path / "fs", embedded_python, loaded=False, load_line=False)
    code, out, err = fs.install("--dry-run", "--python", embedded_python, "--method", "none")
    assert code == 1
    assert ("mod_python3 is not loaded: add <load module=\"mod_python3\"/> to %s/autoload_configs/modules.conf.xml "
            "and run %s/bin/fs_cli -x 'load mod_python3'" % (fs.dirs["conf_dir"], fs.root)) in out


def test_not_importable_says_what_the_log_says(tmp_path, embedded_python):
    fs = FakeSwitch(tmp_path / "fs", embedded_python)
    fs.install("--dry-run", "--python", embedded_python, "--method", "none")   # the switch logs the failure
    code, out, err = fs.install("--dry-run", "--python", embedded_python, "--method", "none")
    assert code == 1
    assert ("answered '-ERR no reply' instead of -USAGE: <class 'ModuleNotFoundError'> Message: No module "
            "named 'audio_stream'") in out, out


def test_switch_down_guesses_the_layout_from_the_prefix(tmp_path, embedded_python):
    fs = FakeSwitch(tmp_path / "fs", embedded_python, up=False)
    code, out, err = fs.install("--dry-run", "--prefix", str(fs.root), "--python", embedded_python,
                                "--method", "target")
    assert code == 1
    assert "does not answer: [ERROR] fs_cli.c:1699 main() Error Connecting []" in out
    assert "script_dir  %s (guessed from %s)" % (fs.dirs["script_dir"], fs.root) in out
    assert "FreeSWITCH did not answer" in out


def test_pep_668_marker_applies_to_the_system_python_not_to_its_venvs(tmp_path):
    """Debian 12's /usr/bin/python3 is externally managed; a venv made from it is not (PEP 668)."""
    from audio_stream.tools.install_probe import run_python_check
    system = "/usr/bin/python3"
    if not os.access(system, os.X_OK):
        pytest.skip("no %s here" % system)
    stdlib = subprocess.run([system, "-c", "import sysconfig; print(sysconfig.get_paths()['stdlib'])"],
                            capture_output=True, text=True).stdout.strip()
    if not os.path.exists(os.path.join(stdlib, "EXTERNALLY-MANAGED")):
        pytest.skip("%s is not externally managed here" % system)
    assert run_python_check(system, str(tmp_path))["externally_managed"] is True
    subprocess.run([system, "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True)
    assert run_python_check(str(tmp_path / "venv" / "bin" / "python"), str(tmp_path))["externally_managed"] is False
