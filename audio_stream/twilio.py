"""The Twilio Media Streams dialect of the wire protocol. Pure: no sockets, no threads, no switch.

With STREAM_PROTOCOL=twilio a stream speaks Twilio's bidirectional Media Streams protocol instead
of mod_audio_stream's, so a voice bot written for Twilio (`<Connect><Stream>`) works unchanged
against FreeSWITCH. The stream holds one TwilioDialect per WebSocket connection and asks it for
the text frames to send and what a frame from the server means; everything Twilio-specific is
here. docs/twilio.md has every message, the sources and the decisions the docs leave open.

Uplink (what we send, all JSON text frames):
    opening()         connected, start               right after the WebSocket opens
    media(pcm16)      media (one per 20 ms)          the call's audio, μ-law 8 kHz
    dtmf(digit)       dtmf                           a digit the caller pressed
    mark_ack(name)    mark                           the audio before the server's mark played
                                                     (or was cleared)
    closing()         stop                           before the close frame
Downlink (what the server sends): parse(text) → the message objects of protocol.py —
    media → StreamAudio("pcmu", 8000, …), mark → Mark, clear → KillAudio,
    anything else → Passthrough (the mod_audio_stream::json event), unusable → BadMessage.

Counters follow Twilio's documentation: one `sequenceNumber` across every message we send after
`connected` (start is "1"); `media.chunk` counts the media messages of each track from "1";
`media.timestamp` is the position of the chunk's first sample in ms from the start of the stream.
Numbers that Twilio sends as strings are strings here too.
"""
import base64
import binascii
import uuid
import numpy as np
import ujson

from .audio import ULAW
from .dialects import UplinkFormat
from .protocol import BadMessage, KillAudio, Mark, Passthrough, StreamAudio, dumps, json_object

RATE = 8000                       # Twilio: always audio/x-mulaw, 8000 Hz, 1 channel
CHUNK_MS = 20                     # what Twilio sends: 160 bytes of μ-law per media message
CHUNK_SAMPLES = RATE * CHUNK_MS // 1000
ENCODING = "audio/x-mulaw"
PROTOCOL = "Call"                 # the `connected` message's protocol and version
VERSION = "1.0.0"
DEFAULT_ACCOUNT_SID = "AC" + "0" * 32
TRACKS = ("inbound", "outbound")  # media.track values; inbound = the caller
DTMF_TRACK = "inbound_track"      # dtmf.track: "Value is always inbound_track"
DTMF_DIGITS = frozenset("0123456789*#ABCD")
METADATA_PARAMETER = "metadata"   # customParameters key for metadata that is not a JSON object


# ---- G.711 μ-law --------------------------------------------------------------------------------

def _ulaw_encode_table():
    """μ-law code for every int16 value, indexed by the value's uint16 bit pattern.

    The same arithmetic as FreeSWITCH's own PCMU encoder (linear_to_ulaw in g711.h): bias 0x84,
    negative values as |x| - 1, codes past the top segment clipped to the largest magnitude.
    """
    x = np.arange(-32768, 32768, dtype=np.int32)
    neg = x < 0
    linear = np.where(neg, 0x84 - x - 1, 0x84 + x)
    _, top = np.frexp((linear | 0xFF).astype(np.float64))      # top = bit length
    seg = top.astype(np.int32) - 8
    code = np.where(seg >= 8, 0x7F, (np.minimum(seg, 7) << 4) | ((linear >> (np.minimum(seg, 7) + 3)) & 0x0F))
    code = code ^ np.where(neg, 0x7F, 0xFF)
    table = np.empty(65536, dtype=np.uint8)
    table[x & 0xFFFF] = code
    return table


ULAW_ENCODE = _ulaw_encode_table()


def ulaw_encode(pcm16):
    """int16 little-endian bytes → μ-law bytes (one per sample)."""
    return ULAW_ENCODE[np.frombuffer(pcm16, dtype="<u2")].tobytes()


