"""The installer against the real switch: --dry-run only (others use this switch), and a full
install of the package into a temporary script dir with the switch's own Python and pip, then
--uninstall."""
import os
import subprocess
import sys

import pytest

from . import esl
from .conftest import HOST, PASSWORD, PORT, why_not_reachable

if why_not_reachable():
    pytest.skip(why_not_reachable(), allow_module_level=True)


def switch_var(name):
    c = esl.Connection(HOST, PORT, PASSWORD)
    try:
        return c.api("global_getvar " + name)
    finally:
        c.close()


if not os.path.exists(os.path.join(switch_var("mod_dir"), "mod_python3.so")):
    pytest.skip("the FreeSWITCH at %s:%d is on another machine (no %s/mod_python3.so here): the installer "
                "works on the switch's own machine" % (HOST, PORT, switch_var("mod_dir")), allow_module_level=True)


def install(*args):
    r = subprocess.run([sys.executable, "-m", "audio_stream", "install", "--esl", "%s:%d" % (HOST, PORT),
                        "--password", PASSWORD, *args], capture_output=True, text=True, timeout=300)
    return r.returncode, r.stdout, r.stderr


def test_dry_run_finds_everything_and_changes_nothing():
    conf_dir, script_dir = switch_var("conf_dir"), switch_var("script_dir")
    before = {d: sorted(os.listdir(d)) for d in (script_dir, conf_dir, os.path.join(conf_dir, "autoload_configs"))
              if os.path.isdir(d)}
    code, out, err = install("--dry-run")
    assert code in (0, 1), out + err        # 1: something blocks an install (it says what)
    assert "Traceback" not in err
    assert "script_dir  %s (from the switch)" % script_dir in out
    assert "conf_dir    %s (from the switch)" % conf_dir in out
    assert ", loaded, links libpython" in out
    assert "Python mod_python3 embeds: " in out and "not found" not in out.split("Python mod_python3 embeds: ")[1][:80]
    if code == 1:
        assert "BLOCKED: " in out or "Next:" in out
    after = {d: sorted(os.listdir(d)) for d in before}
    assert after == before


def test_full_install_into_a_temporary_tree_with_the_switchs_python_and_back(tmp_path):
    code, out, err = install("--dry-run", "--method", "none", "--no-conf")
    line = [x for x in out.splitlines() if x.startswith("Python mod_python3 embeds: ")]
    assert line, out
    python = line[0].split()[3]
    if "no pip" in line[0]:
        pytest.skip("%s has no pip" % python)
    scripts, conf = tmp_path / "scripts", tmp_path / "conf"
    (conf / "autoload_configs").mkdir(parents=True)
    scripts.mkdir()
    where = ("--script-dir", str(scripts), "--conf-dir", str(conf), "--python", python)
    code, out, err = install(*where, "--no-deps")
    assert "Traceback" not in err, err
    assert "install --target %s/.audio_stream-install/target" % scripts in out, out
    assert sorted(os.listdir(scripts)) == ["audio_stream"], out + err
    assert (scripts / "audio_stream" / "__init__.py").exists() and (scripts / "audio_stream" / "install-manifest.json").exists()
    assert "the embedded Python now imports audio_stream" in out and str(scripts / "audio_stream") in out
    assert (conf / "autoload_configs" / "python.conf.xml").exists()
    assert (conf / "dialplan" / "default" / "audio_stream.xml.dist").exists()
    code, out, err = install(*where, "--uninstall")
    assert code == 0, out + err
    assert os.listdir(scripts) == [] and sorted(p.name for p in conf.rglob("*")) == ["autoload_configs"], out
