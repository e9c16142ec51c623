"""The lifecycle of a stream and of its link, as two pure state machines (h11's style: every
command and every event is an input; a table says, for every state, what each input does). No
I/O, no threads, no clock: stream.py and link.py feed them and carry out the actions.

A machine answers each input with an action name. Two are generic:
- DEFER: the input waits (in order) until the machine replays it (`take_deferred()`), when the
  action of a later input says so (the stream's `start` after the attach, the link's
  `connected`).
- IGNORE: nothing to do in this state.

The tables are complete: every (state, input) pair has an entry, checked at import.
"""

DEFER = "defer"
IGNORE = "ignore"


class Machine:
    """A table-driven state machine. `TABLE[state][input] = (next_state, action)`."""

    STATES = ()
    INPUTS = ()
    TABLE = {}
    INITIAL = None

    def __init__(self):
        self.state = self.INITIAL
        self.deferred = []

    def on(self, inp, *args):
        """Feed one input; returns the action to carry out (the state has changed already)."""
        next_state, action = self.TABLE[self.state][inp]
        if action == DEFER:
            self.deferred.append((inp, args))
            return DEFER
        self.state = next_state
        return action

    def take_deferred(self):
        """The inputs kept by DEFER, oldest first, to feed again."""
        d, self.deferred = self.deferred, []
        return d

    @classmethod
    def check(cls):
        for state in cls.STATES:
            row = cls.TABLE.get(state)
            if row is None or set(row) != set(cls.INPUTS):
                raise AssertionError("%s: state %r does not answer exactly every input" % (cls.__name__, state))
            for inp, (nxt, action) in row.items():
                if nxt not in cls.STATES:
                    raise AssertionError("%s: %r + %r goes to unknown state %r" % (cls.__name__, state, inp, nxt))


def _table(states, inputs, default, rows):
    """Build a complete table: `default(state)` for every pair not in `rows`."""
    table = {}
    for state in states:
        row = {inp: default(state) for inp in inputs}
        row.update(rows.get(state, {}))
        table[state] = row
    return table


# ---- the stream ----------------------------------------------------------------------------------
#
# States (what `status` shows):
ATTACHING = "attaching"        # the API thread is adding the call's bugs
CONNECTING = "connecting"      # capturing; the first connection is being made
STREAMING = "streaming"        # capturing and sending
RECONNECTING = "reconnecting"  # capturing (into the bounded outbox); the server is away
GRACEFUL = "graceful"          # graceful-shutdown: capture over, playback on, waiting for the server to close
DRAINING = "draining"          # the call's audio is over: the rest is sent (within limits), then close
CLOSED = "closed"              # the WebSocket side is done; nothing left of the stream on the call

LIVE = (CONNECTING, STREAMING, RECONNECTING)   # the call's audio is being captured

# Inputs
ATTACHED = "attached"            # the API thread has added the bugs
ATTACH_FAILED = "attach_failed"  # ... or could not
CONNECTED = "connected"          # the link's first connection is up
LINK_LOST = "link_lost"          # the link lost its connection and tries again
RECONNECTED = "reconnected"      # ... and has one again
LINK_GONE = "link_gone"          # the connection is gone for good, not by our doing (server close, failure, gave up)
LINK_DONE = "link_done"          # the link's task has ended
STOP = "stop"                    # `stop [text]`
GRACEFUL_SHUTDOWN = "graceful_shutdown"   # `graceful-shutdown [text]`
HANGUP = "hangup"                # the call's media is over (hangup, or the bug removed by someone else)
SHUTDOWN = "shutdown"            # the switch or the module is going away
COMMAND = "command"              # send_text, pause/resume, playback_* (data, not lifecycle)
DTMF = "dtmf"                    # a digit the call received

STREAM_STATES = (ATTACHING, CONNECTING, STREAMING, RECONNECTING, GRACEFUL, DRAINING, CLOSED)
STREAM_INPUTS = (ATTACHED, ATTACH_FAILED, CONNECTED, LINK_LOST, RECONNECTED, LINK_GONE, LINK_DONE, STOP,
                 GRACEFUL_SHUTDOWN, HANGUP, SHUTDOWN, COMMAND, DTMF)

