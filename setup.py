"""The metadata is in setup.cfg. This file only declares the optional compiled accelerator:
pip builds it where a C compiler and the Python headers exist; where it cannot, the build goes on
without it (optional=True) and the package uses its pure-Python media path."""
import os

from setuptools import Extension, setup

# CI (and anyone who wants to be sure it is there): AUDIO_STREAM_ACCEL_REQUIRED=1 makes a failed build
# an error instead of a warning
REQUIRED = os.environ.get("AUDIO_STREAM_ACCEL_REQUIRED", "") not in ("", "0")

setup(ext_modules=[Extension("audio_stream._accel", ["audio_stream/_accel.c"], optional=not REQUIRED,
                             extra_compile_args=["-O2", "-fno-math-errno", "-fvisibility=hidden", "-Wno-unused-parameter"])])
