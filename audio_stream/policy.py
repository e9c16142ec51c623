"""Small pure state machines for decisions taken per frame or per capture pass. No I/O, no threads.

PairPolicy: when to stop waiting for the write side of a both-directions capture (mixed, stereo).
PlaybackPolicy: who puts the server's audio into the call (the core's own writes, replaced, or
our writes), and when the playback bug may go dormant.
"""

# PlaybackPolicy modes (the prior: who wrote the call the last time we played into it)
REPLACE = "replace"   # the core writes frames to the call; our WRITE_REPLACE callback replaces them
WRITE = "write"       # the core writes nothing; we write frames from the READ_PING callback


class PairPolicy:
    """Reading a READ|WRITE bug (mixed, stereo) once per capture pass.

    `switch_core_media_bug_read(fill=TRUE)` returns a frame only when both directions have one.
    On a call where the core writes nothing to the caller (parked), the write side stays empty and
    nothing ever pairs; `fill=FALSE` pads the missing side with silence. A bridged call's write
    side comes from another thread and can lag the read side by a frame, so one pass without a
    pair is normal there. So: after `idle_passes` passes in a row without a pair, the write side
    is idle, and the pass drains the read side padded (`pad()` says when).
    """

    def __init__(self, idle_passes=2):
        self.idle_passes = idle_passes
        self.unpaired = 0      # passes in a row that read no pair

    def pad(self, paired):
        """After a pass read `paired` pairs: True if it should now drain with fill=FALSE."""
        if paired:
            self.unpaired = 0
            return False
        self.unpaired += 1
        return self.unpaired >= self.idle_passes


class PlaybackPolicy:
    """Decides, on each READ_PING of an active playback bug, whether we write a frame ourselves,
    and whether the bug may go dormant (no callbacks at all until the server sends audio again).

    The core calls WRITE_REPLACE for every frame it writes to the call (bridged, playing a file,
    `send_silence_when_idle`) and READ_PING for every frame it reads (the call's own clock). Two
    writers on one session make the core drop frames, so we write ourselves only after
    `quiet_pings` READ_PINGs in a row saw no core write — counted in events, not wall time, so a
    stall cannot fool it. The wait costs `quiet_pings` frames before the first audio; the prior
    (what the last active period saw) removes it: when we were the writer last time, the first
    quiet ping is enough, until a core write shows the call changed.
    """

    def __init__(self, quiet_pings=3):
        self.quiet_pings = quiet_pings
        self.prior = None         # REPLACE, WRITE, or None (never observed)
        self.quiet = 0            # READ_PINGs in a row without a core write
        self.pings = 0            # READ_PINGs since activation
        self.saw_core_write = False

    def activate(self):
        """The bug's callbacks are switched on (loop thread, no callback running)."""
        self.quiet = 0
        self.pings = 0
        self.saw_core_write = False

    def may_write(self, core_wrote):
        """A READ_PING: `core_wrote` = the core wrote a frame since the previous one. True if we
        may write this frame ourselves (if there is audio to play)."""
        self.pings += 1
        if core_wrote:
            self.quiet = 0
            self.saw_core_write = True
            return False
        self.quiet += 1
        need = 1 if (self.prior == WRITE and not self.saw_core_write) else self.quiet_pings
        return self.quiet >= need

    def may_sleep(self):
        """Enough pings seen since activation to know who writes the call (so the prior is
        worth keeping): the bug may go dormant when there is nothing to play."""
        return self.pings > self.quiet_pings

    def sleep(self):
        """Going dormant: remember who writes the call for the next activation."""
        self.prior = WRITE if self.quiet >= self.quiet_pings else REPLACE
