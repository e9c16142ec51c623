"""The compiled accelerator's pure pieces against their Python references: the polyphase resampler,
the masked-frame scanner, the WebSocket frames it writes; and how the package chooses its path.
(The media-bug parts run in every simulator test: the accelerated path is the default where it is
built, and `AUDIO_STREAM_ACCEL=0 pytest` runs the same tests on the pure-Python path.)"""
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from audio_stream import accelerator, audio, connection
from audio_stream.switch import accel

from .support import tone, ws_frame

native = accelerator.native
needs_native = pytest.mark.skipif(native is None, reason="the compiled accelerator is not built here: %s"
                                  % accelerator.why_not)


@needs_native
@pytest.mark.parametrize("rates", [(8000, 16000), (16000, 8000), (8000, 48000), (48000, 8000), (16000, 24000),
                                   (24000, 16000), (8000, 12000)])
@pytest.mark.parametrize("channels", [1, 2])
def test_c_resampler_matches_numpy(rates, channels):
    a, b = rates
    x = tone(440, a, 0.3)
    if channels == 2:
        x = np.stack([x, tone(1000, a, 0.3)], axis=1).reshape(-1)
    pcm = x.astype("<i2").tobytes()
    step = a // 50 * 2 * channels
    ref = audio.resampler(a, b, channels)
    fast = accel.Resampler(ref) if isinstance(ref, audio.PolyphaseResampler) else None
    assert fast is not None
    y1 = b"".join(ref.process(pcm[i:i + step]) for i in range(0, len(pcm), step)) + ref.flush()
    y2 = b"".join(fast.process(pcm[i:i + step]) for i in range(0, len(pcm), step)) + fast.flush()
    assert len(y1) == len(y2) == round(len(pcm) // (2 * channels) * b / a) * 2 * channels
    d = np.abs(np.frombuffer(y1, "<i2").astype(int) - np.frombuffer(y2, "<i2").astype(int))
    assert d.max() <= 1          # float sums in another order: at most one step of 16 bits


@needs_native
@pytest.mark.parametrize("rates", [(8000, 16000), (16000, 8000), (8000, 12000), (24000, 16000), (8000, 48000)])
def test_c_resampler_matches_numpy_fed_in_uneven_pieces(rates):
    """The C filter carries its branch and input position from one output to the next and from one
    call to the next: pieces of 1, 7, 333... samples give what numpy gives."""
    a, b = rates
    pcm = tone(700, a, 0.25).astype("<i2").tobytes()
    ref = audio.resampler(a, b, 1)
    fast = accel.Resampler(audio.resampler(a, b, 1))
    sizes = [1, 7, 333, 2, 160, 49, 1000]
    y1, y2, i, k = [], [], 0, 0
    while i < len(pcm) // 2:
        n = sizes[k % len(sizes)]
        piece = pcm[2 * i:2 * (i + n)]
        y1.append(ref.process(piece))
        y2.append(fast.process(piece))
        i, k = i + n, k + 1
    y1, y2 = b"".join(y1) + ref.flush(), b"".join(y2) + fast.flush()
    assert len(y1) == len(y2)
    d = np.abs(np.frombuffer(y1, "<i2").astype(int) - np.frombuffer(y2, "<i2").astype(int))
    assert d.max() <= 1


@pytest.mark.parametrize("impl", ["python", "c"])
@pytest.mark.parametrize("rates", [(16000, 8000), (8000, 16000), (48000, 8000), (16000, 24000), (24000, 8000)])
@pytest.mark.parametrize("channels", [1, 2])
def test_a_leading_resampler_gives_whole_frames_for_whole_frames(impl, rates, channels):
    """The playback side's resamplers start with the filter's lookahead as silence: every 20 ms in
    gives 20 ms out from the first message on (a queue of whole frames), the signal is the same one
    that much later, and flush() still ends at round(input x ratio)."""
    if impl == "c" and native is None:
        pytest.skip("the compiled accelerator is not built here: %s" % accelerator.why_not)
    a, b = rates
    make = audio.resampler if impl == "python" else accel.resampler
    x = tone(440, a, 0.3)
    if channels == 2:
        x = np.stack([x, tone(1000, a, 0.3)], axis=1).reshape(-1)
    pcm = x.astype("<i2").tobytes()
    step = a // 50 * 2 * channels
    led, plain = make(a, b, channels, lead=True), make(a, b, channels)
    assert led.lead > 0
    outs = [led.process(pcm[i:i + step]) for i in range(0, len(pcm), step)]
    assert [len(o) for o in outs] == [b // 50 * 2 * channels] * len(outs)
    y = np.frombuffer(b"".join(outs) + led.flush(), "<i2")
    ref = np.frombuffer(b"".join(plain.process(pcm[i:i + step]) for i in range(0, len(pcm), step)) + plain.flush(), "<i2")
    assert len(y) == len(ref) == round(len(pcm) // (2 * channels) * b / a) * channels
    k = led.lead * channels
    assert not y[:k].any() and np.array_equal(y[k:], ref[:len(ref) - k])


def _python_scanner():
    guard = connection.MaskGuard.__new__(connection.MaskGuard)
    guard.hdr, guard.skip = bytearray(), 0
    return connection.MaskGuard._scan.__get__(guard)


@pytest.mark.parametrize("impl", ["python", "c"])
@pytest.mark.parametrize("split", [1, 3, 7, 1000])
def test_mask_scanner_follows_frames_split_anywhere(impl, split):
    if impl == "c" and native is None:
        pytest.skip("the compiled accelerator is not built here")
    scan = native.MaskScanner().scan if impl == "c" else _python_scanner()
    stream = ws_frame(b"a" * 10) + ws_frame(b"b" * 300) + ws_frame(b"c" * 70000) + ws_frame(b"") + \
        ws_frame(b"x" * 5, masked=True)
    clean = len(stream) - len(ws_frame(b"x" * 5, masked=True))
    for i in range(0, clean, split):
        piece = stream[i:min(i + split, clean)]
        assert scan(piece, 1000) == (False, len(piece))    # four frames, none masked, any split
    masked, end = scan(stream[clean:clean + 2], 1000)
    assert masked and end == 2                              # the masked frame's header


@pytest.mark.parametrize("impl", ["python", "c"])
def test_mask_scanner_stops_after_the_limit_of_frames(impl):
    if impl == "c" and native is None:
        pytest.skip("the compiled accelerator is not built here")
    scan = native.MaskScanner().scan if impl == "c" else _python_scanner()
    pings = ws_frame(b"", opcode=9) * 10
    assert scan(pings, 4) == (False, 8)                     # 4 empty frames of 2 bytes
    assert scan(pings[8:], 100) == (False, 12)              # the scanner is at a frame boundary
    data = ws_frame(b"y" * 200) * 3
    assert scan(data, 2) == (False, 2 * len(ws_frame(b"y" * 200)))


@needs_native
@pytest.mark.parametrize("size,chunk", [(640, 640), (1280, 640), (1000, 640), (200, 200), (70000, 70000)])
def test_ws_frames_are_masked_binary_frames(size, chunk):
    data = np.random.default_rng(1).integers(0, 256, size, dtype=np.uint8).tobytes()
    out = native.ws_frames(data, chunk)
    got, keys, i = [], set(), 0
    while i < len(out):
        b0, b1 = out[i], out[i + 1]
        assert b0 == 0x82 and b1 & 0x80            # FIN, binary, masked
        n, i = b1 & 0x7F, i + 2
        if n == 126:
            n, i = struct.unpack("!H", out[i:i + 2])[0], i + 2
        elif n == 127:
            n, i = struct.unpack("!Q", out[i:i + 8])[0], i + 8
        key, i = out[i:i + 4], i + 4
        keys.add(key)
        got.append(bytes(c ^ key[j % 4] for j, c in enumerate(out[i:i + n])))
        i += n
    assert b"".join(got) == data
    assert [len(g) for g in got] == [min(chunk, size - k) for k in range(0, size, chunk)]
    assert len(keys) == len(got)                   # a fresh key per frame


def _which_path(env):
    code = ("from audio_stream import accelerator; print(accelerator.native is not None, "
            "accelerator.why_not or '-')")
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, **env), capture_output=True, text=True,
                         check=True)
    return out.stdout.split(" ", 1)


@needs_native
def test_the_environment_turns_the_accelerator_off():
    assert _which_path({"AUDIO_STREAM_ACCEL": "1"})[0] == "True"
    on, why = _which_path({"AUDIO_STREAM_ACCEL": "0"})
    assert on == "False" and "AUDIO_STREAM_ACCEL=0" in why


def test_without_the_extension_the_pure_path_is_chosen(tmp_path):
    """A copy of the package without the compiled file: it imports, says why, and streams go the
    pure-Python way."""
    import shutil
    src = os.path.dirname(accelerator.__file__)
    dst = tmp_path / "audio_stream"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("_accel*.so", "_accel*.pyd", "__pycache__"))
    code = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]; "
            "import audio_stream.accelerator as a, audio_stream.switch.accel as s; "
            "print(a.native is None, 'not built' in a.why_not, s._accel is None)")
    env = {k: v for k, v in os.environ.items() if k != accelerator.ENV}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env=dict(env, PYTHONPATH=str(tmp_path)))
    assert out.stdout.split() == ["True", "True", "True"], out.stderr


