"""The example servers, run as a person would (`python -m audio_stream.examples.<name>`), with a
WebSocket client playing the part of audio_stream."""
import asyncio
import base64
import json
import socket
import wave

import aiohttp
import numpy as np
import pytest

from audio_stream import audio
from audio_stream.examples.echo_bot import Echo

from .servers import Spawned, run_cli
from .support import dominant_hz, interrupted, tone


def frames(pcm, rate, channels=1, ms=20):
    n = rate * ms // 1000 * channels
    return [pcm[i:i + n].tobytes() for i in range(0, len(pcm), n)]


@pytest.fixture
def spawn():
    started = []

    def start(module, *args, **kw):
        s = Spawned(module, *args, **kw)
        started.append(s)
        return s
    yield start
    for s in started:
        status = s.stop()
        assert status == 0 or interrupted.is_set(), s.lines


# ---- the recorder ----------------------------------------------------------------------------

async def _record(url, metadata, pcm, rate, channels, greet_replies=0, headers=None):
    replies = []
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url, headers=headers) as ws:
            if metadata is not None:
                await ws.send_str(metadata)
            for chunk in frames(pcm, rate, channels):
                await ws.send_bytes(chunk)
            while len(replies) < greet_replies:
                replies.append(json.loads((await ws.receive(timeout=5)).data))
    return replies


def audio_headers(encoding, rate, channels):
    """What audio_stream sends on the upgrade request (protocol.audio_headers)."""
    return {"X-Audio-Stream-Encoding": encoding, "X-Audio-Stream-Rate": str(rate), "X-Audio-Stream-Channels": str(channels)}


def _wavs(directory):
    return sorted(p for p in directory.iterdir() if p.suffix == ".wav")


def test_recorder_writes_one_wav_per_stream_and_keeps_stereo(spawn, tmp_path):
    server = spawn("audio_stream.examples.record_server", "--dir", str(tmp_path / "rec"), "--greet")
    left, right = tone(440, 16000, 1.0), tone(1000, 16000, 1.0)
    stereo = np.column_stack([left, right]).reshape(-1)
    mono = tone(300, 8000, 0.5)

    async def both():
        return await asyncio.gather(
            _record(server.url, '{"rate":16000,"channels":2}', stereo, 16000, 2, greet_replies=2),
            _record(server.url, "not json", mono, 8000, 1, greet_replies=2, headers=audio_headers("L16", 8000, 1)))
    (greet_a, _), _ = asyncio.run(both())
    assert greet_a["type"] == "streamAudio" and greet_a["data"]["sampleRate"] == 8000
    assert server.wait_line(r"wrote .*call-.*\.wav \(1\.00 s, 16000 Hz, 2 channels\)")
    assert server.wait_line(r"wrote .*call-.*\.wav \(0\.50 s, 8000 Hz, 1 channel\)")
    assert server.wait_line(r"connection from .*: L16 8000 Hz, 1 channel \(the X-Audio-Stream-\* headers\)")
    files = _wavs(tmp_path / "rec")
    assert len(files) == 2
    by_channels = {}
    for path in files:
        with wave.open(str(path)) as w:
            by_channels[w.getnchannels()] = (w.getframerate(), w.readframes(w.getnframes()))
    rate, data = by_channels[2]
    got = np.frombuffer(data, dtype="<i2").reshape(-1, 2)
    assert rate == 16000 and len(got) == 16000
    assert abs(dominant_hz(got[:, 0], 16000) - 440) < 5 and abs(dominant_hz(got[:, 1], 16000) - 1000) < 5
    assert by_channels[1][0] == 8000


def test_the_recorder_trusts_the_headers_and_never_guesses(spawn, tmp_path):
    server = spawn("audio_stream.examples.record_server", "--dir", str(tmp_path))
    mono16k = tone(440, 16000, 0.5)
    # the headers win over metadata that says otherwise
    asyncio.run(_record(server.url, '{"rate":8000,"channels":2}', mono16k, 16000, 1,
                        headers=audio_headers("L16", 16000, 1)))
    assert server.wait_line(r"wrote .*\.wav \(0\.50 s, 16000 Hz, 1 channel\)")
    # nothing says what the audio is: no WAV, and the reason
    asyncio.run(_record(server.url, '{"call":"x"}', mono16k, 16000, 1))
    assert server.wait_line(r"not recording this stream: its format is unknown \(no X-Audio-Stream-Encoding/-Rate/"
                            r"-Channels headers, no \"rate\" and \"channels\" in the start metadata, and no --rate "
                            r"and --channels\)")
    assert server.wait_line(r"16000 bytes of audio not written")
    assert len(_wavs(tmp_path)) == 1


