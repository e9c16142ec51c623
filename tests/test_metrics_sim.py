"""The metrics endpoint on the switch simulator: audio_stream.conf's <metrics> turns it on, moves
and stops it (on `reload`, and at the next `start` after reloadxml), a port that cannot be bound
is one clear log line and a reply that says so, and the numbers follow real streams."""
import socket
import time
import urllib.error
import urllib.request

import pytest

from audio_stream import exporter, settings_xml
from audio_stream.testing.sim import wait_until

from . import prom
from .support import free_port

CONF = '<configuration name="audio_stream.conf"><metrics>%s</metrics></configuration>'


@pytest.fixture
def xml(h):
    """Sets audio_stream.conf in the simulator's XML registry (its reloadxml); removed after."""
    def put(listen):
        text = None if listen is None else CONF % ('<param name="listen" value="%s"/>' % listen)
        h.sim.set_config(settings_xml.CONF_NAME, text)
    yield put
    h.sim.set_config(settings_xml.CONF_NAME, None)
    h.api("reload")


def url(port, path="/metrics"):
    return "http://127.0.0.1:%d%s" % (port, path)


def scrape(port):
    return prom.scrape(url(port))


def refused(port):
    return prom.refused(url(port))


def test_reload_starts_moves_and_stops_the_endpoint(h, xml):
    p1, p2 = free_port(), free_port()
    assert h.api("reload") == "+OK reloaded: 0 settings (no audio_stream.conf: built-in defaults)"
    xml("127.0.0.1:%d" % p1)
    assert h.api("reload") == "+OK reloaded: 0 settings; metrics on http://127.0.0.1:%d/metrics" % p1
    assert "audio_stream_streams_started_total" in scrape(p1)
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(url(p1, "/"), timeout=5)
    assert e.value.code == 404
    e.value.close()
    assert h.api("reload").endswith("; metrics on http://127.0.0.1:%d/metrics" % p1)     # unchanged: kept
    xml("127.0.0.1:%d" % p2)
    assert h.api("reload").endswith("; metrics on http://127.0.0.1:%d/metrics" % p2)
    assert refused(p1) and scrape(p2)
    xml(None)
    assert h.api("reload") == "+OK reloaded: 0 settings (no audio_stream.conf: built-in defaults)"
    assert refused(p2)
    logs = [m for _, m in h.fs.logs() if "metrics" in m]
    assert any("metrics on http://127.0.0.1:%d/metrics" % p1 in m for m in logs)
    assert any("metrics endpoint on 127.0.0.1:%d stopped" % p2 in m for m in logs)


def test_a_port_in_use_is_said_clearly_and_a_reload_retries(h, xml):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        xml("127.0.0.1:%d" % port)
        reply = h.api("reload")
        assert reply == "+OK reloaded: 0 settings; metrics off: cannot listen on 127.0.0.1:%d: " \
            "Address already in use" % port
        errs = [m for level, m in h.fs.logs() if level == "ERR" and "metrics" in m]
        assert errs and "cannot listen on 127.0.0.1:%d" % port in errs[-1] and \
            "<metrics> listen in audio_stream.conf" in errs[-1]
    finally:
        busy.close()
    assert h.api("reload").endswith("; metrics on http://127.0.0.1:%d/metrics" % port)
    assert scrape(port)


def test_the_next_start_after_reloadxml_applies_it_and_the_numbers_follow_the_streams(h, xml):
    port = free_port()
    server = h.server()
    xml("127.0.0.1:%d" % port)                  # reloadxml; no `reload` command
    ch = h.call(rate=8000)
    assert h.api("%s start %s mono 8k" % (ch.uuid, server.url)) == "+OK Success"
    conn = server.wait_conn()
    assert wait_until(lambda: not refused(port), 5)
    first = scrape(port)
    assert prom.value(first, "audio_stream_streams", state="streaming", protocol="audio_stream") == 1
    server.send(conn, '{"type":"hello"}')
    time.sleep(0.6)
    second = scrape(port)

    def moved(name, **lab):
        return prom.value(second, name, **lab) - prom.value(first, name, **lab)
    assert moved("audio_stream_sent_bytes_total") >= 0.3 * 8000 * 2
    assert moved("audio_stream_sent_messages_total") >= 10
    assert moved("audio_stream_received_messages_total", kind="text") == 1
    assert moved("audio_stream_capture_tick_lateness_seconds_count") >= 20
    assert prom.value(second, "audio_stream_connect_seconds_count") >= 1
    assert prom.value(second, "audio_stream_playback_streams", state="idle") == 1
    assert prom.value(second, "audio_stream_loop_thread_cpu_seconds_total") > 0
    assert h.api("%s stop" % ch.uuid) == "+OK Success"
    assert conn.closed.wait(5) and h.settle()
    time.sleep(exporter.MIN_RENDER_INTERVAL_S)
    third = scrape(port)
    assert prom.value(third, "audio_stream_streams_ended_total", reason="stop") - \
        prom.value(first, "audio_stream_streams_ended_total", reason="stop") == 1
    assert prom.value(third, "audio_stream_streams", state="streaming", protocol="audio_stream") == 0
    assert prom.value(third, "audio_stream_sent_bytes_total") >= prom.value(second, "audio_stream_sent_bytes_total")


def test_hangup_and_refused_connections_are_counted_by_reason(h, xml):
    port = free_port()
    xml("127.0.0.1:%d" % port)
    assert "metrics on" in h.api("reload")
    before = scrape(port)
    server = h.server()
    ch = h.call(rate=8000)
    assert h.api("%s start %s mono 8k" % (ch.uuid, server.url)) == "+OK Success"
    conn = server.wait_conn()
    ch.hangup()
    assert conn.closed.wait(5)
    other = h.call(rate=8000)
    assert h.api("%s start ws://127.0.0.1:%d/ mono 8k" % (other.uuid, free_port())) == "+OK Success"
    h.event("error")
    assert h.settle()
    time.sleep(exporter.MIN_RENDER_INTERVAL_S)
    after = scrape(port)
    for reason in ("hangup", "connect_failed"):
        assert prom.value(after, "audio_stream_streams_ended_total", reason=reason) - \
            prom.value(before, "audio_stream_streams_ended_total", reason=reason) == 1, reason


def test_the_startup_script_opens_the_endpoint_at_load(h, xml):
    import audio_stream
    port = free_port()
    xml("127.0.0.1:%d" % port)
    audio_stream.runtime()                       # what mod_python3 runs for startup-script at load
    assert wait_until(lambda: not refused(port), 5)
    assert prom.value(scrape(port), "audio_stream_streams", state="streaming", protocol="audio_stream") == 0
    assert any("metrics on http://127.0.0.1:%d/metrics" % port in m for _, m in h.fs.logs())
