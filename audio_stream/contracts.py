"""The contracts between a stream and what it is wired to, as typing.Protocols (structural: any
object with these members fits, nothing inherits from them).

- `CaptureMedia`, `ControlMedia`, `MediaPorts`: the narrow boundary between a stream and its
  call's media (switch/media.py implements it with ctypes; another implementation, e.g. a
  compiled one, plugs in through `MediaPorts`). `Ticked` is what the capture clock calls.
- `MediaListener`, `PlaybackListener`, `DtmfListener`: what the switch side calls back, always on
  the loop thread (through `notify`, i.e. loop.call_soon_threadsafe).
- `LinkHost`, `PlayerHost`: what link.Link and playback.Player need from their stream.
- `Runtime`: the process-wide services a stream uses (service.py is one).
"""
from typing import Any, Callable, List, Optional, Protocol, Sequence, Tuple, Union

Frame = Union[str, bytes]


# ---- media (switch side) --------------------------------------------------------------------------

class CaptureMedia(Protocol):
    """The call's audio going out, as complete chunks of the stream's audio (its rate, layout,
    encoding and chunk size). attach()/remove() on the API thread with the session read-locked; the rest on the
    loop thread. `batch`: an object the capture clock reads for every such capture of a tick in one
    call (switch/accel.py), or None (then it calls the stream's poll())."""

    frames_read: int
    chunk_bytes: int
    paused: bool            # while True, what is read is dropped
    direct: bool            # see attach_socket()
    sent: Tuple[int, int]   # (messages, bytes) the capture sent itself (the direct path)
    batch: Any

    def attach(self, session: Any) -> Tuple[bool, Optional[str]]:
        """Start buffering the call's frames. (True, None) or (False, why)."""

    def remove(self, session: Any) -> None:
        """Off the call again (the attach of the control port failed)."""

    def poll(self, remove: bool = False) -> Optional[bytes]:
        """The complete chunks read since the last poll (b"" when none), None when the call's
        media is over; `remove`: read what is left, then off the call (stop, graceful-shutdown)."""

    def convert(self, result: Any) -> Optional[bytes]:
        """A result of the clock's batch read, as poll() returns it."""

    def feed(self, tail: Any, final: bool = True) -> bytes:
        """What the control port's CLOSE read out of the capture at hangup → complete chunks."""

    def flush(self) -> bytes:
        """What is still held (the resampler's delay, a partial chunk: the last chunk may be short)."""

    def forget(self) -> None:
        """Drop every reference to the call's media (idempotent)."""

    def attach_socket(self, fd: Optional[int]) -> bool:
        """The direct path: send complete chunks on this socket during the clock's read, as
        masked binary frames, while `direct` is True (the stream keeps it True only while nothing
        waits before the audio). False when this capture cannot."""

    def detach_socket(self) -> None: ...

    def stop_direct(self) -> None:
        """Something was queued before the next audio: it must wait for the link."""


class ControlMedia(Protocol):
    """The stream's presence on the call: sees the end of the call's media at once, and plays the
    server's audio into it. attach() on the API thread; detach()/wake() on the loop thread.
    `closed`, `frames_*` are written by the switch side and only read by the stream."""

    closed: bool
    frames_written: int
    frames_replaced: int

    def attach(self, session: Any) -> Tuple[bool, Optional[str]]: ...

    def detach(self, session: Any) -> None:
        """Off the call (MediaListener.media_closed follows). Safe after a hangup."""

    def wake(self, uuid: str) -> bool:
        """Audio arrived at an empty playback queue: play it. False when the call's media is over."""


