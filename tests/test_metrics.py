"""metrics.py: the families, the text exposition format, and what a scrape makes of the streams.
Pure: no sockets, no threads (the endpoint itself: test_metrics_sim.py)."""
import math
import time
from types import SimpleNamespace as NS

import pytest

from audio_stream import metrics, settings_xml
from audio_stream.metrics import Counter, Gauge, Histogram, Registry, render
from audio_stream.policy import RateLimit

from . import prom


def test_counter_gauge_and_labels_render_exactly():
    c = Counter("x_requests_total", "Requests.", ("code",))
    c.labels(200).inc()
    c.labels("200").inc(2)
    c.labels(500).inc(0.5)
    c.labels(500).inc(-3)                 # a counter never goes back
    g = Gauge("x_temperature_celsius", "Now.")
    g.set(-1.5)
    assert render([c, g]) == (
        "# HELP x_requests_total Requests.\n"
        "# TYPE x_requests_total counter\n"
        'x_requests_total{code="200"} 3\n'
        'x_requests_total{code="500"} 0.5\n'
        "# HELP x_temperature_celsius Now.\n"
        "# TYPE x_temperature_celsius gauge\n"
        "x_temperature_celsius -1.5\n")


def test_escaping_in_help_and_label_values():
    g = Gauge("x_info", 'Help with \\ a backslash\nand a newline "quoted".', ("path",))
    g.labels('C:\\dir "a"\nb').set(1)
    text = render([g])
    assert '# HELP x_info Help with \\\\ a backslash\\nand a newline "quoted".\n' in text
    assert 'x_info{path="C:\\\\dir \\"a\\"\\nb"} 1\n' in text
    fams = prom.parse(text)
    assert fams["x_info"]["help"] == 'Help with \\ a backslash\nand a newline "quoted".'
    assert prom.value(fams, "x_info", path='C:\\dir "a"\nb') == 1


@pytest.mark.parametrize("value, text", [
    (0, "0"), (12345678901234, "12345678901234"), (0.25, "0.25"), (1e-06, "1e-06"), (3.0, "3.0"),
    (math.inf, "+Inf"), (-math.inf, "-Inf"), (math.nan, "NaN"),
])
def test_numbers(value, text):
    assert metrics.number(value) == text


def test_histogram_buckets_are_cumulative_inclusive_and_end_with_inf():
    h = Histogram("x_latency_seconds", "Latency.", (0.1, 0.01, 1))
    for v in (0.005, 0.01, 0.05, 0.1, 0.5, 7):
        h.observe(v)
    text = render([h])
    assert text == (
        "# HELP x_latency_seconds Latency.\n"
        "# TYPE x_latency_seconds histogram\n"
        'x_latency_seconds_bucket{le="0.01"} 2\n'     # 0.005 and 0.01: the bound is inclusive
        'x_latency_seconds_bucket{le="0.1"} 4\n'
        'x_latency_seconds_bucket{le="1.0"} 5\n'
        'x_latency_seconds_bucket{le="+Inf"} 6\n'
        "x_latency_seconds_sum 7.665\n"
        "x_latency_seconds_count 6\n")
    prom.parse(text)


def test_histogram_with_labels_and_an_explicit_inf_bound():
    h = Histogram("x_size_bytes", "Sizes.", (10, math.inf), ("kind",))
    h.labels("a").observe(3)
    h.labels("b").observe(30)
    fams = prom.parse(render([h]))
    assert prom.value(fams, "x_size_bytes_bucket", kind="a", le="10.0") == 1
    assert prom.value(fams, "x_size_bytes_bucket", kind="b", le="10.0") == 0
    assert prom.value(fams, "x_size_bytes_bucket", kind="b", le="+Inf") == 1
    assert [s for s, lab, _ in fams["x_size_bytes"]["samples"] if lab.get("le") == "+Inf"] == ["x_size_bytes_bucket"] * 2