@pytest.mark.parametrize("encoding", ["PCMU", "PCMA"])
@pytest.mark.parametrize("channels", [1, 2])
def test_the_recorder_decodes_g711_into_the_wav(spawn, tmp_path, encoding, channels):
    """STREAM_ENCODING=PCMU/PCMA: one byte a sample on the wire, 16-bit PCM in the WAV."""
    server = spawn("audio_stream.examples.record_server", "--dir", str(tmp_path))
    left, right = tone(440, 8000, 0.5), tone(1000, 8000, 0.5)
    pcm = np.column_stack([left, right]).reshape(-1) if channels == 2 else left
    g711 = np.frombuffer(audio.ENCODERS[encoding](pcm.tobytes()), dtype=np.uint8)
    asyncio.run(_record(server.url, None, g711, 8000, channels, headers=audio_headers(encoding, 8000, channels)))
    assert server.wait_line(r"wrote .*\.wav \(0\.50 s, 8000 Hz, %d channels?, from %s\)" % (channels, encoding))
    (path,) = _wavs(tmp_path)
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (channels, 2, 8000)
        got = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, channels)
    assert len(got) == 4000
    table = audio.ULAW if encoding == "PCMU" else audio.ALAW
    assert np.array_equal(got.reshape(-1), table[g711])           # decoded sample by sample
    assert abs(dominant_hz(got[:, 0], 8000) - 440) < 5
    if channels == 2:
        assert abs(dominant_hz(got[:, 1], 8000) - 1000) < 5


def test_the_recorder_takes_the_options_for_a_client_that_says_nothing(spawn, tmp_path):
    server = spawn("audio_stream.examples.record_server", "--dir", str(tmp_path), "--rate", "16k", "--channels", "1")
    asyncio.run(_record(server.url, None, tone(440, 16000, 0.25), 16000, 1))
    assert server.wait_line(r"wrote .*\.wav \(0\.25 s, 16000 Hz, 1 channel\)")


def test_recorder_help_says_every_default():
    code, out, err = run_cli("audio_stream.examples.record_server", "--help")
    assert code == 0, err
    out = " ".join(out.split())
    for option in ("--host", "--port", "--dir", "--rate", "--channels", "--greet"):
        assert option in out
    assert "(default: 8080)" in out and "(default: 127.0.0.1)" in out
    assert "never overwritten" in out      # the whole description, not its first line
    assert "X-Audio-Stream-Rate" in out and "(default: 8000)" not in out      # no guessed rate


def test_recorder_on_a_port_in_use_says_so_in_one_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code, out, err = run_cli("audio_stream.examples.record_server", "--port", str(port), "--dir", str(tmp_path))
    assert code == 1
    assert err.count("\n") == 1 and "address already in use" in err.lower() and str(port) in err


@pytest.mark.parametrize("args, says", [
    (["--port", "70000"], "--port: must be from 0 to 65535"),
    (["--rate", "99k"], "--rate: invalid sample rate '99k'"),
    (["--dir", "/proc/nope"], "cannot create the directory /proc/nope"),
    (["--channels", "3"], "--channels: invalid choice"),
    (["--host", "no-such-host.invalid"], "cannot listen on no-such-host.invalid:"),
])
def test_recorder_rejects_bad_options_in_one_line(args, says):
    code, out, err = run_cli("audio_stream.examples.record_server", *args)
    assert code != 0 and says in err and err.count("\n") == 1, err
    assert "Traceback" not in err and "-ERR" not in err


# ---- the echo bot: its decisions -------------------------------------------------------------

def _silence(rate, seconds):
    return np.zeros(int(rate * seconds), dtype=np.int16)


def test_echo_plays_back_an_utterance_after_the_pause():
    echo = Echo(8000, pause=0.5)
    said = tone(440, 8000, 0.6)
    assert echo.feed(_silence(8000, 0.3)) == []
    assert echo.feed(said) == []
    actions = echo.feed(_silence(8000, 0.6))
    assert [a[0] for a in actions] == ["play"]
    played = actions[0][1]
    # the utterance, a little lead-in and 100 ms of the pause: not the whole silence around it
    assert 0.6 <= len(played) / 8000 <= 0.6 + 0.2 + 0.1 + 0.02
    assert abs(dominant_hz(played, 8000) - 440) < 10
    assert echo.playing


def test_echo_ignores_clicks_and_barges_in_only_while_playing():
    echo = Echo(8000, pause=0.3, min_speech=0.2, barge_in=0.2)
    assert echo.feed(np.concatenate([tone(440, 8000, 0.06), _silence(8000, 0.5)])) == []   # a click
    echo.feed(tone(440, 8000, 0.5))
    assert [a[0] for a in echo.feed(_silence(8000, 0.4))] == ["play"]
    assert echo.feed(tone(440, 8000, 0.1)) == []              # shorter than --barge-in
    assert [a[0] for a in echo.feed(tone(440, 8000, 0.2))] == ["barge_in"]
    assert not echo.playing
    # what the caller said over the playback is the next utterance
    assert [a[0] for a in echo.feed(_silence(8000, 0.4))] == ["play"]
    echo.acknowledged()
    assert echo.feed(tone(440, 8000, 0.5)) == []              # not playing: no barge-in