class MediaPorts(Protocol):
    """A media path: makes a stream's media ports (switch/media.py's PythonPath, switch/accel.py's
    AccelPath; Backend.media_path() says which a new stream gets)."""

    name: str                                   # "python" or "accel" (status, metrics, the bench)
    ws_frames: Optional[Callable[[bytes, int], bytes]]   # masked binary frames, or None
    resampler: Callable[..., Any]               # audio.resampler() or its C twin

    def capture(self, uuid: str, mix: str, call_rate: int, ptime_ms: int, rate: int,
                chunk_ms: int, encoding: str = "L16") -> CaptureMedia:
        """`encoding`: the chunks' (L16, or PCMU/PCMA: encoded by the capture, 1 byte a sample)."""

    def queue(self, uuid: str, call_rate: int, ptime_ms: int, settings: Any) -> Any:
        """The playback queue (audio.PlaybackQueue's interface)."""

    def control(self, uuid: str, call_rate: int, ptime_ms: int, queue: Any, capture: CaptureMedia,
                listener: "MediaListener", player: "PlaybackListener", loop: Any) -> ControlMedia: ...

    def binary_sink(self, queue: Any, rate_in: int, rate_out: int, max_frame: int) -> Any:
        """Where the server's binary L16 frames may go without a Python message each (the
        accelerated path's _accel.BinarySink: connection.take_binary), or None."""

    def released_s(self) -> Any:
        """(cpu_s, wall_s): what the capture passes cost the loop thread with the GIL released
        (its own CPU; the wall time it waited, its workers' share included), or None (no such
        pass: the pure-Python path holds the GIL throughout)."""


class Ticked(Protocol):
    """What the capture clock calls (loop thread): poll() once per stream per tick (unless its
    capture is read in the clock's batch: then captured()), maintain() every few tenths of a s."""

    def poll(self) -> None: ...

    def captured(self, data: Optional[bytes]) -> None: ...

    def maintain(self, now: float) -> None: ...

    def log(self, level: str, message: str) -> None: ...


class MediaListener(Protocol):
    def media_closed(self, tail: Any, cause: int = 0) -> None:
        """The control port is off the call: `tail` = what CLOSE read out of the capture at hangup
        (for CaptureMedia.feed), `cause` = the hangup cause (0 when the call is up)."""


class PlaybackListener(Protocol):
    def playback_started(self, t: float) -> None: ...

    def playback_done(self) -> None: ...

    def marks_played(self, names: List[str]) -> None: ...


class DtmfListener(Protocol):
    def dtmf(self, digit: str, duration_ms: int) -> None: ...


# ---- the stream's parts ---------------------------------------------------------------------------

class LinkHost(Protocol):
    """What link.Link needs from its stream (loop thread)."""

    def opening_texts(self) -> List[str]:
        """Called once per new connection: its first frames."""

    def uplink_format(self) -> Any:
        """dialects.UplinkFormat: what the audio on the wire is (the handshake says it)."""

    def render_audio(self, chunk: bytes) -> Sequence[Frame]: ...

    def on_text(self, text: str) -> None: ...

    def on_binary(self, data: bytes) -> None: ...

    def binary_sink(self) -> Any:
        """Where binary frames may go without a message each (connection.take_binary), or None."""

    def binary_taken(self, frames: int, nbytes: int) -> None:
        """That sink took `frames` binary frames of `nbytes` bytes in all."""

    def link_connected(self) -> None: ...

    def link_reconnecting(self, attempt: int, delay_s: float, reason: str) -> None: ...

    def link_reconnected(self, attempt: int, dropped_ms: int) -> None: ...

    def link_lost(self, closed: bool, code: Optional[int], reason: str, error_code: int) -> None:
        """The connection is gone for good, not by our doing."""

    def outbox_drained(self) -> None:
        """A sending pass ended (the outbox is empty, or the socket is full)."""

    def connection_up(self, ws: Any) -> None:
        """A connection audio may go to without the outbox (the direct path: see Link.frame)."""

    def connection_down(self) -> None:
        """That connection may no longer be written to from outside the link."""

    def direct_ready(self) -> None:
        """Nothing waits in the outbox or the socket's buffer: the capture may send itself again."""

    def log(self, level: str, message: str) -> None: ...


class PlayerHost(Protocol):
    """What playback.Player needs from its stream (loop thread)."""

    uuid: str
    settings: Any
    rate: int
    be: Any

    def fire(self, name: str, body: str) -> None: ...

    def send_mark(self, name: str, event: str) -> None: ...

    def bad(self, reason: str, kind: str = "bad_message") -> None: ...

    def log(self, level: str, message: str) -> None: ...

    def wake_playback(self) -> None: ...


class Runtime(Protocol):
    """The process-wide services a stream uses (service.py)."""

    def loop(self) -> Any: ...

    def http(self) -> Any: ...

    def poll_add(self, stream: Ticked) -> None: ...

    def poll_remove(self, stream: Ticked) -> None: ...

    def retire(self, stream: Any) -> None:
        """Off the registry of live streams; tracked until finished()."""

    def finished(self, stream: Any) -> None: ...

    def loop_lag_ms(self) -> int: ...
