"""audio_stream.conf through the real stack on the switch simulator: read with switch_xml_open_cfg at
each start, defaults under channel variables, `reload`, bad values, the global limits. And the
simulator's XML registry itself (switch_xml_open_cfg / switch_xml_toxml_ex / switch_xml_free),
through ctypes with switch_xml.h's signatures, declared independently of the project."""
import ctypes
import json
from ctypes import POINTER, byref, c_char_p, c_int, c_void_p

import pytest

from audio_stream import settings_xml
from audio_stream.testing.sim import SimSwitch, declare, wait_until

NAME = "audio_stream.conf"


@pytest.fixture
def x(h):
    old = settings_xml.LOADER
    settings_xml.LOADER = settings_xml.Loader()
    yield h
    settings_xml.LOADER = old
    assert h.sim.xml_open_count() == 0, "switch_xml_open_cfg roots not freed"


def conf(settings="", limits=""):
    return ('<configuration name="audio_stream.conf" description="t"><settings>%s</settings>'
            '<limits>%s</limits></configuration>' % (settings, limits))


def p(name, value):
    return '<param name="%s" value="%s"/>' % (name, value)


def sizes(h, server, ch, ticks=12):
    n = len(server.conns) + 1
    assert h.api("%s start %s mono 8k" % (ch.uuid, server.url)) == "+OK Success"
    conn = server.wait_conn(n)
    ch.run_ticks(ticks)
    assert h.api("%s stop" % ch.uuid) == "+OK Success"
    assert conn.closed.wait(5)
    return [len(b) for b in conn.binaries]


def warnings(h):
    return [m for level, m in h.fs.logs() if level == "WARNING" and NAME in m]


def test_file_defaults_apply_and_channel_variables_override_them(x):
    h = x
    h.sim.set_config(NAME, conf(p("STREAM_BUFFER_SIZE", "60")))
    server = h.server()
    ch = h.call(rate=8000, start=False)
    ch.start(speed=4.0, ticks=0)
    assert set(sizes(h, server, ch)[:-1]) == {960}            # 60 ms at 8 kHz
    h.settle()
    ch2 = h.call(rate=8000, start=False, STREAM_BUFFER_SIZE=100)
    ch2.start(speed=4.0, ticks=0)
    server2 = h.server()
    assert set(sizes(h, server2, ch2, 15)[:-1]) == {1600}     # the channel variable wins


def test_reloadxml_takes_effect_at_the_next_start(x):
    h = x
    server = h.server()
    ch = h.call(rate=8000, start=False)
    ch.start(speed=4.0, ticks=0)
    assert set(sizes(h, server, ch)[:-1]) == {320}            # built-in 20 ms
    h.settle()
    opens = h.sim.xml_opens_total()
    h.sim.set_config(NAME, conf(p("STREAM_BUFFER_SIZE", "40")))   # what reloadxml does
    server2 = h.server()
    assert set(sizes(h, server2, ch)[:-1]) == {640}
    assert h.sim.xml_opens_total() == opens + 1                # one read per start


def test_reload_command(x):
    h = x
    assert h.api("reload") == "+OK reloaded: 0 settings (no audio_stream.conf: built-in defaults)"
    h.sim.set_config(NAME, conf(p("STREAM_HEART_BEAT", "10") + p("STREAM_DTMF", "false"), p("max_streams", "5")))
    assert h.api("reload") == "+OK reloaded: 3 settings"
    assert h.api("RELOAD") == "+OK reloaded: 3 settings"
    h.sim.set_config(NAME, conf(p("STREAM_HEART_BEAT", "ten")))
    assert h.api("reload") == "+OK reloaded: 0 settings, 1 ignored (see the log)"
    assert len(warnings(h)) == 1 and "STREAM_HEART_BEAT='ten' is not a number" in warnings(h)[0]
    h.api("reload")
    assert len(warnings(h)) == 2                               # an explicit reload says it again
    h.sim.set_config(NAME, "<configuration name='audio_stream.conf'><settings>")
    reply = h.api("reload")
    assert reply.startswith("-ERR audio_stream.conf is not well-formed XML")
    assert h.api("reload now") == "-ERR reload takes no arguments"


def test_a_bad_value_never_refuses_a_call(x):
    h = x
    h.sim.set_config(NAME, conf(p("STREAM_BUFFER_SIZE", "banana") + p("STREAM_EXTRA_HEADERS", "{nope")))
    server = h.server()
    ch = h.call(rate=8000, start=False)
    ch.start(speed=4.0, ticks=0)
    assert set(sizes(h, server, ch)[:-1]) == {320}            # the built-in default
    h.settle()
    assert h.api("%s start %s mono 8k" % (ch.uuid, server.url)) == "+OK Success"
    h.api("%s stop" % ch.uuid)
    lines = warnings(h)
    assert len(lines) == 2, lines                              # once, not once per start
    assert "STREAM_BUFFER_SIZE='banana' is not an integer: using the built-in default 20" in lines[0]
    assert "STREAM_EXTRA_HEADERS is not valid JSON" in lines[1]


def test_max_streams(x):
    h = x
    h.sim.set_config(NAME, conf(limits=p("max_streams", "2")))
    server = h.server()
    chans = [h.call(rate=8000) for _ in range(3)]
    assert h.api("%s start %s mono 8k" % (chans[0].uuid, server.url)) == "+OK Success"
    assert h.api("%s start %s mono 8k" % (chans[1].uuid, server.url)) == "+OK Success"
    assert h.api("%s start %s mono 8k" % (chans[2].uuid, server.url)) == \
        "-ERR too many streams (2, max_streams in audio_stream.conf)"
    assert chans[2].bug_count == 0 and chans[2].dtmf_hooks == 0
    assert h.api("%s stop" % chans[0].uuid) == "+OK Success"
    assert wait_until(lambda: h.api("%s start %s mono 8k" % (chans[2].uuid, server.url)) == "+OK Success", 5)
    h.sim.set_config(NAME, None)                               # no file: no limit
    ch4 = h.call(rate=8000)
    assert h.api("%s start %s mono 8k" % (ch4.uuid, server.url)) == "+OK Success"


def test_max_message_size_caps_what_the_server_may_send(x):
    h = x
    h.sim.set_config(NAME, conf(limits=p("max_message_size", "2048")))
    server = h.server()
    ch = h.call(rate=8000, STREAM_MAX_MESSAGE="1000000")
    assert h.api("%s start %s mono 8k" % (ch.uuid, server.url)) == "+OK Success"
    conn = server.wait_conn()
    assert any("over max_message_size" in m for _, m in h.fs.logs())
    server.send(conn, json.dumps({"type": "x", "pad": "y" * 3000}))
    ev = h.event("error")
    assert "over STREAM_MAX_MESSAGE (2048)" in json.loads(ev["_body"])["message"]["error"]


def test_dtmf_off_by_default_in_the_file(x):
    h = x
    h.sim.set_config(NAME, conf(p("STREAM_DTMF", "false")))
    server = h.server()
    ch = h.call(rate=8000)
    assert h.api("%s start %s mono 8k" % (ch.uuid, server.url)) == "+OK Success"
    server.wait_conn()
    assert ch.dtmf_hooks == 0
    h.api("%s stop" % ch.uuid)
    ch2 = h.call(rate=8000, STREAM_DTMF="true")
    assert h.api("%s start %s mono 8k" % (ch2.uuid, server.url)) == "+OK Success"
    assert ch2.dtmf_hooks == 1


# ---- the simulator's XML registry ------------------------------------------------------------

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