def ulaw_decode(data):
    """μ-law bytes → int16 little-endian bytes (audio.ULAW, the table the playback path uses)."""
    return ULAW[np.frombuffer(data, dtype=np.uint8)].tobytes()


# ---- the start metadata → customParameters ------------------------------------------------------

def custom_parameters(metadata_text):
    """The `start` command's metadata as Twilio's customParameters (a flat object of strings).

    - empty or missing: {}
    - a JSON object: its members in order; strings as they are, every other value (number,
      true/false, null, object, array) as its compact JSON text, because a TwiML <Parameter>
      value is always a string ({"n": 7, "vip": true} → {"n": "7", "vip": "true"})
    - anything else (not JSON, or JSON that is not an object): {"metadata": <the text verbatim>},
      so nothing the operator passed is lost
    """
    if metadata_text is None or not metadata_text.strip():
        return {}
    try:
        obj = ujson.loads(metadata_text)
    except (ValueError, TypeError, OverflowError):
        obj = None
    if not isinstance(obj, dict):
        return {METADATA_PARAMETER: metadata_text}
    return {str(k): v if isinstance(v, str) else dumps(v) for k, v in obj.items()}


def new_sid(prefix):
    """A Twilio-shaped SID: two letters and 32 lowercase hex digits."""
    return prefix + uuid.uuid4().hex


# ---- the dialect --------------------------------------------------------------------------------