def test_echo_cuts_a_long_utterance():
    echo = Echo(8000, max_utterance=1.0)
    actions = echo.feed(tone(440, 8000, 2.5))
    # a caller who never pauses: played back each second, and talking over each playback
    assert [a[0] for a in actions] == ["play", "barge_in", "play", "barge_in"]
    assert all(len(a[1]) <= 8000 * 1.0 for a in actions if a[0] == "play")


# ---- the echo bot, spawned -------------------------------------------------------------------

async def _next_json(ws):
    msg = await ws.receive(timeout=5)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    return json.loads(msg.data)


def test_echo_bot_echoes_marks_and_barges_in(spawn):
    bot = spawn("audio_stream.examples.echo_bot", "--pause", "0.4", "--barge-in", "0.2")
    rate = 16000

    async def send(ws, caller):
        heard = tone(1000, rate, len(caller) / rate)     # the right channel: never taken for the caller
        for chunk in frames(np.column_stack([caller, heard]).reshape(-1), rate, 2):
            await ws.send_bytes(chunk)

    async def call():
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(bot.url, headers=audio_headers("L16", rate, 2)) as ws:
                await ws.send_str('{"call":"echo"}')
                await send(ws, np.concatenate([tone(500, rate, 0.6), _silence(rate, 0.6)]))
                first = await _next_json(ws), await _next_json(ws)
                await ws.send_str(json.dumps({"type": "mark", "data": {"name": "echo-1", "event": "playout"}}))
                # a second utterance, played back; the caller talks over it
                await send(ws, np.concatenate([tone(700, rate, 0.5), _silence(rate, 0.5)]))
                second = await _next_json(ws), await _next_json(ws)
                await send(ws, tone(700, rate, 0.3))
                kill = await _next_json(ws)
                await ws.send_str(json.dumps({"type": "mark", "data": {"name": "echo-2", "event": "cleared"}}))
                return first, second, kill

    (play, mark), (play2, mark2), kill = asyncio.run(call())
    assert play["type"] == "streamAudio" and play["data"]["sampleRate"] == rate
    pcm = np.frombuffer(base64.b64decode(play["data"]["audioData"]), dtype="<i2")
    assert abs(dominant_hz(pcm, rate) - 500) < 10 and 0.6 <= len(pcm) / rate < 1.0
    assert mark == {"type": "mark", "data": {"name": "echo-1"}}
    assert play2["type"] == "streamAudio" and mark2["data"]["name"] == "echo-2"
    assert kill == {"type": "killAudio"}
    assert bot.wait_line(r"mark echo-1 playout \(its 0\.\d\d s played\)")
    assert bot.wait_line(r"barge-in: .*echo-2, sent killAudio")
    assert bot.wait_line(r"mark echo-2 cleared \(its 0\.\d\d s cut short or never played\)")


@pytest.mark.parametrize("encoding", ["PCMU", "PCMA"])
def test_echo_bot_answers_a_g711_stream_in_g711(spawn, encoding):
    bot = spawn("audio_stream.examples.echo_bot", "--pause", "0.4")
    said = np.concatenate([tone(500, 8000, 0.6), _silence(8000, 0.6)])
    g711 = np.frombuffer(audio.ENCODERS[encoding](said.tobytes()), dtype=np.uint8)

    async def call():
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(bot.url, headers=audio_headers(encoding, 8000, 1)) as ws:
                await ws.send_str('{"call":"echo"}')
                for chunk in frames(g711, 8000):
                    await ws.send_bytes(chunk)
                return await _next_json(ws)

    play = asyncio.run(call())
    assert play["type"] == "streamAudio" and play["data"]["audioDataType"] == encoding.lower()
    pcm, rate = audio.decode(encoding.lower(), base64.b64decode(play["data"]["audioData"]), None)
    pcm = np.frombuffer(pcm, dtype="<i2")
    assert rate == 8000 and abs(dominant_hz(pcm, 8000) - 500) < 10 and 0.6 <= len(pcm) / 8000 < 1.0


def test_echo_bot_help():
    code, out, err = run_cli("audio_stream.examples.echo_bot", "--help")
    out = " ".join(out.split())
    assert code == 0 and "--barge-in" in out and "(default: 0.7)" in out and "killAudio" in out


def test_echo_bot_does_not_guess_a_format(spawn):
    bot = spawn("audio_stream.examples.echo_bot")

    async def call():
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(bot.url) as ws:
                await ws.send_str('{"call":"x"}')
                for chunk in frames(tone(500, 8000, 0.3), 8000):
                    await ws.send_bytes(chunk)
    asyncio.run(call())
    assert bot.wait_line(r"not echoing this stream: its format is unknown \(no X-Audio-Stream-")


def test_an_unknown_host_says_so_in_one_line():
    code, out, err = run_cli("audio_stream.examples.echo_bot", "--host", "no-such-host.invalid", "--port", "0")
    assert code == 1 and err.count("\n") == 1 and "Unknown error" not in err, err
    assert "cannot listen on no-such-host.invalid:0: " in err and "--host must be an address or a name" in err