# Actions (Stream carries them out)
START = "start"                  # start the link and the capture clock, then replay what was deferred
DISCARD = "discard"              # the attach failed: drop what was deferred
REPORT = "report"                # an event and a log line about the connection
ACCEPT = "accept"                # carry the command out
DIGIT = "digit"                  # pass the digit on (after the audio before it)
REFUSE = "refuse"                # the command cannot be carried out now (the caller says so)
END = "end"                      # stop: the last audio, the stop text, close 1000; off the call
GRACEFUL_END = "graceful_end"    # graceful-shutdown: the last audio and the text; playback goes on
END_GRACEFUL = "end_graceful"    # stop during graceful-shutdown: off the call, close now
MEDIA_OVER = "media_over"        # hangup: the last audio (the tail), close 1000 (1001 at switch shutdown)
MEDIA_GONE = "media_gone"        # hangup once the media has ended anyway: playback is over
HANGUP_GRACEFUL = "hangup_graceful"   # hangup during graceful-shutdown: stop waiting for the server
ABANDON = "abandon"              # the connection is gone for good: end the media, send nothing more
GOING_AWAY = "going_away"        # the switch goes away: what is captured, then close 1001 at once
CLEANUP = "cleanup"              # everything released; the stream is over

_stream_rows = {
    ATTACHING: {
        ATTACHED: (CONNECTING, START),
        ATTACH_FAILED: (CLOSED, DISCARD),
        STOP: (ATTACHING, DEFER),               # it waits for the attach, then stops: never a bug left
        GRACEFUL_SHUTDOWN: (ATTACHING, DEFER),
        HANGUP: (ATTACHING, DEFER),
        SHUTDOWN: (ATTACHING, DEFER),
        COMMAND: (ATTACHING, DEFER),
        DTMF: (ATTACHING, DEFER),
    },
    CONNECTING: {
        CONNECTED: (STREAMING, REPORT),
        LINK_GONE: (DRAINING, ABANDON),
        LINK_DONE: (CLOSED, CLEANUP),
        STOP: (DRAINING, END),
        GRACEFUL_SHUTDOWN: (GRACEFUL, GRACEFUL_END),
        HANGUP: (DRAINING, MEDIA_OVER),
        SHUTDOWN: (DRAINING, GOING_AWAY),
        COMMAND: (CONNECTING, ACCEPT),
        DTMF: (CONNECTING, DIGIT),
    },
    STREAMING: {
        LINK_LOST: (RECONNECTING, REPORT),
        LINK_GONE: (DRAINING, ABANDON),
        LINK_DONE: (CLOSED, CLEANUP),
        STOP: (DRAINING, END),
        GRACEFUL_SHUTDOWN: (GRACEFUL, GRACEFUL_END),
        HANGUP: (DRAINING, MEDIA_OVER),
        SHUTDOWN: (DRAINING, GOING_AWAY),
        COMMAND: (STREAMING, ACCEPT),
        DTMF: (STREAMING, DIGIT),
    },
    RECONNECTING: {
        LINK_LOST: (RECONNECTING, REPORT),      # another attempt
        RECONNECTED: (STREAMING, REPORT),
        LINK_GONE: (DRAINING, ABANDON),
        LINK_DONE: (CLOSED, CLEANUP),
        STOP: (DRAINING, END),
        GRACEFUL_SHUTDOWN: (GRACEFUL, GRACEFUL_END),
        HANGUP: (DRAINING, MEDIA_OVER),
        SHUTDOWN: (DRAINING, GOING_AWAY),
        COMMAND: (RECONNECTING, ACCEPT),
        DTMF: (RECONNECTING, DIGIT),
    },
    GRACEFUL: {
        CONNECTED: (GRACEFUL, REPORT),          # graceful-shutdown before the first connection
        LINK_DONE: (CLOSED, CLEANUP),
        STOP: (DRAINING, END_GRACEFUL),
        HANGUP: (DRAINING, HANGUP_GRACEFUL),
        SHUTDOWN: (DRAINING, GOING_AWAY),
        COMMAND: (GRACEFUL, ACCEPT),            # texts are still sent, playback still controlled
    },
    DRAINING: {
        CONNECTED: (DRAINING, REPORT),          # stopped before the first connection: it still delivers
        LINK_DONE: (CLOSED, CLEANUP),
        HANGUP: (DRAINING, MEDIA_GONE),
        SHUTDOWN: (DRAINING, GOING_AWAY),       # shorter limits, 1001
        COMMAND: (DRAINING, REFUSE),
    },
    CLOSED: {
        COMMAND: (CLOSED, REFUSE),
    },
}


class StreamMachine(Machine):
    STATES = STREAM_STATES
    INPUTS = STREAM_INPUTS
    INITIAL = ATTACHING
    TABLE = _table(STREAM_STATES, STREAM_INPUTS, lambda state: (state, IGNORE), _stream_rows)

    @property
    def live(self):
        """The call's audio is being captured."""
        return self.state in LIVE


StreamMachine.check()


# ---- the link (one stream's connection, across reconnections) -------------------------------------
#
# States
L_CONNECTING = "connecting"      # the first connection is being made
L_OPEN = "open"                  # sending the outbox, receiving
L_LOST = "lost"                  # the connection ended: deciding whether to try again
L_RECONNECTING = "reconnecting"  # waiting out the backoff, or connecting again
L_CLOSING = "closing"            # sending what is left (within a deadline), then the close frame
L_LINGERING = "lingering"        # graceful-shutdown: everything sent; waiting for the server to close
L_CLOSED = "closed"