@pytest.mark.parametrize("make", [
    lambda: Counter("x_requests", "no _total"),
    lambda: Counter("0x_total", "bad name"),
    lambda: Gauge("x-y", "bad name"),
    lambda: Gauge("x", "bad label", ("a-b",)),
    lambda: Gauge("x", "reserved label", ("__x",)),
    lambda: Histogram("x", "le is the histogram's", (1,), ("le",)),
    lambda: Gauge("x", "twice", ("a", "a")),
    lambda: Histogram("x", "no buckets", ()),
])
def test_invalid_definitions_are_refused(make):
    with pytest.raises(ValueError):
        make()


def test_label_count_and_unlabelled_use_are_checked():
    c = Counter("x_total", "h", ("a",))
    with pytest.raises(ValueError):
        c.labels()
    with pytest.raises(ValueError):
        c.inc()


def test_a_family_twice_is_refused():
    r = Registry()
    r.add(Gauge("x", "h"))
    with pytest.raises(ValueError):
        r.add(Gauge("x", "h"))
    with pytest.raises(ValueError):
        render([Gauge("y", "h"), Gauge("y", "h")])


def test_the_reader_catches_what_prometheus_would_reject():
    ok = "# HELP a_total h\n# TYPE a_total counter\na_total 1\n"
    prom.parse(ok)
    for bad in (ok[:-1],                                      # no final newline
                ok + "a_total 2\n",                           # the same sample twice
                "# HELP a_total h\n# TYPE a_total counter\na_total{x=\"\\q\"} 1\n",   # bad escape
                "# HELP a h\n# TYPE a counter\na 1\n",        # counter without _total
                "# HELP h_s h\n# TYPE h_s histogram\nh_s_bucket{le=\"1.0\"} 2\nh_s_bucket{le=\"+Inf\"} 1\n"
                "h_s_sum 1\nh_s_count 1\n",                   # not cumulative
                "# HELP g h\n# TYPE g gauge\ng 1\n# HELP k h\n# TYPE k gauge\nk 1\ng 2\n"):   # split group
        with pytest.raises(prom.FormatError):
            prom.parse(bad)


# ---- audio_stream's metrics ----------------------------------------------------------------------

class FakeStream(NS):
    """What a scrape reads of a stream (a Stream is hashable and weakly referable: so is this)."""
    __hash__ = object.__hash__
    __eq__ = object.__eq__

    def sent_totals(self):
        return (self.link.messages_sent, self.link.bytes_sent) if self.link is not None else (0, 0)


def stream(state="streaming", protocol="audio_stream", sent=(0, 0), dropped_ms=0, reconnects=0, queued_ms=0,
           playback=None, playing=False, paused=False, link=True):
    queue = None if playback is None else NS(queued_ms=playback, paused=paused)
    return FakeStream(state=state, settings=NS(protocol=protocol), started_at=time.time(),
              link=NS(bytes_sent=sent[0], messages_sent=sent[1], policy=NS(reconnects=reconnects)) if link else None,
              outbox=NS(dropped_ms=dropped_ms, queued_ms=queued_ms),
              player=NS(queue=queue, playing=playing))


def scrape(live=(), finishing=(), **kw):
    return prom.parse(metrics.exposition(list(live), list(finishing), **kw))


def test_a_scrape_is_valid_and_has_every_family_even_with_no_stream():
    fams = scrape(lag_peak_s=0.0, gil={}, version="9.9")
    for name in ("audio_stream_streams", "audio_stream_streams_started_total", "audio_stream_streams_ended_total",
                 "audio_stream_sent_bytes_total", "audio_stream_sent_messages_total",
                 "audio_stream_received_bytes_total", "audio_stream_received_messages_total",
                 "audio_stream_caller_audio_dropped_seconds_total", "audio_stream_reconnects_total",
                 "audio_stream_connect_seconds", "audio_stream_playback_started_latency_seconds",
                 "audio_stream_playback_queued_seconds", "audio_stream_playback_queued_max_seconds",
                 "audio_stream_capture_tick_lateness_seconds", "audio_stream_capture_lateness_peak_seconds",
                 "audio_stream_events_suppressed_total", "audio_stream_build_info"):
        assert name in fams, name
        assert name.startswith("audio_stream_") and fams[name]["help"]
    assert prom.value(fams, "audio_stream_streams", state="streaming", protocol="twilio") == 0
    assert prom.value(fams, "audio_stream_streams_ended_total", reason="hangup") is not None
    assert prom.value(fams, "audio_stream_build_info", version="9.9") == 1
    assert "audio_stream_loop_thread_cpu_seconds_total" not in fams      # not measured: not shown


