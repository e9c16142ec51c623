"""The wire protocol, both directions, and the event bodies. Pure: no sockets, no threads.

Downlink (server → us) text frames are JSON. `parse_text()` turns one into a message object:
StreamAudio, KillAudio, Mark, ClearMarks, PausePlayback, ResumePlayback, Passthrough (anything we
do not act on: fired as `mod_audio_stream::json` verbatim, as mod_audio_stream does) or
BadMessage (a message we would act on but cannot: an error event and a reply to the server).
Uplink builders return the exact text we send. Event bodies match mod_audio_stream's JSON.
"""
import base64
import binascii
from dataclasses import dataclass
from typing import Optional

import ujson

from .dialects import UplinkFormat

AUDIO_TYPES = ("raw", "wav", "pcmu", "pcma", "mp3", "ogg")

# mod_audio_stream::error codes (libwsc's numbering, kept for compatibility)
ERR_IO = 1
ERR_INVALID_HEADER = 2
ERR_SERVER_MASKED = 3
ERR_NOT_SUPPORTED = 4
ERR_PING_TIMEOUT = 5
ERR_CONNECT_FAILED = 6
ERR_TLS_INIT_FAILED = 7
ERR_SSL_HANDSHAKE_FAILED = 8
ERR_SSL_ERROR = 9
ERR_TIMEOUT = 10
ERR_PROTOCOL = 11


@dataclass(frozen=True)
class StreamAudio:
    audio_type: str
    sample_rate: Optional[int]
    payload: bytes
    data: dict  # the message's "data" object without "audioData" (for the play event)


@dataclass(frozen=True)
class BinaryAudio:
    payload: bytes   # the native dialect's binary frames: mono audio in the stream's encoding
    encoding: str = "L16"   # L16 at STREAM_SAMPLE_RATE (default the stream's rate); PCMU/PCMA at 8000


@dataclass(frozen=True)
class KillAudio:
    pass


@dataclass(frozen=True)
class Mark:
    name: str


@dataclass(frozen=True)
class ClearMarks:
    pass


@dataclass(frozen=True)
class PausePlayback:
    pass


@dataclass(frozen=True)
class ResumePlayback:
    pass


@dataclass(frozen=True)
class Passthrough:
    text: str


@dataclass(frozen=True)
class BadMessage:
    reason: str
    text: str


def dumps(obj):
    # cJSON (mod_audio_stream) neither escapes '/' nor non-ASCII: match it.
    return ujson.dumps(obj, ensure_ascii=False, escape_forward_slashes=False)


def _decode_b64(value):
    if not isinstance(value, str):
        raise ValueError("audioData is not a string (expected base64)")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("audioData is not valid base64") from None


def _stream_audio(data, text):
    if not isinstance(data, dict):
        return BadMessage("streamAudio without a data object", text)
    audio_type = data.get("audioDataType")
    if not isinstance(audio_type, str) or audio_type.lower() not in AUDIO_TYPES:
        return BadMessage("streamAudio: unsupported audioDataType %r (one of %s)"
                          % (audio_type, ", ".join(AUDIO_TYPES)), text)
    audio_type = audio_type.lower()
    rate = data.get("sampleRate")
    if audio_type == "raw":
        if isinstance(rate, bool) or not isinstance(rate, int) or not 8000 <= rate <= 192000:
            return BadMessage("streamAudio: raw audio needs an integer sampleRate from 8000 to "
                              "192000, got %r" % (rate,), text)
    elif audio_type in ("pcmu", "pcma"):
        rate = 8000
    else:
        rate = rate if isinstance(rate, int) and not isinstance(rate, bool) else None
    if "audioData" not in data:
        return BadMessage("streamAudio: missing audioData", text)
    try:
        payload = _decode_b64(data["audioData"])
    except ValueError as e:
        return BadMessage("streamAudio: %s" % e, text)
    rest = {k: v for k, v in data.items() if k != "audioData"}
    return StreamAudio(audio_type, rate, payload, rest)


def _mark_name(obj):
    if isinstance(obj, dict) and isinstance(obj.get("name"), str) and obj["name"]:
        return obj["name"]
    return None


def json_object(text):
    """The JSON object a text frame holds, or None (not JSON, or JSON but not an object)."""
    try:
        msg = ujson.loads(text)
    except (ValueError, TypeError, OverflowError):
        return None
    return msg if isinstance(msg, dict) else None


def _twilio_style(msg, text):
    """Compatibility rule (docs/protocol.md, "Playback control"): a mod_audio_stream server may
    also send Twilio's `{"event":"clear"}` and `{"event":"mark","mark":{"name":…}}`, so a bot that
    speaks both keeps working here. None when the message is neither."""
    event = msg.get("event")
    if event == "clear":
        return KillAudio()
    if event == "mark":
        name = _mark_name(msg.get("mark"))
        return Mark(name) if name is not None else BadMessage("mark without a name", text)
    return None


def parse_text(text):
    """Classify one text frame from the server (mod_audio_stream's dialect)."""
    msg = json_object(text)
    if msg is None:
        return Passthrough(text)
    kind = msg.get("type")
    if kind == "streamAudio":
        return _stream_audio(msg.get("data"), text)
    if kind in ("killAudio", "clear"):
        return KillAudio()
    if kind == "mark":
        name = _mark_name(msg.get("data"))
        if name is None:
            return BadMessage("mark without a name", text)
        return Mark(name)
    if kind == "clearMarks":
        return ClearMarks()
    if kind == "pausePlayback":
        return PausePlayback()
    if kind == "resumePlayback":
        return ResumePlayback()
    return _twilio_style(msg, text) or Passthrough(text)