# Inputs
OPENED = "opened"                # a connection is up
OPEN_FAILED = "open_failed"      # a connection attempt failed
LOST = "lost"                    # the connection ended (close frame, reset, no pong, a send failed)
FAIL = "fail"                    # the host fails it (the server keeps sending garbage): close 1008
FINISH = "finish"                # the host ends it: send the rest, (linger,) close
ABANDON_LINK = "abandon"         # the host gave up: stop now, send nothing more
RETRY = "retry"                  # the reconnection policy says: try again
GIVE_UP = "give_up"              # ... or not
DRAINED = "drained"              # everything queued has been sent
DEADLINE = "deadline"            # the time to send the rest (or to linger) is up

LINK_STATES = (L_CONNECTING, L_OPEN, L_LOST, L_RECONNECTING, L_CLOSING, L_LINGERING, L_CLOSED)
LINK_INPUTS = (OPENED, OPEN_FAILED, LOST, FAIL, FINISH, ABANDON_LINK, RETRY, GIVE_UP, DRAINED, DEADLINE)

# Actions (Link carries them out)
L_CONNECTED = "connected"        # tell the host; replay a deferred finish
L_FIRST_FAILED = "first_failed"  # the first connection failed: the host reports why
L_DECIDE = "decide"              # stop receiving; close 1008 if failing; ask the policy
L_RECONNECT = "reconnect"        # tell the host; wait out the backoff; connect again
L_RECONNECTED = "reconnected"    # tell the host
L_ATTEMPT_FAILED = "attempt_failed"   # ask the policy again
L_GONE = "gone"                  # tell the host the connection is gone for good
L_ENDED = "ended"                # the stream ended while the server was away: nothing to reconnect for
L_DRAIN = "drain"                # send the rest, by a deadline
L_REFINISH = "refinish"          # a later finish: may only shorten the linger (or force, at shutdown)
L_LINGER = "linger"              # wait for the server's close (graceful-shutdown), up to the linger time
L_CLOSE = "close"                # the close frame (within the deadline)
L_ABORT = "abort"                # drop the connection without a close handshake
L_ABANDONED = "abandoned"        # stop now

_link_rows = {
    L_CONNECTING: {
        OPENED: (L_OPEN, L_CONNECTED),
        OPEN_FAILED: (L_CLOSED, L_FIRST_FAILED),
        FINISH: (L_CONNECTING, DEFER),          # stopped before the first connection: it still delivers
        ABANDON_LINK: (L_CLOSED, L_ABANDONED),
    },
    L_OPEN: {
        LOST: (L_LOST, L_DECIDE),
        FAIL: (L_LOST, L_DECIDE),
        FINISH: (L_CLOSING, L_DRAIN),
        ABANDON_LINK: (L_CLOSED, L_ABANDONED),
    },
    L_LOST: {
        RETRY: (L_RECONNECTING, L_RECONNECT),
        GIVE_UP: (L_CLOSED, L_GONE),
        FINISH: (L_CLOSED, L_ENDED),
        ABANDON_LINK: (L_CLOSED, L_ABANDONED),
    },
    L_RECONNECTING: {
        OPENED: (L_OPEN, L_RECONNECTED),
        OPEN_FAILED: (L_RECONNECTING, L_ATTEMPT_FAILED),
        RETRY: (L_RECONNECTING, L_RECONNECT),
        GIVE_UP: (L_CLOSED, L_GONE),
        FINISH: (L_CLOSED, L_ENDED),
        ABANDON_LINK: (L_CLOSED, L_ABANDONED),
    },
    L_CLOSING: {
        DRAINED: (L_LINGERING, L_LINGER),
        DEADLINE: (L_CLOSED, L_ABORT),
        LOST: (L_CLOSED, L_ABANDONED),          # gone while closing: nothing to recover
        FINISH: (L_CLOSING, L_REFINISH),
        ABANDON_LINK: (L_CLOSED, L_ABANDONED),
    },
    L_LINGERING: {
        LOST: (L_CLOSED, L_CLOSE),              # the server closed (or went away): done
        DEADLINE: (L_CLOSED, L_CLOSE),
        FAIL: (L_CLOSED, L_CLOSE),
        FINISH: (L_LINGERING, L_REFINISH),
        ABANDON_LINK: (L_CLOSED, L_ABANDONED),
    },
}


class LinkMachine(Machine):
    STATES = LINK_STATES
    INPUTS = LINK_INPUTS
    INITIAL = L_CONNECTING
    TABLE = _table(LINK_STATES, LINK_INPUTS, lambda state: (state, IGNORE), _link_rows)


LinkMachine.check()
