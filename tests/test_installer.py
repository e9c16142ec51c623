"""The installer: its decisions (pure, from made-up facts) and whole runs against a fake
FreeSWITCH tree (a fake fs_cli that answers like a switch, a fake mod dir, a fake ldd)."""
import json
import os
import subprocess
import sys
import sysconfig
import textwrap

import pytest

from audio_stream.tools import install_plan as P
from audio_stream.version import VERSION

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


# ---- deciding ----------------------------------------------------------------------------------

def facts(**kw):
    py = kw.pop("python", None) or P.PythonInfo("/usr/bin/python3.11", "3.11.2", externally_managed=True,
                                                pip="23.0.1", purelib="/usr/local/lib/python3.11/dist-packages")
    f = P.Facts(our_version=VERSION, switch="fs_cli /x/fs_cli", python=py, source="/src/audio_stream",
                dirs={"script_dir": ("/fs/scripts", "from the switch"), "conf_dir": ("/fs/conf", "from the switch"),
                      "mod_dir": ("/fs/mod", "from the switch")}, mod_python3_so="/fs/mod/mod_python3.so",
                module_loaded=True, our_pip="23.2.1", installer_python="/venv/bin/python")
    for k, v in kw.items():
        setattr(f, k, v)
    return f


def pip_step(plan):
    (step,) = [s for s in plan.steps if s.kind == "pip"]
    return step


def test_an_externally_managed_python_gets_the_script_dir():
    plan = P.build_plan(facts(), P.Options())
    assert plan.method == "target" and not plan.blockers
    step = pip_step(plan)
    assert step.argv == ["/usr/bin/python3.11", "-m", "pip", "install", "--upgrade", "--target", "/fs/scripts",
                         "/src/audio_stream"]
    assert "PEP 668" in step.why and "--method site" in step.why


def test_site_on_an_externally_managed_python_breaks_system_packages_knowingly():
    step = pip_step(P.build_plan(facts(), P.Options(method="site", no_deps=True)))
    assert step.argv == ["/usr/bin/python3.11", "-m", "pip", "install", "--upgrade", "--break-system-packages",
                         "--no-deps", "/src/audio_stream"]
    plain = P.PythonInfo("/opt/py/bin/python3", "3.11.7", pip="24.0", purelib="/opt/py/lib/site")
    plan = P.build_plan(facts(python=plain), P.Options())
    assert plan.method == "site" and "--break-system-packages" not in pip_step(plan).argv


def test_a_python_without_pip_borrows_ours_or_says_what_to_install():
    nopip = P.PythonInfo("/usr/bin/python3.11", "3.11.2", externally_managed=True)
    step = pip_step(P.build_plan(facts(python=nopip), P.Options()))
    assert step.argv[:5] == ["/venv/bin/python", "-m", "pip", "--python", "/usr/bin/python3.11"]
    plan = P.build_plan(facts(python=nopip, our_pip="21.0"), P.Options())
    assert plan.blockers == ["/usr/bin/python3.11 has no pip: install it (Debian: apt-get install python3-pip) "
                             "and run this again"]


def test_the_same_version_is_kept_unless_reinstalling():
    py = P.PythonInfo("/usr/bin/python3.11", "3.11.2", True, "23.0.1", package_path="/fs/scripts/audio_stream",
                      package_version=VERSION)
    plan = P.build_plan(facts(python=py), P.Options())
    assert [s.kind for s in plan.steps if "audio_stream %s" % VERSION in s.text] == ["keep"]
    assert "--force-reinstall" in pip_step(P.build_plan(facts(python=py), P.Options(reinstall=True))).argv
    py.missing = ("samplerate (ModuleNotFoundError: …)",)
    assert pip_step(P.build_plan(facts(python=py), P.Options()))


def test_a_link_in_the_script_dir_is_never_replaced():
    plan = P.build_plan(facts(script_copy=("/fs/scripts/audio_stream", "/work/main/audio_stream", False)), P.Options())
    assert len(plan.blockers) == 1 and "is a link to /work/main/audio_stream" in plan.blockers[0]
    assert not [s for s in plan.steps if s.kind == "pip"]
    plan = P.build_plan(facts(script_copy=("/fs/scripts/audio_stream", None, True)), P.Options(method="site"))
    assert "would shadow" in plan.blockers[0]
    plan = P.build_plan(facts(script_copy=("/fs/scripts/audio_stream", "/x", False)), P.Options(method="none"))
    assert not plan.blockers


