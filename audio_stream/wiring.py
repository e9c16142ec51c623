"""Making a stream: its dialect, outbox, media ports, player, DTMF port and events, wired to each
other (the API thread, before the attach). `media` is a contracts.MediaPorts, the media path:
be.media_path() (the compiled accelerator's, switch/accel.py, where it is built; else the
pure-Python one, switch/media.py) unless another is given."""
from . import audio, dialects
from .events import StreamEvents
from .outbox import Outbox
from .playback import Player
from .stream import MAX_TEXT_BYTES, Stream
from .switch.dtmf import DtmfPort


def make_stream(be, runtime, uuid, cmd, settings, call_rate, ptime_ms, plays=True, media=None):
    kind = dialects.dialect_class(settings.protocol)
    events = StreamEvents(be, uuid, cmd.stream, settings, cmd.url)
    s = Stream(be, runtime, uuid, cmd, settings, call_rate, ptime_ms, kind, events)
    s.dialect = kind.for_stream(uuid, cmd.text, cmd.mix, cmd.rate, settings)
    fmt = s.dialect.uplink_format()
    s.rate = fmt.rate
    # the capture hands over the chunks the wire carries: in the stream's encoding when the dialect
    # sends them as they are (G.711 is encoded by the capture), L16 when it renders its own frames
    encoding = fmt.encoding if s.dialect.binary_audio else "L16"
    # audio held while connecting (and while the server is slow): bounded, oldest dropped
    bytes_per_ms = fmt.rate * audio.sample_bytes(encoding) * fmt.channels // 1000
    s.outbox = Outbox(settings.backlog_ms * bytes_per_ms, MAX_TEXT_BYTES + settings.max_message, bytes_per_ms)
    loop = runtime.loop()
    media = media or be.media_path()
    s.path, s.ws_frames = media.name, media.ws_frames
    s.capture = media.capture(uuid, cmd.mix, call_rate, ptime_ms, fmt.rate, fmt.chunk_ms, encoding)
    queue = media.queue(uuid, call_rate, ptime_ms, settings) if settings.playback and plays else None
    s.player = Player(s, call_rate, queue, plays, media.resampler)
    if queue is not None and s.dialect.binary_playback == "L16":
        s.player.sink = media.binary_sink(queue, settings.sample_rate or s.rate, call_rate, settings.max_message)
    s.control = media.control(uuid, call_rate, ptime_ms, queue, s.capture, s, s.player, loop)
    s.player.port = s.control
    s.outbox.on_put = s.capture.stop_direct
    s.dtmf_port = DtmfPort(be, s, loop.call_soon_threadsafe) if settings.dtmf else None
    return s
