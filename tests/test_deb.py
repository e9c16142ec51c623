"""The Debian package: build it with scripts/build-deb, look inside (dpkg-deb -I, -c, -x), and run
the connection tests against exactly what it and the Debian packages it depends on provide."""
import glob
import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig

import pytest

from audio_stream.version import VERSION

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(not shutil.which("dpkg-deb"), reason="dpkg-deb is not installed")


@pytest.fixture(scope="module")
def deb(tmp_path_factory):
    out = tmp_path_factory.mktemp("deb")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "build-deb"), "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0 and "pip download" in r.stderr and ("network" in r.stderr.lower()
                                                              or "No matching distribution" in r.stderr):
        pytest.skip("cannot download the wheels to vendor: %s" % r.stderr.strip().splitlines()[-1])
    assert r.returncode == 0, r.stderr
    path = r.stdout.strip().splitlines()[-1]
    assert os.path.basename(path).startswith("audio-stream_%s-1_" % VERSION)
    return path


def dpkg_deb(*args):
    return subprocess.run(["dpkg-deb", *args], capture_output=True, text=True, check=True).stdout


DEBIAN_DEPENDS = ["python3 (>= 3.11)", "python3 (<< 3.12)", "python3-numpy (>= 1:1.21)", "python3-ujson (>= 5.0)"]


def test_control_depends_on_debians_numpy_and_ujson(deb):
    fields = dict(line.split(": ", 1) for line in dpkg_deb("-f", deb).splitlines() if ": " in line)
    assert fields["Package"] == "audio-stream" and fields["Version"] == VERSION + "-1"
    assert [d.strip() for d in fields["Depends"].split(",")] == DEBIAN_DEPENDS
    assert "samplerate" not in fields["Depends"] and "aiohttp" not in fields["Depends"]
    assert "postinst" in dpkg_deb("-I", deb) and "prerm" in dpkg_deb("-I", deb)


SITE = "/usr/lib/python3/dist-packages"
DEPS = SITE + "/audio_stream/_deps"


def test_contents(deb):
    listing = dpkg_deb("-c", deb).splitlines()
    files = {line.split()[-1].lstrip(".") for line in listing}
    for path in (SITE + "/audio_stream/__init__.py", SITE + "/audio_stream/tools/installer.py",
                 SITE + "/audio_stream-%s.dist-info/METADATA" % VERSION, DEPS + "/aiohttp/__init__.py",
                 "/usr/bin/audio-stream-install", "/usr/share/audio-stream/conf/autoload_configs/python.conf.xml",
                 "/usr/share/audio-stream/conf/autoload_configs/audio_stream.conf.xml",
                 "/usr/share/audio-stream/conf/dialplan/audio_stream.xml", "/usr/share/doc/audio-stream/copyright"):
        assert path in files, path
    assert any(f.startswith(DEPS + "/samplerate.cpython-311-") for f in files)
    assert not [f for f in files if "/audio_stream/testing" in f]          # not the simulator
    assert not [f for f in files if f.startswith(DEPS + "/numpy") or f.startswith(DEPS + "/ujson")]  # Debian's
    assert not [f for f in files if f.endswith(".pth")]
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc") or "/bin/" in f and SITE in f]
    assert not [f for f in files if f.endswith("RECORD") or f.endswith("direct_url.json")]
    assert all(" root/root " in line for line in listing)


def _target_python():
    if platform.machine() != "x86_64":
        pytest.skip("the vendored wheels are for x86_64")
    python = "/usr/bin/python3"
    if not os.access(python, os.X_OK):
        pytest.skip("no %s (the Python the package is for)" % python)
    version = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True).stdout.strip()
    if version != "3.11":
        pytest.skip("%s is Python %s: the package is for Debian 12's 3.11" % (python, version))
    return python


