"""Making a stream: its dialect, audio path, outbox, media ports, player, DTMF port and events,
wired to each other (the API thread, before the attach). `media` is a contracts.MediaPorts
(switch/media.py unless another implementation is given)."""
from . import audio, dialects
from .events import StreamEvents
from .outbox import Outbox
from .playback import Player
from .stream import MAX_TEXT_BYTES, Stream
from .switch import core as C
from .switch import media as switch_media
from .switch.dtmf import DtmfPort


def capture_flags(mix):
    flags = C.SMBF_READ_STREAM
    if mix in ("mixed", "stereo"):
        flags |= C.SMBF_WRITE_STREAM
    if mix == "stereo":
        flags |= C.SMBF_STEREO
    return flags


def make_stream(be, runtime, uuid, cmd, settings, call_rate, ptime_ms, plays=True, media=switch_media):
    kind = dialects.dialect_class(settings.protocol)
    events = StreamEvents(be, uuid, cmd.stream, settings, cmd.url)
    s = Stream(be, runtime, uuid, cmd, settings, call_rate, ptime_ms, kind, events)
    s.dialect = kind.for_stream(uuid, cmd.text, cmd.mix, cmd.rate, settings)
    fmt = s.dialect.uplink_format()
    s.rate = fmt.rate
    s.uplink = audio.Uplink(call_rate, fmt.rate, fmt.channels, fmt.chunk_ms)
    # audio held while connecting (and while the server is slow): bounded, oldest dropped
    bytes_per_ms = fmt.rate * 2 * fmt.channels // 1000
    s.outbox = Outbox(settings.backlog_ms * bytes_per_ms, MAX_TEXT_BYTES + settings.max_message, bytes_per_ms)
    notify = runtime.loop().call_soon_threadsafe
    s.capture = media.CapturePort(be.core, capture_flags(cmd.mix))
    s.player = Player(s, call_rate, plays)
    s.control = media.ControlPort(be.core, call_rate, ptime_ms, s.player.queue, s.capture, s, s.player, notify)
    s.player.port = s.control
    s.dtmf_port = DtmfPort(be, s, notify) if settings.dtmf else None
    return s
