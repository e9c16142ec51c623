"""The metrics endpoint of a real FreeSWITCH (skips without one, and unless AUDIO_STREAM_ESL names
the switch: the test listens on a port of that switch's machine and scrapes it, so run it where
the switch's 127.0.0.1 is yours, e.g. inside a private instance's network namespace).

An audio_stream.conf with a <metrics> section goes into the switch's conf dir (the test skips if
there is one already), `reloadxml` + `python audio_stream reload` start the endpoint, streams move
the numbers, a busy port is one ERR line and a reply that says so, and removing the section stops
the endpoint."""
import os
import socket
import time

import pytest

from .. import prom
from ..support import WSServer, free_port
from .conftest import HOST, MODULE

pytestmark = [
    pytest.mark.skipif(not os.environ.get("AUDIO_STREAM_ESL"),
                       reason="AUDIO_STREAM_ESL is not set: the metrics test binds a port on the switch's machine"),
    pytest.mark.usefixtures("has_reload"),
]

CONF = """<configuration name="audio_stream.conf" description="test_metrics_real">
  <metrics>
    <param name="listen" value="%s:%d"/>
  </metrics>
</configuration>
"""


def api(fs, line):
    return fs.api("python %s %s" % (MODULE, line))


def listen_on(fs, path, port):
    with open(path, "w") as f:
        f.write(CONF % (HOST, port))
    assert fs.api("reloadxml").startswith("+OK")
    return api(fs, "reload")


def scrape(port):
    return prom.scrape("http://%s:%d/metrics" % (HOST, port))


def refused(port):
    return prom.refused("http://%s:%d/metrics" % (HOST, port))


def log_tail(fs, nbytes=300000):
    log = os.path.join(fs.api("global_getvar log_dir").strip(), "freeswitch.log")
    if not os.path.exists(log):
        return None
    with open(log, errors="replace") as f:
        f.seek(max(0, os.path.getsize(log) - nbytes))
        return f.read()


def test_metrics_of_a_real_switch(fs, calls, conf_file):
    port = free_port()
    reply = listen_on(fs, conf_file, port)
    if "metrics" not in reply:
        pytest.skip("python %s predates metrics (reload -> %r)" % (MODULE, reply))
    assert reply == "+OK reloaded: 0 settings; metrics on http://%s:%d/metrics" % (HOST, port)
    server = WSServer()
    try:
        before = scrape(port)
        a, _ = calls.originate("loopback/tone/fstest")
        b, _ = calls.originate("loopback/tone/fstest")
        assert api(fs, "%s start %s mono 16k" % (a, server.url)) == "+OK Success"
        assert api(fs, "%s start %s stereo 8k" % (b, server.url)) == "+OK Success"
        c1, c2 = server.wait_conn(1), server.wait_conn(2)
        server.send(server.conns[0], '{"type":"hello"}')
        time.sleep(1.5)
        during = scrape(port)

        def moved(now, name, **labels):
            return prom.value(now, name, **labels) - prom.value(before, name, **labels)
        assert prom.value(during, "audio_stream_streams", state="streaming", protocol="audio_stream") >= 2
        assert moved(during, "audio_stream_streams_started_total", protocol="audio_stream") == 2
        assert moved(during, "audio_stream_connect_seconds_count") == 2
        # 1.5 s of 16 kHz mono and 8 kHz stereo: 32000 B/s each
        assert moved(during, "audio_stream_sent_bytes_total") >= 2 * 32000 * 1.0
        assert moved(during, "audio_stream_sent_messages_total") >= 2 * 40
        assert moved(during, "audio_stream_received_messages_total", kind="text") == 1
        assert moved(during, "audio_stream_capture_tick_lateness_seconds_count") >= 50
        assert prom.value(during, "audio_stream_loop_thread_cpu_seconds_total") > 0
        assert prom.value(during, "audio_stream_metrics_scrape_seconds") < 0.05
        assert api(fs, "%s stop" % a) == "+OK Success"
        fs.api("uuid_kill %s" % b)
        assert c1.closed.wait(5) and c2.closed.wait(5)
        time.sleep(0.5)
        after = scrape(port)
        assert moved(after, "audio_stream_streams_ended_total", reason="stop") == 1
        assert moved(after, "audio_stream_streams_ended_total", reason="hangup") == 1
        assert prom.value(after, "audio_stream_sent_bytes_total") >= prom.value(during, "audio_stream_sent_bytes_total")
    finally:
        server.stop()

    # a port taken by someone else: one ERR line, the reply says so, and a reload retries
    busy = socket.socket()
    busy.bind((HOST, 0))
    busy.listen()
    taken = busy.getsockname()[1]
    try:
        reply = listen_on(fs, conf_file, taken)
        assert reply == "+OK reloaded: 0 settings; metrics off: cannot listen on %s:%d: Address already in use" \
            % (HOST, taken)
        assert refused(port)                     # the old one stopped
        text = log_tail(fs)
        if text is not None:
            assert "metrics: cannot listen on %s:%d: Address already in use" % (HOST, taken) in text
    finally:
        busy.close()
    assert api(fs, "reload") == "+OK reloaded: 0 settings; metrics on http://%s:%d/metrics" % (HOST, taken)
    assert scrape(taken)

    os.unlink(conf_file)
    assert fs.api("reloadxml").startswith("+OK")
    assert api(fs, "reload") == "+OK reloaded: 0 settings (no audio_stream.conf: built-in defaults)"
    assert refused(taken)