def test_the_unpacked_package_imports_its_vendored_aiohttp_and_samplerate_first(deb, tmp_path):
    python = _target_python()
    dpkg_deb("-x", deb, str(tmp_path))
    site = tmp_path / SITE.lstrip("/")
    code = ("import sys, audio_stream.audio, aiohttp, samplerate\n"
            "deps = sys.argv[1]\n"
            "assert sys.path[0] == deps, sys.path\n"
            "assert samplerate.__file__.startswith(deps) and aiohttp.__file__.startswith(deps)\n"
            "assert tuple(int(x) for x in aiohttp.__version__.split('.')[:2]) >= (3, 10), aiohttp.__version__\n"
            "audio_stream.audio.SincResampler(8000, 44100, 1).process(bytes(320))\n")
    r = subprocess.run([python, "-c", code, str(site / "audio_stream" / "_deps")], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(site)), cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr


def _debian_dependencies(deb, cache):
    """The .deb files of what installing `deb` would pull in on this machine (python3 aside),
    downloaded with apt-get into `cache`; skips, saying why, when apt cannot."""
    if not shutil.which("apt-get"):
        pytest.skip("no apt-get: cannot fetch the Debian packages the .deb depends on")
    fields = dict(line.split(": ", 1) for line in dpkg_deb("-f", deb).splitlines() if ": " in line)
    names = sorted({d.split()[0] for d in fields["Depends"].split(",")} - {"python3"})
    r = subprocess.run(["apt-get", "install", "-s", "--no-install-recommends", *names], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip("apt-get cannot resolve %s: %s" % (" ".join(names), (r.stderr or r.stdout).strip()[-300:]))
    wanted = re.findall(r"^Inst (\S+) \(", r.stdout, re.M)
    missing = [n for n in wanted if not glob.glob(os.path.join(cache, "%s_*.deb" % n))]
    if missing:
        r = subprocess.run(["apt-get", "download", *missing], cwd=cache, capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            pytest.skip("apt-get download %s failed: %s" % (" ".join(missing), r.stderr.strip()[-300:]))
    return names, [glob.glob(os.path.join(cache, "%s_*.deb" % n))[0] for n in wanted]


def test_the_connection_tests_pass_with_the_debs_dependencies(deb, tmp_path):
    """What the .deb gets on Debian 12: its vendored aiohttp and samplerate, Debian's numpy and
    ujson (and their libraries), the system's Python 3.11 with nothing else on its path."""
    python = _target_python()
    cache = os.environ.get("AUDIO_STREAM_DEB_CACHE") or os.path.expanduser("~/.cache/audio_stream/debs")
    os.makedirs(cache, exist_ok=True)
    names, debs = _debian_dependencies(deb, cache)
    root = tmp_path / "root"
    for path in [deb] + debs:
        dpkg_deb("-x", path, str(root))
    assert names == ["python3-numpy", "python3-ujson"]
    tools = tmp_path / "pytest"            # pytest itself, from this environment: nothing else of it
    tools.mkdir()
    import pytest as _p
    here = os.path.dirname(os.path.dirname(_p.__file__))
    for name in ("pytest", "_pytest", "pluggy", "iniconfig", "packaging", "pygments", "py.py"):
        if os.path.exists(os.path.join(here, name)):
            os.symlink(os.path.join(here, name), tools / name)
    libs = root / "usr/lib/x86_64-linux-gnu"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(p) for p in (
        root / DEPS.lstrip("/"), root / SITE.lstrip("/"), tools)),
        LD_LIBRARY_PATH=os.pathsep.join(str(p) for p in (libs, libs / "blas", libs / "lapack")))
    env.pop("PYTHONHOME", None)
    which = ("import aiohttp, numpy, samplerate, ujson; print(aiohttp.__version__, aiohttp.__file__); "
             "print(numpy.__version__, numpy.__file__); print(samplerate.__file__); print(ujson.__file__)")
    r = subprocess.run([python, "-S", "-c", which], capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    aiohttp_line, numpy_line, samplerate_at, ujson_at = r.stdout.splitlines()
    assert aiohttp_line.split()[1].startswith(str(root / DEPS.lstrip("/")))
    assert numpy_line.startswith("1.24.") and numpy_line.split()[1].startswith(str(root / SITE.lstrip("/")))
    assert ujson_at.startswith(str(root / SITE.lstrip("/"))) and samplerate_at.startswith(str(root / DEPS.lstrip("/")))
    r = subprocess.run([python, "-S", "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_connection_sim.py"],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and " failed" not in r.stdout and "skipped" not in r.stdout, r.stdout[-1000:]