def test_no_label_takes_per_call_values():
    """Cardinality: with any number of calls, the same series."""
    many = [stream(state=st, protocol=p, playback=10, playing=True) for st in metrics.STATES for p in metrics.PROTOCOLS
            for _ in range(50)]
    few = scrape([stream()])
    lots = scrape(many)
    assert {(n, tuple(sorted(lab))) for f in few.values() for n, lab, _ in f["samples"]} == \
        {(n, tuple(sorted(lab))) for f in lots.values() for n, lab, _ in f["samples"]}


def test_state_gauges_queues_and_totals_from_the_streams():
    live = [stream("streaming", sent=(1000, 10), dropped_ms=40, queued_ms=60, playback=500, playing=True),
            stream("streaming", "twilio", sent=(500, 5), reconnects=2, queued_ms=20, playback=0),
            stream("connecting", link=False, dropped_ms=100, playback=300, paused=True),
            stream("reconnecting", playback=None)]
    finishing = [stream("closing", sent=(7, 1), playback=None)]
    before = scrape()
    fams = scrape(live, finishing, lag_peak_s=0.012)

    def delta(name, **lab):
        return prom.value(fams, name, **lab) - prom.value(before, name, **lab)
    assert prom.value(fams, "audio_stream_streams", state="streaming", protocol="audio_stream") == 1
    assert prom.value(fams, "audio_stream_streams", state="streaming", protocol="twilio") == 1
    assert prom.value(fams, "audio_stream_streams", state="connecting", protocol="audio_stream") == 1
    assert prom.value(fams, "audio_stream_streams", state="closing", protocol="audio_stream") == 1
    assert delta("audio_stream_sent_bytes_total") == 1507 and delta("audio_stream_sent_messages_total") == 16
    assert delta("audio_stream_caller_audio_dropped_seconds_total") == pytest.approx(0.14)
    assert delta("audio_stream_reconnects_total") == 2
    assert prom.value(fams, "audio_stream_uplink_queued_seconds") == pytest.approx(0.08)
    assert prom.value(fams, "audio_stream_uplink_queued_max_seconds") == pytest.approx(0.06)
    assert prom.value(fams, "audio_stream_playback_queued_seconds") == pytest.approx(0.8)
    assert prom.value(fams, "audio_stream_playback_queued_max_seconds") == pytest.approx(0.5)
    assert [prom.value(fams, "audio_stream_playback_streams", state=s) for s in metrics.PLAYBACK_STATES] == [1, 1, 1, 2]
    assert prom.value(fams, "audio_stream_capture_lateness_peak_seconds") == pytest.approx(0.012)


def test_an_ended_streams_totals_stay_in_the_counters():
    s = stream("closing", sent=(4000, 40), dropped_ms=20, reconnects=1)
    before = scrape()
    during = scrape([], [s])
    metrics.end_reason(s, "hangup")
    metrics.end_reason(s, "stop")                 # the first cause wins
    metrics.ended(s)
    after = scrape()
    for name, d in (("audio_stream_sent_bytes_total", 4000), ("audio_stream_sent_messages_total", 40),
                    ("audio_stream_caller_audio_dropped_seconds_total", 0.02), ("audio_stream_reconnects_total", 1)):
        assert prom.value(during, name) - prom.value(before, name) == pytest.approx(d)
        assert prom.value(after, name) == prom.value(during, name), name
    assert prom.value(after, "audio_stream_streams_ended_total", reason="hangup") == \
        prom.value(before, "audio_stream_streams_ended_total", reason="hangup") + 1
    assert prom.value(after, "audio_stream_streams_ended_total", reason="stop") == \
        prom.value(before, "audio_stream_streams_ended_total", reason="stop")


