#!/usr/bin/env python3
"""Replaced by scripts/bench (the same simulator mode, plus a real switch with --esl, several
implementations per run and every figure of docs/performance.md). This alias maps the old options
onto it and runs it:

    python scripts/bench.py [--calls N] [--seconds S] [--no-deflate] [--no-playback]
 -> scripts/bench --mix stereo --calls N --window S [--deflate off] [--playback off]

(--latency-trials is ignored: playback latency now comes from playback_started, see --pb-rounds.)
Other arguments are passed through unchanged.
"""
import os
import sys


def translate(argv):
    out = ["--mix", "stereo"]          # what the old script measured
    it = iter(argv)
    for arg in it:
        name, eq, value = arg.partition("=")
        if name == "--seconds":
            out += ["--window", value if eq else next(it, "5")]
        elif name == "--latency-trials":
            if not eq:
                next(it, None)
        elif arg == "--no-deflate":
            out += ["--deflate", "off"]
        elif arg == "--no-playback":
            out += ["--playback", "off"]
        else:
            out.append(arg)
    return out


if __name__ == "__main__":
    bench = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench")
    os.execv(sys.executable, [sys.executable, bench] + translate(sys.argv[1:]))
