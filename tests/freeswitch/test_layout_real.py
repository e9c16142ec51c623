"""The ctypes struct layouts against the installed libfreeswitch's own debug information.

Needs gdb and a libfreeswitch built with -g (the default build is); skips, saying why, otherwise.
AUDIO_STREAM_LIBFREESWITCH names the library (default: /usr/local/freeswitch/lib/libfreeswitch.so*).
"""
import ctypes
import glob
import os
import re
import shutil
import subprocess

import pytest

from audio_stream.switch import core

STRUCTS = {"switch_frame": core.Frame, "switch_codec": core.Codec,
           "switch_codec_implementation": core.CodecImplementation,
           "switch_frame_geometry": core.FrameGeometry}


def _library():
    path = os.environ.get("AUDIO_STREAM_LIBFREESWITCH")
    if path:
        return path if os.path.exists(path) else None
    found = sorted(glob.glob("/usr/local/freeswitch/lib/libfreeswitch.so*"), key=len, reverse=True)
    return found[0] if found else None


LIB = _library()


@pytest.fixture(scope="module")
def layouts():
    if not shutil.which("gdb"):
        pytest.skip("gdb is not installed")
    if not LIB:
        pytest.skip("no libfreeswitch found (set AUDIO_STREAM_LIBFREESWITCH)")
    cmds = []
    for name, st in STRUCTS.items():
        cmds += ["-ex", "p sizeof(struct %s)" % name]
        for field, _ in st._fields_:
            cmds += ["-ex", "p (long)&((struct %s *)0)->%s" % (name, field)]
    out = subprocess.run(["gdb", "-batch", "-nx"] + cmds + [LIB], capture_output=True, text=True, timeout=120)
    values = [int(v) for v in re.findall(r"^\$\d+ = (-?\d+)", out.stdout, re.M)]
    expected = sum(1 + len(st._fields_) for st in STRUCTS.values())
    if len(values) != expected:
        pytest.skip("no debug information for the structs in %s (%s)" % (LIB, out.stderr.strip()[:200]))
    result, i = {}, 0
    for name, st in STRUCTS.items():
        result[name] = (values[i], values[i + 1:i + 1 + len(st._fields_)])
        i += 1 + len(st._fields_)
    return result


@pytest.mark.parametrize("name", list(STRUCTS))
def test_struct_matches_the_real_core(layouts, name):
    st = STRUCTS[name]
    size, offsets = layouts[name]
    ours = [getattr(st, f).offset for f, _ in st._fields_]
    assert dict(zip([f for f, _ in st._fields_], ours)) == dict(zip([f for f, _ in st._fields_], offsets))
    assert ctypes.sizeof(st) == size