@pytest.mark.parametrize("closed, code, reason", [
    (True, 1, "server_closed"), (False, 1, "connection_lost"), (False, 11, "protocol_error"),
])
def test_why_a_lost_connection_ended_the_stream(closed, code, reason):
    s = stream()
    before = scrape()
    metrics.link_lost(s, closed, code)
    metrics.ended(s)
    other = stream()
    metrics.ended(other)                          # no cause recorded
    after = scrape()
    for r, d in ((reason, 1), ("other", 1)):
        assert prom.value(after, "audio_stream_streams_ended_total", reason=r) - \
            prom.value(before, "audio_stream_streams_ended_total", reason=r) == d


def test_event_hooks_move_their_counters():
    before = scrape()
    metrics.started(stream(protocol="twilio"))
    metrics.received("text", 12)
    metrics.received("binary", 640)
    metrics.tick_late(0.003)
    metrics.tick_late(-0.0001)                    # a tick a hair early counts as on time
    metrics.playback_latency(0.021)
    metrics.connected(NS(started_at=time.time() - 0.2))
    after = scrape()

    def delta(name, **lab):
        return prom.value(after, name, **lab) - prom.value(before, name, **lab)
    assert delta("audio_stream_streams_started_total", protocol="twilio") == 1
    assert delta("audio_stream_received_messages_total", kind="text") == 1
    assert delta("audio_stream_received_messages_total", kind="binary") == 1
    assert delta("audio_stream_received_bytes_total") == 652
    assert delta("audio_stream_capture_tick_lateness_seconds_count") == 2
    assert delta("audio_stream_capture_tick_lateness_seconds_bucket", le="0.001") == 1
    assert delta("audio_stream_capture_tick_lateness_seconds_bucket", le="0.005") == 2
    assert delta("audio_stream_playback_started_latency_seconds_bucket", le="0.02") == 0
    assert delta("audio_stream_playback_started_latency_seconds_bucket", le="0.03") == 1
    assert delta("audio_stream_connect_seconds_bucket", le="0.1") == 0
    assert delta("audio_stream_connect_seconds_bucket", le="0.25") == 1
    assert delta("audio_stream_connect_seconds_sum") == pytest.approx(0.2, abs=0.05)


def test_rate_limit_refusals_are_counted():
    before = scrape()
    limit = RateLimit(1, 2, metrics.suppressed("json_event"))
    assert [limit.allow(0.0) for _ in range(5)] == [True, True, False, False, False]
    assert limit.take_suppressed() == 3
    after = scrape()
    assert prom.value(after, "audio_stream_events_suppressed_total", kind="json_event") - \
        prom.value(before, "audio_stream_events_suppressed_total", kind="json_event") == 3


def test_gil_stats_become_metrics():
    fams = scrape(gil={"loop_cpu_s": 12.5, "media_cpu_s": 3.25, "path": "accelerated", "pass_cpu_s": 4.5,
                       "pass_wall_s": 6.0})
    assert prom.value(fams, "audio_stream_loop_thread_cpu_seconds_total") == 12.5
    assert prom.value(fams, "audio_stream_loop_thread_pass_cpu_seconds_total") == 4.5
    assert prom.value(fams, "audio_stream_loop_thread_pass_wait_seconds_total") == 6.0
    assert prom.value(fams, "audio_stream_media_callback_cpu_seconds_total") == 3.25
    assert prom.value(fams, "audio_stream_capture_path_info", path="accelerated") == 1


# ---- <metrics> in audio_stream.conf ----------------------------------------------------------------

def conf(metrics_xml):
    return '<configuration name="audio_stream.conf"><metrics>%s</metrics></configuration>' % metrics_xml


