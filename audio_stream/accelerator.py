"""The optional compiled accelerator (audio_stream/_accel.c), if it was built here.

`native` is the extension module or None; `why_not` says why not. Everything it does has a pure
Python counterpart that stays the reference (and is what runs where no compiler was available
when the package was installed). AUDIO_STREAM_ACCEL=0 in the environment turns it off.
"""
import os

ENV = "AUDIO_STREAM_ACCEL"
OFF_VALUES = ("0", "false", "no", "off")

native = None
why_not = ""
if os.environ.get(ENV, "").strip().lower() in OFF_VALUES:
    why_not = "%s=%s" % (ENV, os.environ[ENV])
else:
    try:
        from . import _accel as native
    except ImportError as e:   # not built here (no compiler or Python headers at install time)
        why_not = "the compiled accelerator is not built (%s)" % e
