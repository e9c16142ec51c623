"""audio_stream.conf against a real FreeSWITCH (skips without one): a config installed in the
switch's conf dir, `reloadxml`, then a stream that takes a default from it, with the switch's
preprocessor having expanded a $${global} in it; removed again at the end.

The default used is STREAM_EXTRA_HEADERS (an extra handshake header): harmless to anything else
streaming on the same switch meanwhile."""
import os

import pytest

from ..support import WSServer
from .conftest import api

pytestmark = pytest.mark.usefixtures("has_reload")

CONF = """<configuration name="audio_stream.conf" description="test_xml_config_real">
  <settings>
    <param name="STREAM_EXTRA_HEADERS" value='{"X-Audio-Stream-Test":"$${local_ip_v4}"}'/>
    <param name="STREAM_HEART_BEAT" value="not-a-number"/>
  </settings>
</configuration>
"""




def stream_headers(fs, calls, server):
    a, _ = calls.originate("loopback/tone/fstest")
    n = len(server.conns) + 1
    assert api(fs, "%s start %s mono 8k" % (a, server.url)) == "+OK Success"
    conn = server.wait_conn(n)
    api(fs, "%s stop" % a)
    assert conn.closed.wait(5)
    fs.api("uuid_kill %s" % a)
    return conn.headers


def test_defaults_from_the_switchs_xml(fs, calls, conf_file):
    local_ip = fs.api("global_getvar local_ip_v4").strip()
    server = WSServer()
    try:
        assert "X-Audio-Stream-Test" not in stream_headers(fs, calls, server)
        with open(conf_file, "w") as f:
            f.write(CONF)
        assert fs.api("reloadxml").startswith("+OK")
        # no reload command needed: the next start reads the new text
        assert stream_headers(fs, calls, server).get("X-Audio-Stream-Test") == local_ip
        assert api(fs, "reload") == "+OK reloaded: 1 settings, 1 ignored (see the log)"
        # a channel variable still wins
        a, _ = calls.originate("loopback/tone/fstest")
        fs.api('uuid_setvar %s STREAM_EXTRA_HEADERS {"X-Other":"1"}' % a)
        n = len(server.conns) + 1
        assert api(fs, "%s start %s mono 8k" % (a, server.url)) == "+OK Success"
        conn = server.wait_conn(n)
        assert "X-Audio-Stream-Test" not in conn.headers and conn.headers.get("X-Other") == "1"
        api(fs, "%s stop" % a)
        os.unlink(conf_file)
        assert fs.api("reloadxml").startswith("+OK")
        assert "X-Audio-Stream-Test" not in stream_headers(fs, calls, server)
        assert api(fs, "reload") == "+OK reloaded: 0 settings (no audio_stream.conf: built-in defaults)"
        log = os.path.join(fs.api("global_getvar log_dir").strip(), "freeswitch.log")
        if os.path.exists(log):
            with open(log, errors="replace") as f:
                f.seek(max(0, os.path.getsize(log) - 500000))
                assert "STREAM_HEART_BEAT='not-a-number' is not a number" in f.read()
    finally:
        server.stop()