class TwilioDialect:
    """One WebSocket connection's Twilio Media Streams state: SIDs, counters, the media clock.

    call_uuid      the FreeSWITCH call's uuid; sent as callSid
    metadata_text  the rest of the `start` line → customParameters (see custom_parameters())
    account_sid    sent as accountSid; default AC000…0 (a bot that checks it needs the real one)
    stream_sid     default: a new "MZ…" SID per connection (a reconnect is a new Twilio stream)
    tracks         ("inbound",) — the caller, as Twilio's bidirectional streams; or
                   ("inbound", "outbound") — both directions, as Twilio's both_tracks: the
                   uplink is then stereo (left = inbound, right = outbound)
    check_stream_sid  the server's media/mark/clear must carry this stream's streamSid
    """

    binary_audio = False     # every chunk becomes JSON media frames
    binary_playback = None   # a binary frame is refused (parse_binary)

    name = "twilio"

    def __init__(self, call_uuid, metadata_text=None, account_sid=None, *,
                 stream_sid=None, tracks=("inbound",), check_stream_sid=True):
        if not isinstance(call_uuid, str) or not call_uuid:
            raise ValueError("call_uuid must be a non-empty string")
        if account_sid is not None and (not isinstance(account_sid, str) or not account_sid):
            raise ValueError("account_sid must be a non-empty string")
        tracks = tuple(tracks)
        if tracks not in (("inbound",), ("inbound", "outbound")):
            raise ValueError("tracks must be ('inbound',) or ('inbound', 'outbound'), got %r" % (tracks,))
        self.call_sid = call_uuid
        self.account_sid = account_sid or DEFAULT_ACCOUNT_SID
        self.stream_sid = stream_sid or new_sid("MZ")
        self.tracks = tracks
        self.custom_parameters = custom_parameters(metadata_text)
        self.check_stream_sid = check_stream_sid
        self.state = "new"                        # new → open → closed
        self.sequence_number = 0                  # of the last message sent (start is 1)
        self.chunks = {t: 0 for t in tracks}      # media messages sent per track
        self.samples = 0                          # media clock: samples per channel since start

    @staticmethod
    def refuse(mix, rate, settings):
        """Why a `start` cannot speak Twilio with these (the -ERR text), or None."""
        if mix == "mixed":
            return "STREAM_PROTOCOL=twilio has no mixed track: use mono (inbound) or stereo (both tracks)"
        if rate != RATE:
            return "STREAM_PROTOCOL=twilio streams 8 kHz mu-law: use 8k, not %d" % rate
        if not settings.playback:
            return "STREAM_PLAYBACK=false (file mode) does not apply to STREAM_PROTOCOL=twilio"
        if settings.encoding_set and settings.encoding != "PCMU":
            return ("STREAM_PROTOCOL=twilio streams mu-law (PCMU) only: STREAM_ENCODING=%s does not apply "
                    "(leave it unset or PCMU)" % settings.encoding)
        return None

    @classmethod
    def for_stream(cls, call_uuid, metadata, mix, rate, settings):
        return cls(call_uuid, metadata, settings.twilio_account_sid,
                   tracks=("inbound", "outbound") if mix == "stereo" else ("inbound",))

    # -- uplink ---------------------------------------------------------------------------------

    def uplink_format(self):
        return UplinkFormat(RATE, len(self.tracks), CHUNK_MS, "PCMU")

    @property
    def is_open(self):
        return self.state == "open"

    @property
    def timestamp_ms(self):
        """The media clock: ms from the start of the stream to the next chunk's first sample."""
        return self.samples * 1000 // RATE

    def _next(self):
        self.sequence_number += 1
        return str(self.sequence_number)

    def _require_open(self, what):
        if self.state == "new":
            raise RuntimeError("%s before opening(): Twilio sends connected and start first" % what)
        return self.state == "open"

    def opening(self):
        """`connected` and `start`, the first two frames, before any audio."""
        if self.state != "new":
            raise RuntimeError("opening() twice")
        self.state = "open"
        connected = {"event": "connected", "protocol": PROTOCOL, "version": VERSION}
        start = {
            "event": "start",
            "sequenceNumber": self._next(),
            "start": {
                "accountSid": self.account_sid,
                "streamSid": self.stream_sid,
                "callSid": self.call_sid,
                "tracks": list(self.tracks),
                "mediaFormat": {"encoding": ENCODING, "sampleRate": RATE, "channels": 1},
                "customParameters": dict(self.custom_parameters),
            },
            "streamSid": self.stream_sid,
        }
        return [dumps(connected), dumps(start)]

    def media(self, pcm16):
        """`media` frames for the call's audio: 16-bit PCM at 8 kHz in uplink_format()'s layout.

        One frame per 20 ms of audio (a longer piece is split, a shorter last piece is one
        shorter frame); with two tracks, inbound then outbound for each 20 ms. [] once closed.
        """
        if not self._require_open("media()"):
            return []
        channels = len(self.tracks)
        frame_bytes = 2 * channels
        if len(pcm16) % frame_bytes:
            raise ValueError("media(): %d bytes is not a whole number of %d-channel 16-bit samples"
                             % (len(pcm16), channels))
        x = np.frombuffer(pcm16, dtype="<i2")
        out = []
        step = CHUNK_SAMPLES * channels
        for at in range(0, len(x), step):
            piece = x[at:at + step]
            timestamp = str(self.timestamp_ms)
            for i, track in enumerate(self.tracks):
                samples = piece[i::channels] if channels > 1 else piece
                self.chunks[track] += 1
                out.append(dumps({
                    "event": "media",
                    "sequenceNumber": self._next(),
                    "media": {
                        "track": track,
                        "chunk": str(self.chunks[track]),
                        "timestamp": timestamp,
                        "payload": base64.b64encode(ULAW_ENCODE[samples.view("<u2")].tobytes()).decode("ascii"),
                    },
                    "streamSid": self.stream_sid,
                }))
            self.samples += len(piece) // channels
        return out

    def skip(self, ms):
        """Audio that was not sent (pause, frames dropped): the next timestamps move on by `ms`,
        as Twilio's presentation timestamps follow the call's time. Sends nothing."""
        if ms < 0:
            raise ValueError("skip(): negative duration")
        self.samples += int(round(ms * RATE / 1000))

    def dtmf(self, digit, duration_ms=None):
        """The `dtmf` frame for one digit (0-9 * # A-D). Twilio's dtmf message has no duration:
        duration_ms is accepted for the stream's uniform interface and not sent."""
        if not self._require_open("dtmf()"):
            return []
        if not isinstance(digit, str) or digit.upper() not in DTMF_DIGITS or len(digit) != 1:
            raise ValueError("dtmf(): %r is not a DTMF digit (0-9 * # A-D)" % (digit,))
        return [dumps({
            "event": "dtmf",
            "streamSid": self.stream_sid,
            "sequenceNumber": self._next(),
            "dtmf": {"track": DTMF_TRACK, "digit": digit.upper()},
        })]

    def mark_ack(self, name, event="playout"):
        """Twilio's `mark` back to the server: the audio queued before the server's mark has played
        (event "playout") or a clear dropped it ("cleared"). Twilio sends the same message for
        both, so `event` only says which (for the caller's logs). Same signature as
        protocol.mark_ack()."""
        if event not in ("playout", "cleared"):
            raise ValueError("mark_ack(): event must be 'playout' or 'cleared', got %r" % (event,))
        if not self._require_open("mark_ack()"):
            return []
        return [dumps({
            "event": "mark",
            "sequenceNumber": self._next(),
            "streamSid": self.stream_sid,
            "mark": {"name": name},
        })]

    def error_reply(self, error, message):
        """Twilio never answers a bad message on the WebSocket (it logs a debugger error and goes
        on), so neither do we: the stream's mod_audio_stream::error event is the only report."""
        return []

    def text(self, text):
        """`send_text` in Twilio mode: the text verbatim, as the operator asked for it. Twilio has
        no such message, so a server written for Twilio may not expect it."""
        if not self._require_open("text()"):
            return []
        return [text]

    def closing(self):
        """The `stop` frame, to send after the last media and before the close frame. [] when
        already closed; a stream that never opened sends nothing."""
        if self.state != "open":
            self.state = "closed"
            return []
        self.state = "closed"
        return [dumps({
            "event": "stop",
            "sequenceNumber": self._next(),
            "stop": {"accountSid": self.account_sid, "callSid": self.call_sid},
            "streamSid": self.stream_sid,
        })]

    # -- downlink -------------------------------------------------------------------------------

    def _sid_problem(self, msg, event, text):
        if not self.check_stream_sid:
            return None
        sid = msg.get("streamSid")
        if sid == self.stream_sid:
            return None
        if sid is None:
            return BadMessage("%s without a streamSid (this stream is %s)" % (event, self.stream_sid), text)
        return BadMessage("%s for streamSid %r, not this stream's %s" % (event, sid, self.stream_sid), text)

    def parse(self, text):
        """Classify one text frame from the server (see the module docstring)."""
        msg = json_object(text)
        if msg is None:
            return Passthrough(text)
        event = msg.get("event")
        if event not in ("media", "mark", "clear"):
            return Passthrough(text)
        bad = self._sid_problem(msg, event, text)
        if bad is not None:
            return bad
        if event == "clear":
            return KillAudio()
        if event == "mark":
            mark = msg.get("mark")
            name = mark.get("name") if isinstance(mark, dict) else None
            if not isinstance(name, str) or not name:
                return BadMessage("mark without a mark.name string", text)
            return Mark(name)
        media = msg.get("media")
        if not isinstance(media, dict):
            return BadMessage("media without a media object", text)
        payload = media.get("payload")
        if not isinstance(payload, str):
            return BadMessage("media without a media.payload string (base64 mulaw/8000)", text)
        try:
            audio = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            return BadMessage("media.payload is not valid base64", text)
        data = {"audioDataType": "pcmu", "sampleRate": RATE}
        data.update((k, v) for k, v in media.items() if k != "payload")
        return StreamAudio("pcmu", RATE, audio, data)

    def parse_binary(self, data):
        """Twilio's protocol has no binary frames (a server's audio goes in `media`): refused, so
        the operator sees an error event; nothing is played and the stream goes on."""
        return BadMessage("a binary frame (%d bytes): the Twilio Media Streams protocol has only "
                          "JSON text frames; send audio as a media message" % len(data),
                          "<binary %d bytes>" % len(data))
