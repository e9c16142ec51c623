"""The Debian package: build it with scripts/build-deb and look inside (dpkg-deb -I, -c, -x)."""
import os
import platform
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
        pytest.skip("cannot download the samplerate wheel to vendor: %s" % r.stderr.strip().splitlines()[-1])
    assert r.returncode == 0, r.stderr
    path = r.stdout.strip().splitlines()[-1]
    assert os.path.basename(path).startswith("audio-stream_%s-1_" % VERSION)
    return path


def dpkg_deb(*args):
    return subprocess.run(["dpkg-deb", *args], capture_output=True, text=True, check=True).stdout


def test_control_depends_on_debians_numpy_aiohttp_ujson(deb):
    fields = dict(line.split(": ", 1) for line in dpkg_deb("-f", deb).splitlines() if ": " in line)
    assert fields["Package"] == "audio-stream" and fields["Version"] == VERSION + "-1"
    depends = [d.strip() for d in fields["Depends"].split(",")]
    assert depends == ["python3 (>= 3.11)", "python3 (<< 3.12)", "python3-aiohttp (>= 3.8)",
                       "python3-numpy (>= 1:1.21)", "python3-ujson (>= 5.0)"]
    assert "samplerate" not in fields["Depends"]
    assert "postinst" in dpkg_deb("-I", deb) and "prerm" in dpkg_deb("-I", deb)


def test_contents(deb):
    listing = dpkg_deb("-c", deb).splitlines()
    files = {line.split()[-1].lstrip(".") for line in listing}
    site = "/usr/lib/python3/dist-packages"
    for path in (site + "/audio_stream/__init__.py", site + "/audio_stream/tools/installer.py",
                 site + "/audio_stream/testing/fssim.c", site + "/audio_stream_vendor.pth",
                 site + "/audio_stream-%s.dist-info/METADATA" % VERSION,
                 "/usr/bin/audio-stream-install", "/usr/share/audio-stream/conf/autoload_configs/python.conf.xml",
                 "/usr/share/audio-stream/conf/dialplan/audio_stream.xml", "/usr/share/doc/audio-stream/copyright"):
        assert path in files, path
    assert any(f.startswith("/usr/lib/audio-stream/vendor/samplerate.cpython-311-") for f in files)
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc") or "/bin/" in f and site in f]
    assert not [f for f in files if f.endswith("RECORD") or f.endswith("direct_url.json")]
    assert all(" root/root " in line for line in listing)


def test_the_unpacked_package_imports_with_its_vendored_samplerate(deb, tmp_path):
    dpkg_deb("-x", deb, str(tmp_path))
    assert (tmp_path / "usr/lib/python3/dist-packages/audio_stream_vendor.pth").read_text() == \
        "/usr/lib/audio-stream/vendor\n"
    if sysconfig.get_python_version() != "3.11" or platform.machine() != "x86_64":
        pytest.skip("the vendored samplerate is for CPython 3.11 on x86_64")
    site, vendor = tmp_path / "usr/lib/python3/dist-packages", tmp_path / "usr/lib/audio-stream/vendor"
    code = ("import sys, audio_stream.audio, samplerate\n"
            "assert samplerate.__file__.startswith(sys.argv[1]), samplerate.__file__\n"
            "assert audio_stream.audio.__file__.startswith(sys.argv[2]), audio_stream.audio.__file__\n"
            "audio_stream.audio.SincResampler(8000, 44100, 1).process(bytes(320))\n")
    r = subprocess.run([sys.executable, "-c", code, str(vendor), str(site)], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH="%s:%s" % (site, vendor)), cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
