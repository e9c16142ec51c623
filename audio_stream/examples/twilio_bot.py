"""A small Twilio Media Streams bot, to try STREAM_PROTOCOL=twilio end to end.

Written the way Twilio's docs and samples write a <Connect><Stream> server, so it also works
behind a real Twilio number.

    python -m audio_stream.examples.twilio_bot --port 8080 --greet
    fs_cli> python audio_stream <uuid> start ws://127.0.0.1:8080/media mono 8k {"caller":"Jane"}
    (with the channel variable STREAM_PROTOCOL=twilio)

What it does with each message Twilio (or audio_stream) sends:
  connected  logs it
  start      remembers start.streamSid (every message it sends carries it), logs callSid, tracks,
             mediaFormat and customParameters; with --greet plays a short chime (one `media`
             message) followed by the mark "greeting"
  media      --mode echo (default): collects the caller's audio and, each --echo-ms of it, sends
             it back as one `media` message followed by the mark "echo-<n>";
             --mode listen: only counts it; media.timestamp is read as an integer, as
             Twilio's OpenAI sample does for barge-in
  dtmf       sends `clear` (the caller interrupts what is playing) and logs the digit
  mark       logs the mark that came back: its audio has played (or was cleared)
  stop       logs a summary and closes the connection
--record DIR writes the caller's audio (the inbound track) to DIR/<callSid>.wav, 8000 Hz mono,
when the audio is what Twilio sends (X-Audio-Stream-Encoding PCMU at 8000 Hz, which audio_stream
sends on the upgrade request, and start.mediaFormat audio/x-mulaw, 8000 Hz, 1 channel);
otherwise it writes nothing and says why.

--check validates every message against the shapes Twilio documents (fields, string numbers,
sequenceNumber +1 each message, chunk +1 per track, timestamps never going back) and reports a
violation as a line starting "PROTOCOL ERROR".
"""
import base64
import json
import os
import wave

from aiohttp import WSMsgType, web

from audio_stream.examples import common
from audio_stream.examples.common import chime  # three short tones, 0.6 s
from audio_stream.tools import cli
from audio_stream.twilio import ulaw_decode, ulaw_encode

NAME = "twilio_bot"
MEDIA_FORMAT = {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}


# ---- the documented shapes (https://www.twilio.com/docs/voice/media-streams/websocket-messages) --

def _intstr(v):
    return isinstance(v, str) and v.isdigit()


class Checker:
    """Checks what Twilio documents about the messages it sends, one connection at a time."""

    def __init__(self):
        self.last_seq = 0
        self.chunks = {}
        self.last_ts = {}
        self.count = 0
        self.stream_sid = None

    def check(self, msg):
        """Problems with one message (a list of strings; empty when it is as documented)."""
        p = []
        self.count += 1
        if not isinstance(msg, dict):
            return ["not a JSON object"]
        ev = msg.get("event")
        if self.count == 1 and ev != "connected":
            p.append("the first message must be connected, got %r" % ev)
        if self.count == 2 and ev != "start":
            p.append("the second message must be start, got %r" % ev)
        if ev == "connected":
            if msg.get("protocol") != "Call" or not isinstance(msg.get("version"), str):
                p.append("connected needs protocol 'Call' and a version string")
            return p
        if ev not in ("start", "media", "stop", "dtmf", "mark"):
            return p + ["unknown event %r" % ev]
        seq = msg.get("sequenceNumber")
        if not _intstr(seq):
            p.append("sequenceNumber %r is not a string of digits" % (seq,))
        elif int(seq) != self.last_seq + 1:
            p.append("sequenceNumber %s after %d" % (seq, self.last_seq))
        else:
            self.last_seq = int(seq)
        sid = msg.get("streamSid")
        if not isinstance(sid, str) or not sid:
            p.append("%s without a streamSid" % ev)
        body = msg.get(ev)
        if not isinstance(body, dict):
            return p + ["%s without a %s object" % (ev, ev)]
        if ev == "start":
            self.stream_sid = sid
            for k in ("accountSid", "streamSid", "callSid"):
                if not isinstance(body.get(k), str) or not body.get(k):
                    p.append("start.%s missing" % k)
            if body.get("streamSid") != sid:
                p.append("start.streamSid differs from streamSid")
            tracks = body.get("tracks")
            if not isinstance(tracks, list) or not tracks or not set(tracks) <= {"inbound", "outbound"}:
                p.append("start.tracks %r" % (tracks,))
            if body.get("mediaFormat") != {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}:
                p.append("start.mediaFormat %r" % (body.get("mediaFormat"),))
            cp = body.get("customParameters")
            if not isinstance(cp, dict) or not all(isinstance(v, str) for v in cp.values()):
                p.append("start.customParameters must be an object of strings: %r" % (cp,))
        elif sid != self.stream_sid:
            p.append("streamSid %r differs from start's %r" % (sid, self.stream_sid))
        if ev == "media":
            track, chunk, ts = body.get("track"), body.get("chunk"), body.get("timestamp")
            if track not in ("inbound", "outbound"):
                p.append("media.track %r" % (track,))
            if not _intstr(chunk) or int(chunk) != self.chunks.get(track, 0) + 1:
                p.append("media.chunk %r after %r on %s" % (chunk, self.chunks.get(track, 0), track))
            else:
                self.chunks[track] = int(chunk)
            if not _intstr(ts) or int(ts) < self.last_ts.get(track, 0):
                p.append("media.timestamp %r" % (ts,))
            else:
                self.last_ts[track] = int(ts)
            try:
                base64.b64decode(body.get("payload"), validate=True)
            except Exception:
                p.append("media.payload is not base64")
        elif ev == "stop":
            if not body.get("accountSid") or not body.get("callSid"):
                p.append("stop needs accountSid and callSid")
        elif ev == "dtmf":
            if body.get("track") != "inbound_track" or not isinstance(body.get("digit"), str):
                p.append("dtmf needs track 'inbound_track' and a digit string")
        elif ev == "mark":
            if not isinstance(body.get("name"), str):
                p.append("mark.name missing")
        return p


