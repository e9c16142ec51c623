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
    """The call's audio going out, read by the loop thread. attach() on the API thread with the
    session read-locked; the rest on the loop thread."""

    frames_read: int

    def attach(self, session: Any) -> Tuple[bool, Optional[str]]:
        """Start buffering the call's frames. (True, None) or (False, why)."""

    def poll(self, uuid: str) -> Optional[bytes]:
        """Every frame buffered since the last poll (L16 at the call's rate, in the stream's
        layout), b"" when none, None when the call's media is over."""

    def take_last(self, uuid: str) -> Optional[bytes]:
        """What is left, then off the call (stop, graceful-shutdown); None when already gone."""

    def forget(self) -> None:
        """Drop every reference to the call's media (idempotent)."""


class ControlMedia(Protocol):
    """The stream's presence on the call: sees the end of the call's media at once, and plays the
    server's audio into it. attach() on the API thread; detach()/wake() on the loop thread.
    `closed`, `playing`, `frames_*` are written by the switch side and only read by the stream."""

    closed: bool
    playing: bool
    frames_written: int
    frames_replaced: int

    def attach(self, session: Any) -> Tuple[bool, Optional[str]]: ...

    def detach(self, session: Any) -> None:
        """Off the call (MediaListener.media_closed follows). Safe after a hangup."""

    def wake(self, uuid: str) -> bool:
        """Audio arrived at an empty playback queue: play it. False when the call's media is over."""

    def cut(self) -> None:
        """The loop thread ended the current playback episode (clear, pause): the next frame
        that plays starts a new one (PlaybackListener.playback_started)."""


class MediaPorts(Protocol):
    """Makes a stream's two media ports (switch/media.py is one: its module fits)."""

    def CapturePort(self, core: Any, flags: int) -> CaptureMedia: ...

    def ControlPort(self, core: Any, call_rate: int, ptime_ms: int, queue: Any, capture: CaptureMedia,
                    listener: "MediaListener", player: "PlaybackListener",
                    notify: Callable[..., Any]) -> ControlMedia: ...


class Ticked(Protocol):
    """What the capture clock calls: once per stream per tick (loop thread)."""

    def poll(self) -> None: ...

    def log(self, level: str, message: str) -> None: ...


class MediaListener(Protocol):
    def media_closed(self, tail: bytes, cause: int = 0) -> None:
        """The control port is off the call: `tail` = the capture's unread frames at hangup,
        `cause` = the hangup cause (0 when the call is up)."""


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

    def link_connected(self) -> None: ...

    def link_reconnecting(self, attempt: int, delay_s: float, reason: str) -> None: ...

    def link_reconnected(self, attempt: int, dropped_ms: int) -> None: ...

    def link_lost(self, closed: bool, code: Optional[int], reason: str, error_code: int) -> None:
        """The connection is gone for good, not by our doing."""

    def outbox_drained(self) -> None:
        """A sending pass ended (the outbox is empty, or the socket is full)."""

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