# ---- uplink (what we send) -------------------------------------------------------------------

def mark_ack(name, event):
    """`event` is "playout" (the audio before the mark has been played) or "cleared"."""
    return dumps({"type": "mark", "data": {"name": name, "event": event}})


def error_reply(error, message):
    return dumps({"type": "error", "data": {"error": error, "message": message}})


# ---- what the audio is: headers of every WebSocket upgrade request ------------------------------

ENCODING_HEADER = "X-Audio-Stream-Encoding"
RATE_HEADER = "X-Audio-Stream-Rate"
CHANNELS_HEADER = "X-Audio-Stream-Channels"
AUDIO_HEADERS = (ENCODING_HEADER, RATE_HEADER, CHANNELS_HEADER)
ENCODINGS = ("L16", "PCMU", "PCMA")     # L16: signed 16-bit little-endian PCM; PCMU/PCMA: G.711
G711_RATE = 8000                        # PCMU/PCMA: always 8000 Hz


def audio_headers(fmt):
    """The headers that say what goes on the wire, from the dialect's dialects.UplinkFormat (the
    stream's STREAM_ENCODING, rate and channels; Twilio mode: μ-law at 8000 Hz, a channel per track)."""
    return {ENCODING_HEADER: fmt.encoding, RATE_HEADER: str(int(fmt.rate)), CHANNELS_HEADER: str(int(fmt.channels))}


def audio_format(headers):
    """(encoding, rate, channels) from a request's headers (any mapping with case-insensitive
    .get(), e.g. aiohttp's), or None when they are missing or cannot be used."""
    encoding = (headers.get(ENCODING_HEADER) or "").strip().upper()
    rate, channels = (headers.get(RATE_HEADER) or "").strip(), (headers.get(CHANNELS_HEADER) or "").strip()
    if encoding not in ENCODINGS or not rate.isdigit() or channels not in ("1", "2"):
        return None
    if not 8000 <= int(rate) <= 192000:
        return None
    return encoding, int(rate), int(channels)


# ---- event bodies (mod_audio_stream::<name>) ----------------------------------------------------

def connect_body():
    return dumps({"status": "connected"})


def disconnect_body(code, reason):
    return dumps({"status": "disconnected", "message": {"code": int(code), "reason": reason or ""}})


def error_body(code, error):
    return dumps({"status": "error", "message": {"code": int(code), "error": error}})


def dtmf_body(digit, duration_ms):
    return dumps({"digit": digit, "duration": int(duration_ms)})


def play_body(data, file):
    body = dict(data)
    body["file"] = file
    return dumps(body)


# ---- the native dialect (mod_audio_stream's wire format), beside twilio.TwilioDialect -----------

class NativeDialect:
    """mod_audio_stream's wire format (dialects.Dialect): the metadata as the first text, audio as
    binary frames at the stream's rate and layout in the stream's encoding (STREAM_ENCODING: L16,
    or G.711 μ-law/A-law at 8000 Hz, one byte per sample), texts verbatim; the server's binary
    frames are mono audio to play, in the same encoding."""

    name = "audio_stream"
    binary_audio = True      # media(chunk) is the chunk itself, one binary message

    def __init__(self, metadata_text=None, rate=8000, channels=1, chunk_ms=20, encoding="L16"):
        self.metadata = metadata_text
        self._format = UplinkFormat(rate, channels, chunk_ms, encoding)
        self.binary_playback = encoding      # parse_binary(): audio in the stream's encoding

    @staticmethod
    def refuse(mix, rate, settings):
        """G.711 is 8 kHz audio: a PCMU/PCMA stream at another rate is refused (not resampled
        behind the operator's back), and so is a STREAM_SAMPLE_RATE that is not 8000."""
        encoding = settings.encoding
        if encoding == "L16":
            return None
        if rate != G711_RATE:
            return "STREAM_ENCODING=%s sends 8 kHz G.711: use 8k, not %d" % (encoding, rate)
        if settings.sample_rate not in (None, G711_RATE):
            return ("STREAM_ENCODING=%s: the server's binary audio is G.711 at 8000 Hz, so STREAM_SAMPLE_RATE "
                    "must be 8000 or unset, not %d" % (encoding, settings.sample_rate))
        return None

    @classmethod
    def for_stream(cls, call_uuid, metadata, mix, rate, settings):
        return cls(metadata, rate, 2 if mix == "stereo" else 1, settings.buffer_ms, settings.encoding)

    def uplink_format(self):
        return self._format

    def opening(self):
        return [self.metadata] if self.metadata else []

    @staticmethod
    def media(pcm16):
        return (pcm16,)

    @staticmethod
    def skip(ms):
        pass

    @staticmethod
    def text(text):
        return [text]

    @staticmethod
    def dtmf(digit, duration_ms=None):
        data = {"digit": digit}
        if duration_ms is not None:
            data["duration"] = int(duration_ms)
        return [dumps({"type": "dtmf", "data": data})]

    @staticmethod
    def mark_ack(name, event="playout"):
        return [mark_ack(name, event)]

    @staticmethod
    def error_reply(error, message):
        return [error_reply(error, message)]

    @staticmethod
    def closing():
        return []

    @staticmethod
    def parse(text):
        return parse_text(text)

    def parse_binary(self, data):
        return BinaryAudio(data, self._format.encoding)