# ---- the bot ----------------------------------------------------------------------------------

class TwilioBot:
    def __init__(self, mode="echo", echo_ms=1000, greet=False, record=None, check=False, out=print):
        self.mode = mode
        self.echo_ms = echo_ms
        self.greet = greet
        self.record = record
        self.check = check
        self.out = out

    def log(self, *args):
        self.out("Media WS:", *args)

    def app(self):
        app = web.Application()
        app.router.add_get("/{tail:.*}", self.handle)
        return app

    async def handle(self, request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.log("Connection accepted", request.path)
        fmt = common.format_from_headers(request.headers)
        not_recording = None
        if self.record and fmt and (fmt.encoding, fmt.rate) != ("PCMU", 8000):
            not_recording = "its audio is %r, not μ-law at 8000 Hz" % fmt
        checker = Checker() if self.check else None
        stream_sid = None
        call_sid = None
        inbound = bytearray()      # μ-law waiting to be echoed
        recorded = []
        media_count = 0
        latest_media_timestamp = 0
        echoes = 0
        marks = []

        async def send(obj):
            await ws.send_str(json.dumps(obj))

        async def play(ulaw, mark_name):
            await send({"event": "media", "streamSid": stream_sid,
                        "media": {"payload": base64.b64encode(bytes(ulaw)).decode()}})
            await send({"event": "mark", "streamSid": stream_sid, "mark": {"name": mark_name}})

        async for message in ws:
            if message.type != WSMsgType.TEXT:
                self.log("Unexpected %s frame ignored" % message.type.name)
                continue
            data = json.loads(message.data)
            if checker is not None:
                for problem in checker.check(data):
                    self.out("PROTOCOL ERROR:", problem, "in", message.data[:200])
            event = data.get("event")
            if event == "connected":
                self.log("Connected Message received", message.data)
            elif event == "start":
                self.log("Start Message received", message.data)
                stream_sid = data["start"]["streamSid"]
                call_sid = data["start"]["callSid"]
                media_format = data["start"].get("mediaFormat")
                if self.record and not not_recording and media_format != MEDIA_FORMAT:
                    not_recording = "start.mediaFormat is %s, not %s" % (json.dumps(media_format),
                                                                         json.dumps(MEDIA_FORMAT))
                if self.greet:
                    await play(ulaw_encode(chime().tobytes()), "greeting")
                    self.log("Sent the greeting and the mark 'greeting'")
            elif event == "media":
                media_count += 1
                latest_media_timestamp = int(data["media"]["timestamp"])
                if media_count == 1:
                    self.log("Media message", message.data[:200])
                    self.log("Additional media messages from WebSocket are being suppressed....")
                if data["media"].get("track", "inbound") != "inbound":
                    continue
                payload = base64.b64decode(data["media"]["payload"])
                if self.record and not not_recording:
                    recorded.append(payload)
                if self.mode == "echo":
                    inbound += payload
                    while len(inbound) >= self.echo_ms * 8:
                        echoes += 1
                        await play(inbound[:self.echo_ms * 8], "echo-%d" % echoes)
                        del inbound[:self.echo_ms * 8]
            elif event == "dtmf":
                self.log("DTMF %s received; sending clear" % data["dtmf"]["digit"])
                inbound.clear()
                await send({"event": "clear", "streamSid": stream_sid})
            elif event == "mark":
                marks.append(data["mark"]["name"])
                self.log("Mark %s received" % data["mark"]["name"])
            elif event == "stop":
                self.log("Stop Message received", message.data)
                break
            else:
                self.log("Unknown message", message.data[:200])
        if not_recording:
            self.log("Not recording this stream: %s" % not_recording)
        elif recorded and call_sid:
            path = os.path.join(self.record, "%s.wav" % call_sid.replace("/", "_"))
            with wave.open(path, "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(8000)
                w.writeframes(ulaw_decode(b"".join(recorded)))
            self.log("Wrote", path)
        self.log("Connection closed. %d media messages, last timestamp %d ms, %d echoes, marks back: %s"
                 % (media_count, latest_media_timestamp, echoes, ",".join(marks) or "-"))
        await ws.close()
        return ws


def main(argv=None, prog="python -m audio_stream.examples.twilio_bot"):
    p = cli.parser(prog, __doc__)
    common.add_server_options(p)
    p.add_argument("--mode", choices=("echo", "listen"), default="echo",
                   help="echo: send the caller's audio back; listen: only count it")
    p.add_argument("--echo-ms", type=int, default=1000, help="echo the caller's audio in pieces this long (ms)")
    p.add_argument("--greet", action="store_true", help="play a short chime and the mark 'greeting' at start")
    p.add_argument("--record", metavar="DIR", help="write the caller's audio to DIR/<callSid>.wav (created if missing)")
    p.add_argument("--check", action="store_true", help="report messages that differ from Twilio's docs")
    a = p.parse_args(argv)
    if a.echo_ms <= 0:
        p.error("--echo-ms must be positive")
    if a.record:
        cli.output_dir(a.record)
    bot = TwilioBot(a.mode, a.echo_ms, a.greet, a.record, a.check,
                    out=lambda *args: print(*args, flush=True))
    return common.serve(bot.app(), a.host, a.port, NAME)


if __name__ == "__main__":
    cli.run(main)
