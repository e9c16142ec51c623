"""Run the example servers as a person would, in their own process, and talk to them."""
import os
import re
import subprocess
import sys
import threading
import time


class Spawned:
    """`python -m <module> --port 0 …` until stop(); its output lines are collected."""

    def __init__(self, module, *args, cwd=None):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, "-m", module, "--port", "0", *args], cwd=cwd, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines = []
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        line = self.wait_line(r"listening on ws://[^:]+:(\d+)/", timeout=20)
        assert line, "the server did not start: %r" % self.lines
        self.port = int(re.search(r":(\d+)/", line).group(1))
        self.url = "ws://127.0.0.1:%d/" % self.port

    def _read(self):
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()
        self.proc.stdout.close()

    def wait_line(self, pattern, timeout=10.0, start=0):
        """The first output line (from index `start`) matching `pattern`, or None."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for line in self.lines[start:]:
                    if re.search(pattern, line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None and not self.thread.is_alive():
                    return None
                self.cond.wait(min(left, 0.1))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(2)     # SIGINT: the server's own clean stop
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.thread.join(5)
        return self.proc.returncode


def run_cli(*args, cwd=None, env=None, timeout=60):
    """`python -m <args>`: (exit status, stdout, stderr)."""
    r = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=cwd,
                       env=dict(os.environ, **(env or {})), timeout=timeout)
    return r.returncode, r.stdout, r.stderr
