"""What the API can ask of a stream (loop thread). Each command is an input to the stream's
lifecycle (lifecycle.StreamMachine), which decides whether it is carried out now, waits for the
attach, or is refused; each returns None, or why it was not carried out (the -ERR text)."""
from . import lifecycle as L


class Controls:
    def __init__(self, stream):
        self._stream = stream

    def stop(self, text=None):
        """`stop [text]`: everything captured so far, then the text, then close 1000."""
        return self._stream._input(L.STOP, text)

    def graceful_shutdown(self, text=None):
        """Stop capturing; send what is buffered and the text; keep receiving (and playing) until
        the server closes or STREAM_GRACEFUL_TIMEOUT passes; then close 1000."""
        return self._stream._input(L.GRACEFUL_SHUTDOWN, text)

    def send_text(self, text):
        """`send_text`: a text message after the audio captured so far."""
        return self._stream._input(L.COMMAND, self._stream.send_text, text)

    def pause(self, paused):
        """`pause` / `resume`: the call's audio is not sent meanwhile."""
        return self._stream._input(L.COMMAND, self._stream.set_paused, paused)

    def playback_pause(self, paused):
        return self._stream._input(L.COMMAND, self._stream.player.pause, paused)

    def playback_clear(self):
        return self._stream._input(L.COMMAND, self._stream.player.clear)
