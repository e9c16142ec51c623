"""The simulator's XML registry (switch_xml_open_cfg / switch_xml_toxml_ex / switch_xml_free),
through ctypes with switch_xml.h's signatures, declared here independently of the project."""
import ctypes
from ctypes import POINTER, byref, c_char_p, c_int, c_void_p

import pytest

from audio_stream.testing.sim import SimSwitch, declare

TEXT = '<configuration name="x.conf"><settings><param name="a" value="1"/></settings></configuration>'


@pytest.fixture(scope="module")
def lib():
    sw = SimSwitch()
    lib = declare(ctypes.CDLL(sw.path), {
        "switch_xml_open_cfg": (c_void_p, [c_char_p, POINTER(c_void_p), c_void_p]),
        "switch_xml_toxml_ex": (c_void_p, [c_void_p, c_int, c_int]),
        "switch_xml_free": (None, [c_void_p]),
        "free": (None, [c_void_p]),
    })
    yield sw, lib
    sw.reset()


def test_open_toxml_free(lib):
    sw, lib = lib
    node = c_void_p(1)
    assert not lib.switch_xml_open_cfg(b"x.conf", byref(node), None) and not node.value   # none: NULL, *node NULL
    sw.set_config("x.conf", TEXT)
    root = lib.switch_xml_open_cfg(b"X.CONF", byref(node), None)        # names compare case-insensitively
    assert root and node.value and sw.xml_open_count() == 1
    sw.set_config("x.conf", None)                                        # a reload meanwhile: our copy stays
    for header, expect in ((0, TEXT), (1, '<?xml version="1.0"?>\n' + TEXT)):
        p = lib.switch_xml_toxml_ex(node, header, 1)
        assert ctypes.string_at(p).decode() == expect
        lib.free(p)
    lib.switch_xml_free(root)
    assert sw.xml_open_count() == 0 and sw.violations() == 0
    lib.switch_xml_free(root)                                            # twice: reported
    assert sw.violations() == 1 and "freed twice" in sw.last_violation()
    sw.reset()
    sw.set_config("x.conf", TEXT)
    sw.reset()                                                           # a fresh switch has no config
    assert not lib.switch_xml_open_cfg(b"x.conf", byref(node), None)
