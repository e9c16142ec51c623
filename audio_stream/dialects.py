"""The wire dialects behind one interface. Pure: no sockets, no threads, no switch.

A stream speaks one dialect (STREAM_PROTOCOL): `audio_stream` (mod_audio_stream's, protocol.py)
or `twilio` (Twilio Media Streams, twilio.py). It holds one `Dialect` object per WebSocket
connection (a reconnection starts a new one: Twilio's streamSid and counters start again) and
never looks at which one it is. Every text is rendered when it is sent (outbox.Deferred), so a
dialect that numbers its messages numbers them in the order they leave, and nothing is rendered
before the connection's opening frames.

A third dialect is one module with a class that has the members of `DialectClass` and `Dialect`
below, plus its line in `REGISTRY`.
"""
from dataclasses import dataclass
from typing import Any, List, Optional, Protocol, Sequence, Union

Frame = Union[str, bytes]          # str: a text frame, bytes: a binary frame


@dataclass(frozen=True)
class UplinkFormat:
    """The audio a dialect needs from the stream: `rate`, `channels` interleaved (2: left = the
    caller, right = what the caller hears), in pieces of `chunk_ms` (a shorter last piece is fine).
    `encoding`: what goes on the wire (the handshake's X-Audio-Stream-Encoding). A dialect whose
    `binary_audio` is True sends each piece as it is, so the capture hands it the pieces already in
    `encoding` (L16: signed 16-bit little-endian PCM; PCMU/PCMA: G.711, one byte per sample); one
    that renders its own frames (Twilio) gets L16 and encodes itself."""
    rate: int
    channels: int
    chunk_ms: int
    encoding: str = "L16"


class Dialect(Protocol):
    """One connection's wire format. Builders return the frames to send; parse() and
    parse_binary() return protocol.py's message objects (StreamAudio, BinaryAudio, KillAudio,
    Mark, ClearMarks, PausePlayback, ResumePlayback, Passthrough, BadMessage)."""

    name: str
    binary_audio: bool   # media(chunk) is the chunk itself as one binary message (the direct path may
                         # frame it in C): True for mod_audio_stream's wire, False for JSON media
    binary_playback: Optional[str]   # the encoding of the server's binary frames, which play
                                     # (parse_binary: BinaryAudio), or None when they are not audio

    def uplink_format(self) -> UplinkFormat:
        """The layout of the audio handed to media()."""

    def opening(self) -> List[str]:
        """The first frames of a connection, before any audio (called once per connection)."""

    def media(self, pcm16: bytes) -> Sequence[Frame]:
        """The frames for one chunk of the call's audio (see UplinkFormat for its encoding)."""

    def skip(self, ms: int) -> None:
        """Audio that was not sent (pause): a dialect with a media clock moves it on."""

    def text(self, text: str) -> List[str]:
        """`send_text` and the stop text."""

    def dtmf(self, digit: str, duration_ms: Optional[int] = None) -> List[str]:
        """A digit the call received."""

    def mark_ack(self, name: str, event: str = "playout") -> List[str]:
        """The answer to the server's mark: "playout" (played) or "cleared"."""

    def error_reply(self, error: str, message: str) -> List[str]:
        """The answer to a message that cannot be used ([] if the dialect has none)."""

    def closing(self) -> List[str]:
        """The last frames before the close frame."""

    def parse(self, text: str) -> Any:
        """One text frame from the server → a message object."""

    def parse_binary(self, data: bytes) -> Any:
        """One binary frame from the server → a message object."""


class DialectClass(Protocol):
    """What the stream needs of a dialect before it has a connection."""

    name: str

    @staticmethod
    def refuse(mix: str, rate: int, settings: Any) -> Optional[str]:
        """Why a `start` with this mix, rate and settings cannot use the dialect (the -ERR
        text), or None."""

    @classmethod
    def for_stream(cls, call_uuid: str, metadata: Optional[str], mix: str, rate: int,
                   settings: Any) -> Dialect:
        """A new Dialect for one connection of a stream."""


# STREAM_PROTOCOL value -> (module, class): imported on first use
REGISTRY = {
    "audio_stream": ("protocol", "NativeDialect"),
    "twilio": ("twilio", "TwilioDialect"),
}
NAMES = tuple(REGISTRY)


def dialect_class(name) -> DialectClass:
    import importlib
    module, cls = REGISTRY[name]
    return getattr(importlib.import_module("." + module, __package__), cls)
