"""Real-switch tests: a FreeSWITCH 1.10 with mod_python3 and this package importable, reached over
its event socket. They run only when asked, with AUDIO_STREAM_ESL=host:port (and
AUDIO_STREAM_ESL_PASSWORD, default ClueCon): they originate calls on that switch. Asked, they
skip, saying why, when no switch answers there or it lacks what they need (mod_python3 with
audio_stream, mod_loopback, mod_tone_stream, the `fstest` dialplan context). docs/testing.md
says how to set one up."""
import os
import uuid as uuidlib

import pytest

from . import esl

ASKED = os.environ.get("AUDIO_STREAM_ESL", "").strip()
HOST, _, PORT = (ASKED or "127.0.0.1:8021").partition(":")
PORT = int(PORT or 8021)
PASSWORD = os.environ.get("AUDIO_STREAM_ESL_PASSWORD", "ClueCon")
NOT_ASKED = ("AUDIO_STREAM_ESL is not set: the real-switch tests run only when asked, e.g. "
             "AUDIO_STREAM_ESL=127.0.0.1:8021 (they originate calls on that switch; see docs/testing.md)")
# the name mod_python3 imports the package under (a symlink in the script dir): `python <MODULE> ...`
MODULE = os.environ.get("AUDIO_STREAM_FS_MODULE", "audio_stream")
SUBCLASSES = ["mod_audio_stream::%s" % n for n in (
    "connect", "disconnect", "error", "json", "play", "mark", "playback_started", "playback_stopped",
    "reconnecting", "reconnected", "buffer_overrun", "buffer_recovered", "dtmf")]
# what the calls of these tests need: loopback channels into the fstest context's extensions
CALL_MODULES = ("mod_loopback", "mod_tone_stream", "mod_sndfile", "mod_commands", "mod_dptools")
CALL_EXTENSIONS = ("tone", "park")


@pytest.fixture(autouse=True)
def _asked():
    if not ASKED:
        pytest.skip(NOT_ASKED)


def why_not_reachable():
    if not ASKED:
        return NOT_ASKED
    if not esl.reachable(HOST, PORT, PASSWORD):
        return "no FreeSWITCH event socket at %s:%d (AUDIO_STREAM_ESL; see docs/testing.md)" % (HOST, PORT)
    return None


def why_not(c):
    """Why the switch behind `c` cannot run the stream tests, or None."""
    if c.api("module_exists mod_python3") != "true":
        return "FreeSWITCH at %s:%d has no mod_python3" % (HOST, PORT)
    reply = c.api("python %s" % MODULE)
    if not reply.startswith("-USAGE"):
        return "%s is not importable by mod_python3 there (python %s -> %r)" % (MODULE, MODULE, reply)
    return None


def why_no_calls(c):
    """Why the switch behind `c` cannot make the tests' calls, or None."""
    missing = [m for m in CALL_MODULES if c.api("module_exists %s" % m) != "true"]
    if missing:
        return "FreeSWITCH at %s:%d has no %s: the tests call through loopback channels into tone and park " \
               "extensions (docs/testing.md)" % (HOST, PORT, ", ".join(missing))
    context = c.api("xml_locate dialplan context name fstest")
    lacking = [e for e in CALL_EXTENSIONS if 'extension name="%s"' % e not in context]
    if lacking:
        return "FreeSWITCH at %s:%d has no dialplan context fstest with the extension%s %s (docs/testing.md " \
               "shows it)" % (HOST, PORT, "s" if len(lacking) > 1 else "", " and ".join(lacking))
    return None


def api(fs, line):
    """`python <MODULE> <line>` on the switch: the reply."""
    return fs.api("python %s %s" % (MODULE, line))


@pytest.fixture
def has_reload(fs):
    """Skip unless the module the switch loads has the `reload` command (DTMF and audio_stream.conf
    came with it): the switch may load another checkout than this one."""
    reply = fs.api("python %s reload" % MODULE)
    if not reply.startswith("+OK reloaded"):
        pytest.skip("python %s predates DTMF and audio_stream.conf (reload -> %r): set AUDIO_STREAM_FS_MODULE to "
                    "a symlink to this checkout in the script dir" % (MODULE, reply.strip()))


_checked = {}


@pytest.fixture(scope="session")
def fs():
    reason = why_not_reachable()
    if reason:
        pytest.skip(reason)
    c = esl.Connection(HOST, PORT, PASSWORD)
    reason = why_not(c)
    if reason:
        c.close()
        pytest.skip(reason)
    yield c
    c.close()


@pytest.fixture
def events(fs):
    listener = esl.EventListener(SUBCLASSES, HOST, PORT, PASSWORD)
    yield listener
    listener.close()


class Calls:
    """Originates loopback calls and hangs up exactly those (never hupall)."""

    def __init__(self, fs):
        self.fs = fs
        self.uuids = []

    def originate(self, dest, app="&park()", variables=""):
        a = str(uuidlib.uuid4())
        vars_ = "origination_uuid=%s%s" % (a, ("," + variables) if variables else "")
        reply = self.fs.api("originate {%s}%s %s" % (vars_, dest, app))
        assert reply == "+OK " + a, reply
        self.uuids.append(a)
        b = self.fs.api("uuid_getvar %s other_loopback_leg_uuid" % a)
        if b and not b.startswith("-ERR") and b != "_undef_":
            self.uuids.append(b)
        return a, b

    def exists(self, u):
        return self.fs.api("uuid_exists %s" % u) == "true"

    def hangup_all(self):
        for u in self.uuids:
            self.fs.api("uuid_kill %s" % u)


@pytest.fixture
def calls(fs):
    if "calls" not in _checked:
        _checked["calls"] = why_no_calls(fs)
    if _checked["calls"]:
        pytest.skip(_checked["calls"])
    c = Calls(fs)
    yield c
    c.hangup_all()


@pytest.fixture
def conf_file(fs):
    """The path of audio_stream.conf.xml in the switch's conf dir, for a test to write (skips when the
    switch has one already: not touching it). Removed afterwards, then `reloadxml` and `reload`."""
    conf_dir = fs.api("global_getvar conf_dir").strip()
    path = os.path.join(conf_dir, "autoload_configs", "audio_stream.conf.xml")
    if not os.access(os.path.dirname(path), os.W_OK):
        pytest.skip("cannot write %s" % path)
    if os.path.exists(path):
        pytest.skip("%s exists already: not touching it" % path)
    yield path
    if os.path.exists(path):
        os.unlink(path)
    fs.api("reloadxml")
    fs.api("python %s reload" % MODULE)