def test_nothing_to_go_on():
    plan = P.build_plan(facts(dirs={}, switch_error="Error Connecting"), P.Options())
    assert "cannot find FreeSWITCH's script directory: Error Connecting" in plan.blockers[0]
    f = facts(ldd_error="ldd /fs/mod/mod_python3.so lists no libpython")
    f.python = None
    assert "lists no libpython" in P.build_plan(f, P.Options()).blockers[0]
    assert "no source to install" in P.build_plan(facts(source=None), P.Options()).blockers[0]


def test_a_switch_on_another_machine():
    f = facts(mod_python3_so=None)
    f.python = None
    (blocker,) = P.build_plan(f, P.Options()).blockers
    assert "mod_python3 is loaded, but /fs/mod/mod_python3.so is not on this machine" in blocker


def test_conf_snippets_never_replace_a_file():
    ours = b"<configuration name='python.conf'/>"
    sample = b"<include/>"
    snippets = {"autoload_configs/python.conf.xml": ours, "dialplan/audio_stream.xml": sample}
    pyconf, dialplan = "/fs/conf/autoload_configs/python.conf.xml", "/fs/conf/dialplan/default/audio_stream.xml"

    def steps(existing):
        return P.conf_steps(facts(snippets=snippets, conf_existing=existing))

    fresh, notes = steps({})
    assert [(s.kind, s.path) for s in fresh] == [("write", pyconf), ("write", dialplan + ".dist")]
    assert "answers 5000" in notes[0] and "reloadxml" in notes[0]
    theirs, _ = steps({pyconf: b"theirs", dialplan: b"theirs too"})
    assert [(s.kind, s.path) for s in theirs] == [("write", pyconf + ".dist"), ("write", dialplan + ".dist")]
    assert "yours is kept" in theirs[0].text
    again, _ = steps({pyconf: b"theirs", pyconf + ".dist": ours, dialplan: sample})
    assert [s.kind for s in again] == ["keep", "keep"]


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
    assert P.next_steps(facts(answers="-USAGE: …"), True) == []
    f = facts(mod_python3_so=None)
    assert "apt-get install freeswitch-mod-python3" in P.next_steps(f, False)[0]
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


@pytest.fixture(scope="module")
def embedded_python(tmp_path_factory):
    """A Python without pip and without audio_stream that can import the dependencies: what
    mod_python3 embeds on a machine where only the dependencies are installed."""
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
    return str(venv / "bin" / "python")


class FakeSwitch:
    def __init__(self, root, python, loaded=True, load_line=True, up=True):
        self.root = root
        self.dirs = {n: str(root / d) for n, d in (("script_dir", "scripts"), ("conf_dir", "conf"),
                                                    ("mod_dir", "mod"), ("log_dir", "log"))}
        for d in ("bin", "scripts", "conf/autoload_configs", "conf/dialplan/default", "mod", "log", "tools"):
            (root / d).mkdir(parents=True, exist_ok=True)
        (root / "conf/autoload_configs/modules.conf.xml").write_text(
            MODULES_CONF % ('<load module="mod_python3"/>' if load_line else ""))
        (root / "conf/autoload_configs/python.conf.xml").write_text("<configuration name='python.conf'/>\n")
        (root / "mod/mod_python3.so").write_bytes(b"\x7fELF fake")
        fs_cli = root / "bin" / "fs_cli"
        fs_cli.write_text(FAKE_FS_CLI.replace("{python}", sys.executable))
        fs_cli.chmod(0o755)
        self.state = {"up": up, "loaded": loaded, "vars": self.dirs, "python": python}
        (root / "bin" / "state.json").write_text(json.dumps(self.state))
        # ldd, as on the switch's machine: mod_python3.so links this Python's libpython
        libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
        self.libpython = os.path.join(libdir or "/nowhere", soname or "libpython3.so")
        ldd = root / "tools" / "ldd"
        ldd.write_text("#!/bin/sh\nprintf '\\tlibpython%s.so.1.0 => %s (0x1)\\n'\n"
                       % (sysconfig.get_python_version(), self.libpython))
        ldd.chmod(0o755)

    def snapshot(self):
        return sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*") if not {"tools", "log"} & set(p.relative_to(self.root).parts))

    def install(self, *args):
        env = dict(os.environ, PATH="%s:%s" % (self.root / "tools", os.environ["PATH"]))
        r = subprocess.run([sys.executable, "-m", "audio_stream", "install", "--fs-cli", str(self.root / "bin/fs_cli"),
                            *args], capture_output=True, text=True, env=env, timeout=300)
        return r.returncode, r.stdout, r.stderr


