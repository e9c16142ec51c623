"""The optional compiled accelerator (audio_stream/_accel.c), if it was built here.

`native` is the extension module or None; `why_not` says why not. Everything it does has a pure
Python counterpart that stays the reference (and is what runs where no compiler was available
when the package was installed). AUDIO_STREAM_ACCEL=0 in the environment turns it off.
"""
import os

ENV = "AUDIO_STREAM_ACCEL"
OFF_VALUES = ("0", "false", "no", "off")



def not_built(error, package_dir):
    """Why `_accel` did not import, in words a person can act on. In a source checkout (its
    setup.py beside the package) the usual cause is not a missing compiler: `python -m
    audio_stream` run inside the checkout imports the checkout's package, not the copy that
    `pip install .` built the accelerator into."""
    root = os.path.dirname(os.path.abspath(package_dir))
    if os.path.isfile(os.path.join(root, "setup.py")) and os.path.isfile(os.path.join(package_dir, "_accel.c")):
        return ("the compiled accelerator is not built in %s, the checkout this runs from (pip "
                "install -e . builds it here; inside a checkout python -m audio_stream runs the "
                "checkout's package, not the copy pip install . put into the venv)" % package_dir)
    return "the compiled accelerator is not built (%s)" % error


def media_path():
    """One line: which media path new streams take, and why not the accelerated one."""
    return ("media path: accel (the compiled accelerator)" if native is not None
            else "media path: python (%s)" % why_not)


native = None
why_not = ""
if os.environ.get(ENV, "").strip().lower() in OFF_VALUES:
    why_not = "%s=%s" % (ENV, os.environ[ENV])
else:
    try:
        from . import _accel as native
    except ImportError as e:   # not built here (no compiler or Python headers at install time)
        why_not = not_built(e, os.path.dirname(os.path.abspath(__file__)))
