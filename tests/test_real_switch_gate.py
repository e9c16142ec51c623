"""tests/freeswitch/ touches a live switch only when asked (AUDIO_STREAM_ESL), and then skips, never
fails, when that switch lacks what the tests need. Run here against a stand-in event socket."""
import os
import subprocess
import sys

import pytest

from .support import FakeEventSocket

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWITCH = {"version": "FreeSWITCH Version 1.10.12", "module_exists mod_python3": "true",
          "python audio_stream": "-USAGE: <uuid> start ...", "global_getvar mod_dir": "/nowhere"}
SWITCH.update({"module_exists %s" % m: "true" for m in ("mod_loopback", "mod_tone_stream", "mod_sndfile",
                                                         "mod_commands", "mod_dptools")})


def run_real_tests(env):
    env = dict(os.environ, **env)
    if not env.get("AUDIO_STREAM_ESL"):
        env.pop("AUDIO_STREAM_ESL", None)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                        "tests/freeswitch/test_stream_real.py", "tests/freeswitch/test_installer_real.py",
                        "tests/freeswitch/test_xml_config_real.py"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return r.returncode, r.stdout + r.stderr


def test_without_audio_stream_esl_nothing_is_asked():
    fake = FakeEventSocket(SWITCH)          # a switch at the default address would not be asked either
    try:
        code, out = run_real_tests({"AUDIO_STREAM_ESL": "", "AUDIO_STREAM_ESL_PASSWORD": "x"})
    finally:
        fake.close()
    assert code == 0, out
    assert "AUDIO_STREAM_ESL is not set: the real-switch tests run only when asked" in out
    assert " passed" not in out and " failed" not in out and " error" not in out
    assert fake.asked == []


@pytest.mark.parametrize("lacking, says", [
    ({"xml_locate dialplan context name fstest": "can't find anything"},
     "has no dialplan context fstest with the extensions tone and park"),
    ({"module_exists mod_loopback": "false"}, "has no mod_loopback: the tests call through loopback channels"),
    ({"python audio_stream": "-ERR no reply"}, "audio_stream is not importable by mod_python3 there"),
])
def test_a_switch_without_what_the_tests_need_makes_them_skip(lacking, says):
    fake = FakeEventSocket(dict(SWITCH, **lacking))
    try:
        code, out = run_real_tests({"AUDIO_STREAM_ESL": "127.0.0.1:%d" % fake.port})
    finally:
        fake.close()
    assert code == 0, out
    assert says in out and " failed" not in out and " error" not in out, out