def test_dry_run_shows_the_plan_and_changes_nothing(tmp_path, embedded_python):
    fs = FakeSwitch(tmp_path / "fs", embedded_python)
    before = fs.snapshot()
    code, out, err = fs.install("--dry-run", "--python", embedded_python, "--method", "target")
    assert code == 0, out + err
    assert "script_dir  %s (from the switch)" % fs.dirs["script_dir"] in out
    assert "it cannot import audio_stream yet" in out
    assert "--python %s install --upgrade --target %s" % (embedded_python, fs.dirs["script_dir"]) in out
    assert "python.conf.xml.dist (yours is kept" in out and "audio_stream.xml.dist (an example" in out
    assert fs.snapshot() == before


def test_install_into_the_script_dir_then_again(tmp_path, embedded_python):
    fs = FakeSwitch(tmp_path / "fs", embedded_python)
    code, out, err = fs.install("--python", embedded_python, "--method", "target", "--no-deps")
    assert code == 0, out + err
    scripts = fs.root / "scripts"
    assert (scripts / "audio_stream" / "__init__.py").exists()
    assert (scripts / ("audio_stream-%s.dist-info" % VERSION)).is_dir()
    assert "the embedded Python now imports audio_stream %s from %s" % (VERSION, scripts / "audio_stream") in out
    assert "audio_stream answers in FreeSWITCH" in out
    assert "restart FreeSWITCH" not in out            # it was not loaded before: nothing to restart
    conf = fs.root / "conf"
    assert (conf / "autoload_configs/python.conf.xml").read_text() == "<configuration name='python.conf'/>\n"
    assert b"startup-script" in (conf / "autoload_configs/python.conf.xml.dist").read_bytes()
    assert (conf / "dialplan/default/audio_stream.xml.dist").exists()
    assert not (conf / "dialplan/default/audio_stream.xml").exists()
    assert "optional: add %s" % P.STARTUP_LINE in out

    code, out, err = fs.install("--python", embedded_python, "--method", "target", "--no-deps")
    assert code == 0, out + err
    assert "keep audio_stream %s at %s" % (VERSION, scripts / "audio_stream") in out
    assert "$ " not in out and "wrote" not in out


def test_install_into_site_packages(tmp_path, embedded_python):
    import shutil
    venv = tmp_path / "venv"      # a copy: this one gets the package
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    pth = [p for p in (os.path.dirname(os.path.dirname(embedded_python)),) for p in
           __import__("glob").glob(p + "/lib/python*/site-packages/deps.pth")]
    site = __import__("glob").glob(str(venv / "lib/python*/site-packages"))[0]
    shutil.copy(pth[0], site)
    python = str(venv / "bin" / "python")
    fs = FakeSwitch(tmp_path / "fs", python)
    code, out, err = fs.install("--python", python, "--no-deps", "--no-conf")
    assert code == 0, out + err
    assert "is not externally managed: the package goes into its site-packages" in out
    assert os.path.exists(os.path.join(site, "audio_stream", "__init__.py"))
    assert not (fs.root / "scripts" / "audio_stream").exists()


def test_finds_the_python_from_mod_python3s_libpython(tmp_path, embedded_python):
    fs = FakeSwitch(tmp_path / "fs", embedded_python)
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
            "and run fs_cli -x 'load mod_python3'" % fs.dirs["conf_dir"]) in out


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
