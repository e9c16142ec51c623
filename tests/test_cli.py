"""The command line: `python -m audio_stream …`, the demo's options, one-line errors."""
import io
import socket
import time

import pytest

from audio_stream.tools import cli

from .servers import run_cli
from .support import FakeEventSocket


def one_line_error(err):
    return err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("args, says", [
    (["--seconds", "-1"], "--seconds: must be more than 0"),
    (["--seconds", "soon"], "--seconds: must be a number"),
    (["--call-rate", "12345"], "--call-rate: must be one of 8000, 16000, 32000, 48000"),
    (["--rate", "99k"], "--rate: invalid sample rate '99k': must be from 8000 to 48000"),
    (["--mix", "quad"], "--mix: invalid choice"),
    (["--out", "/proc/nope"], "cannot create the directory /proc/nope"),
])
def test_demo_rejects_bad_options_in_one_line(args, says):
    code, out, err = run_cli("audio_stream", "demo", *args)
    assert code != 0
    assert says in err and one_line_error(err), err
    assert "-ERR" not in err


def test_demo_runs_and_says_nothing_about_building_a_cached_simulator(tmp_path):
    from audio_stream.testing.sim import build
    build()                               # cached now (the same AUDIO_STREAM_SIM_CACHE as the demo's)
    code, out, err = run_cli("audio_stream", "demo", "--seconds", "0.5", "--out", str(tmp_path / "out"),
                             "--mix", "mono", "--rate", "8k")
    assert code == 0, err
    assert "WAV written: %s" % (tmp_path / "out") in out
    assert "building the switch simulator" not in out + err


def test_demo_help_describes_every_option():
    code, out, err = run_cli("audio_stream", "demo", "--help")
    out = " ".join(out.split())
    assert code == 0
    for text in ("--mix {mono,mixed,stereo} what to stream", "(default: stereo)", "(default: 3.0)",
                 "(default: 16k)", "(default: 8000)", "acknowledges its mark."):
        assert text in out


def test_main_lists_the_commands_and_rejects_unknown_ones():
    code, out, err = run_cli("audio_stream")
    assert code == 0
    for name in ("demo", "install", "status", "record-server", "echo-bot", "twilio-bot", "version"):
        assert "\n  %s " % name in out
    code, out, err = run_cli("audio_stream", "frobnicate")
    assert code == 2 and "unknown command 'frobnicate'" in err and one_line_error(err)
    code, out, err = run_cli("audio_stream", "version")
    assert code == 0 and out.strip()


def test_status_without_a_switch_says_so_in_one_line():
    with socket.socket() as s:            # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, out, err = run_cli("audio_stream", "status", "--esl", "127.0.0.1:%d" % port)
    assert code == 2 and "no FreeSWITCH event socket at 127.0.0.1:%d" % port in err and one_line_error(err)


def test_status_help_shows_its_defaults_as_you_would_type_them():
    code, out, err = run_cli("audio_stream", "status", "--help", env={"AUDIO_STREAM_ESL": ""})
    assert code == 0 and "(default: 127.0.0.1:8021)" in " ".join(out.split()) and "('" not in out
    code, out, err = run_cli("audio_stream", "status", "--help", env={"AUDIO_STREAM_ESL": "10.0.0.7:8022"})
    assert "(default: 10.0.0.7:8022)" in " ".join(out.split())


def test_status_of_an_unknown_host_says_so_in_one_line():
    code, out, err = run_cli("audio_stream", "status", "--esl", "no-such-host.invalid:8021")
    assert code == 2 and one_line_error(err) and "no-such-host.invalid" in err and "Unknown error" not in err, err


def test_status_of_a_fake_event_socket(tmp_path):
    """A stand-in event socket that answers like a switch whose audio_stream has no status yet."""
    replies = {"version": "FreeSWITCH Version 1.10.12", "module_exists mod_python3": "true",
               "python audio_stream": "-USAGE: <uuid> start ...",
               "python audio_stream status": "-ERR missing command after uuid (one of: start, stop)"}
    fake = FakeEventSocket(replies)
    try:
        code, out, err = run_cli("audio_stream", "status", "--pretty", "--esl", "127.0.0.1:%d" % fake.port)
    finally:
        fake.close()
    assert code == 0, err
    assert "module_exists mod_python3:   true" in out
    assert "python audio_stream status:  -ERR missing command" in out
    assert "has no status command yet" in out


def test_progress_is_silent_for_quick_work_and_reports_slow_work():
    out = io.StringIO()
    with cli.progress("quick", after=0.5, stream=out):
        pass
    assert out.getvalue() == ""
    with cli.progress("Building", after=0.05, every=0.1, stream=out):
        time.sleep(0.3)
    lines = out.getvalue().splitlines()
    assert lines[0] == "Building ..." and "still building" in lines[1] and lines[-1].startswith("  done in")


def test_run_turns_errors_into_one_line(capsys):
    def fails(argv):
        raise cli.CLIError("the thing is missing: do this", 3)

    def breaks(argv):
        open("/proc/nope/x")
    with pytest.raises(SystemExit) as e:
        cli.run(fails)
    assert e.value.code == 3 and capsys.readouterr().err == "error: the thing is missing: do this\n"
    with pytest.raises(SystemExit) as e:
        cli.run(breaks)
    assert e.value.code == 1 and capsys.readouterr().err == "error: /proc/nope/x: No such file or directory\n"
