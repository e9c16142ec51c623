"""What waits to be sent to the server, in order, bounded in bytes. Pure: no I/O, no threads.

Audio chunks (bytes) and text messages (str) keep their relative order. When the server does not
keep up, or while there is no connection, audio beyond `max_audio_bytes` is dropped oldest first
(texts never are); a drop starts an *overrun episode*, which ends when everything queued has been
sent. Texts beyond `max_text_bytes` are refused (the caller says so): a server that reads nothing
must not grow the switch's memory.
"""
from collections import deque


class Deferred:
    """A text message rendered only when it is sent (so a dialect that numbers its messages
    numbers them in the order they leave). `render()` returns the list of texts to send."""

    __slots__ = ("render", "size")

    def __init__(self, render, size):
        self.render = render
        self.size = size

    def __len__(self):
        return self.size


class Outbox:
    def __init__(self, max_audio_bytes, max_text_bytes, bytes_per_ms):
        self.max_audio_bytes = max_audio_bytes
        self.max_text_bytes = max_text_bytes
        self.bytes_per_ms = bytes_per_ms
        self._q = deque()
        self.audio_bytes = 0
        self.text_bytes = 0
        self.dropped_bytes = 0          # audio dropped over the stream's life
        self.overrun = False            # inside an overrun episode
        self.episode_dropped = 0        # audio dropped in the current/last episode
        self._events = []               # ("overrun", episode_ms, total_ms) / ("recovered", ms, total_ms)
        self.on_put = None              # called before anything is queued (the direct path must stop)

    def __len__(self):
        return len(self._q)

    def __bool__(self):
        return bool(self._q)

    def ms(self, nbytes):
        return nbytes // self.bytes_per_ms if self.bytes_per_ms else 0

    @property
    def dropped_ms(self):
        return self.ms(self.dropped_bytes)

    @property
    def queued_ms(self):
        return self.ms(self.audio_bytes)

    def put_audio(self, chunk):
        if self.on_put is not None:
            self.on_put()
        self._q.append(chunk)
        self.audio_bytes += len(chunk)
        while self.audio_bytes > self.max_audio_bytes:
            self._drop_oldest_audio()

    def put_deferred(self, render, size=256):
        """Queue a text rendered when it is sent (see Deferred); bounded like put_text."""
        return self.put_text(Deferred(render, size))

    def put_text(self, text):
        """Queue a text message; False (not queued) when texts already hold `max_text_bytes`."""
        size = len(text)
        if self.text_bytes + size > self.max_text_bytes:
            return False
        if self.on_put is not None:
            self.on_put()
        self._q.append(text)
        self.text_bytes += size
        return True

    def put_text_front(self, text):
        """Queue a text before everything else (the metadata of a new connection). Never refused:
        the host sends one per connection."""
        if self.on_put is not None:
            self.on_put()
        self._q.appendleft(text)
        self.text_bytes += len(text)

    def _drop_oldest_audio(self):
        q = self._q
        for i, item in enumerate(q):
            if isinstance(item, bytes):
                del q[i]
                n = len(item)
                self.audio_bytes -= n
                self.dropped_bytes += n
                self.episode_dropped += n
                if not self.overrun:
                    self.overrun = True
                    self._events.append(("overrun", self.ms(self.episode_dropped), self.dropped_ms))
                return
        raise AssertionError("audio_bytes counts audio that is not queued")

    def lost(self, nbytes):
        """Audio that was sent but never reached the server (the connection died under it)."""
        self.dropped_bytes += nbytes

    def pop(self):
        item = self._q.popleft()
        if isinstance(item, bytes):
            self.audio_bytes -= len(item)
        else:
            self.text_bytes -= len(item)
        if not self._q and self.overrun:
            self.overrun = False
            self._events.append(("recovered", self.ms(self.episode_dropped), self.dropped_ms))
            self.episode_dropped = 0
        return item

    def take_events(self):
        """Overrun episode changes since the last call, oldest first."""
        ev, self._events = self._events, []
        return ev

    def clear(self):
        self._q.clear()
        self.audio_bytes = self.text_bytes = 0