@pytest.mark.parametrize("value, listen", [
    ("127.0.0.1:9464", ("127.0.0.1", 9464)),
    ("0.0.0.0:9100", ("0.0.0.0", 9100)),
    ("[::1]:9464", ("::1", 9464)),
    ("metrics.example.com:80", ("metrics.example.com", 80)),
    ("", None),
])
def test_metrics_listen(value, listen):
    c = settings_xml.parse(conf('<param name="listen" value="%s"/>' % value))
    assert c.metrics_listen == listen and c.problems == ()


@pytest.mark.parametrize("value, says", [
    ("9464", "expected host:port"),
    (":9464", "no address before the port: 127.0.0.1:9464 for this machine only"),
    ("::1:9464", "an IPv6 address goes in brackets"),
    ("127.0.0.1:http", "the port 'http' is not an integer"),
    ("127.0.0.1:70000", "the port 70000 is not from 1 to 65535"),
    ("127.0.0.1:0", "the port 0 is not from 1 to 65535"),
    ("bad host:9464", "'bad host' is not an IP address or a host name"),
    ("[::1]9464", "expected [IPv6 address]:port"),
])
def test_a_bad_metrics_listen_is_one_problem_and_metrics_off(value, says):
    c = settings_xml.parse(conf('<param name="listen" value="%s"/>' % value))
    assert c.metrics_listen is None and len(c.problems) == 1
    problem = c.problems[0]
    assert problem.startswith("audio_stream.conf: metrics listen='%s': " % value)
    assert problem.endswith(": metrics are off") and says in problem


def test_metrics_section_unknowns_and_absence():
    c = settings_xml.parse(conf('<param name="port" value="9464"/><param name="listen" value="127.0.0.1:1"/>'))
    assert c.metrics_listen == ("127.0.0.1", 1)
    assert c.problems == ("audio_stream.conf: unknown metrics setting 'port': ignored (known: listen)",)
    assert settings_xml.parse('<configuration name="audio_stream.conf"/>').metrics_listen is None
    assert "known: settings, limits, metrics" in settings_xml.parse(
        '<configuration name="audio_stream.conf"><metric/></configuration>').problems[0]


ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


def test_the_shipped_conf_has_metrics_off_and_its_example_works():
    text = (ROOT / "conf" / "autoload_configs" / "audio_stream.conf.xml").read_text()
    assert settings_xml.parse(text).metrics_listen is None
    example = '<param name="listen" value="127.0.0.1:9464"/>'
    assert "<!-- %s -->" % example in text
    c = settings_xml.parse(text.replace("<!-- %s -->" % example, example))
    assert c.metrics_listen == ("127.0.0.1", 9464) and c.problems == ()


def test_the_grafana_dashboard_asks_only_for_metrics_that_exist():
    import json
    import re
    dash = json.loads((ROOT / "conf" / "grafana" / "audio_stream.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert len(exprs) >= 10
    fams = scrape(gil={"loop_cpu_s": 1.0, "media_cpu_s": 1.0, "path": "python"}, version="1")
    samples = {name for f in fams.values() for name, _, _ in f["samples"]}
    used = {n for e in exprs for n in re.findall(r"\baudio_stream_[a-z_]+", e)}
    assert used and used <= samples, used - samples
    for e in exprs:
        assert e.count("(") == e.count(")") and 'instance=~"$instance"' in e, e
    assert all(p["datasource"]["uid"] == "${datasource}" for p in dash["panels"])


def test_operations_md_documents_every_metric():
    import re
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text[text.index("### Prometheus metrics"):]
    documented = set(re.findall(r"`(audio_stream_[a-z_]+)`", section))
    fams = scrape(gil={"loop_cpu_s": 1.0, "media_cpu_s": 1.0, "path": "accel", "pass_cpu_s": 0.5, "pass_wall_s": 0.6},
                  version="1")
    assert set(fams) == documented, set(fams) ^ documented
