"""The metadata is in setup.cfg. This file only declares the optional compiled accelerator:
pip builds it where a C compiler and the Python headers exist; where it cannot, the build goes on
without it (optional=True) and the package uses its pure-Python media path."""
from setuptools import Extension, setup

setup(ext_modules=[Extension("audio_stream._accel", ["audio_stream/_accel.c"], optional=True,
                             extra_compile_args=["-O2", "-fvisibility=hidden", "-Wno-unused-parameter"])])