def test_a_checkout_without_the_extension_says_it_shadows_the_installed_copy(tmp_path):
    """The README's first line runs `pip install .` (the accelerator goes into the venv's copy)
    and then `python -m audio_stream demo` inside the checkout, which imports the checkout's
    package: `version` and the demo must say that, not that nothing was built."""
    import shutil
    src = os.path.dirname(accelerator.__file__)
    shutil.copytree(src, tmp_path / "audio_stream", ignore=shutil.ignore_patterns("_accel*.so", "__pycache__"))
    (tmp_path / "setup.py").write_text("from setuptools import setup\nsetup()\n")
    env = {k: v for k, v in os.environ.items() if k not in (accelerator.ENV, "PYTHONPATH")}
    out = subprocess.run([sys.executable, "-c", "import sys; sys.meta_path[:] = [f for f in sys.meta_path "
                          "if 'editable' not in repr(f).lower()]; import runpy; sys.argv = ['x', 'version']; "
                          "runpy.run_module('audio_stream', run_name='__main__')"],
                         cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    line = out.stdout.splitlines()[1]
    assert line.startswith("media path: python (the compiled accelerator is not built in %s, the checkout"
                           % (tmp_path / "audio_stream")), line
    assert "pip install -e . builds it here" in line and "not the copy pip install . put into the venv" in line


def test_outside_a_checkout_the_reason_is_the_import_error(tmp_path):
    (tmp_path / "pkg").mkdir()
    why = accelerator.not_built(ImportError("no _accel"), str(tmp_path / "pkg"))
    assert why == "the compiled accelerator is not built (no _accel)"
