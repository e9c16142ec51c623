"""Real-switch tests: a FreeSWITCH 1.10 with mod_python3 and this package importable, reached over
its event socket (AUDIO_STREAM_ESL, default 127.0.0.1:8021, password ClueCon). They skip, saying
why, when no switch answers there. See docs/testing.md for building one."""
import os
import uuid as uuidlib

import pytest

from . import esl

HOST, _, PORT = os.environ.get("AUDIO_STREAM_ESL", "127.0.0.1:8021").partition(":")
PORT = int(PORT or 8021)
PASSWORD = os.environ.get("AUDIO_STREAM_ESL_PASSWORD", "ClueCon")
# the name mod_python3 imports the package under (a symlink in the script dir): `python <MODULE> ...`
MODULE = os.environ.get("AUDIO_STREAM_FS_MODULE", "audio_stream")
SUBCLASSES = ["mod_audio_stream::%s" % n for n in (
    "connect", "disconnect", "error", "json", "play", "mark", "playback_started", "playback_stopped",
    "reconnecting", "reconnected", "buffer_overrun", "buffer_recovered", "dtmf")]


def _why_not():
    if not esl.reachable(HOST, PORT, PASSWORD):
        return "no FreeSWITCH event socket at %s:%d (see docs/testing.md)" % (HOST, PORT)
    c = esl.Connection(HOST, PORT, PASSWORD)
    try:
        if c.api("module_exists mod_python3") != "true":
            return "FreeSWITCH at %s:%d has no mod_python3" % (HOST, PORT)
        reply = c.api("python %s" % MODULE)
        if not reply.startswith("-USAGE"):
            return "%s is not importable by mod_python3 there (python %s -> %r)" % (MODULE, MODULE, reply)
    finally:
        c.close()
    return None


_REASON = _why_not()


@pytest.fixture
def has_reload(fs):
    """Skip unless the module the switch loads has the `reload` command (DTMF and audio_stream.conf
    came with it): the switch may load another checkout than this one."""
    reply = fs.api("python %s reload" % MODULE)
    if not reply.startswith("+OK reloaded"):
        pytest.skip("python %s predates DTMF and audio_stream.conf (reload -> %r): set AUDIO_STREAM_FS_MODULE to "
                    "a symlink to this checkout in the script dir" % (MODULE, reply.strip()))


@pytest.fixture(scope="session")
def fs():
    if _REASON:
        pytest.skip(_REASON)
    c = esl.Connection(HOST, PORT, PASSWORD)
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
