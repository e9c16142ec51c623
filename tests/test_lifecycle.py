"""The stream's and the link's lifecycles (lifecycle.py), pure: every (state, input) pair, the
deferral while attaching, and invariants over random sequences. No threads, no sockets."""
import itertools

import pytest
from hypothesis import given, settings, strategies as st

from audio_stream import lifecycle as L

# Every pair that does something; every other pair must leave the state alone and do nothing.
STREAM_SPEC = """
attaching    attached           connecting   start
attaching    attach_failed      closed       discard
attaching    stop               attaching    defer
attaching    graceful_shutdown  attaching    defer
attaching    hangup             attaching    defer
attaching    shutdown           attaching    defer
attaching    command            attaching    defer
attaching    dtmf               attaching    defer
connecting   connected          streaming    report
connecting   link_gone          draining     abandon
connecting   link_done          closed       cleanup
connecting   stop               draining     end
connecting   graceful_shutdown  graceful     graceful_end
connecting   hangup             draining     media_over
connecting   shutdown           draining     going_away
connecting   command            connecting   accept
connecting   dtmf               connecting   digit
streaming    link_lost          reconnecting report
streaming    link_gone          draining     abandon
streaming    link_done          closed       cleanup
streaming    stop               draining     end
streaming    graceful_shutdown  graceful     graceful_end
streaming    hangup             draining     media_over
streaming    shutdown           draining     going_away
streaming    command            streaming    accept
streaming    dtmf               streaming    digit
reconnecting link_lost          reconnecting report
reconnecting reconnected        streaming    report
reconnecting link_gone          draining     abandon
reconnecting link_done          closed       cleanup
reconnecting stop               draining     end
reconnecting graceful_shutdown  graceful     graceful_end
reconnecting hangup             draining     media_over
reconnecting shutdown           draining     going_away
reconnecting command            reconnecting accept
reconnecting dtmf               reconnecting digit
graceful     connected          graceful     report
graceful     link_done          closed       cleanup
graceful     stop               draining     end_graceful
graceful     hangup             draining     hangup_graceful
graceful     shutdown           draining     going_away
graceful     command            graceful     accept
draining     connected          draining     report
draining     link_done          closed       cleanup
draining     hangup             draining     media_gone
draining     shutdown           draining     going_away
draining     command            draining     refuse
closed       command            closed       refuse
"""

LINK_SPEC = """
connecting   opened       open         connected
connecting   open_failed  closed       first_failed
connecting   finish       connecting   defer
connecting   abandon      closed       abandoned
open         lost         lost         decide
open         fail         lost         decide
open         finish       closing      drain
open         abandon      closed       abandoned
lost         retry        reconnecting reconnect
lost         give_up      closed       gone
lost         finish       closed       ended
lost         abandon      closed       abandoned
reconnecting opened       open         reconnected
reconnecting open_failed  reconnecting attempt_failed
reconnecting retry        reconnecting reconnect
reconnecting give_up      closed       gone
reconnecting finish       closed       ended
reconnecting abandon      closed       abandoned
closing      drained      lingering    linger
closing      deadline     closed       abort
closing      lost         closed       abandoned
closing      finish       closing      refinish
closing      abandon      closed       abandoned
lingering    lost         closed       close
lingering    deadline     closed       close
lingering    fail         closed       close
lingering    finish       lingering    refinish
lingering    abandon      closed       abandoned
"""


def spec(text):
    return {(s, i): (n, a) for s, i, n, a in (line.split() for line in text.strip().splitlines())}


def pairs(machine):
    return list(itertools.product(machine.STATES, machine.INPUTS))


def in_state(machine, state):
    m = machine()
    m.state = state
    return m


@pytest.mark.parametrize("machine,text", [(L.StreamMachine, STREAM_SPEC), (L.LinkMachine, LINK_SPEC)],
                         ids=["stream", "link"])
def test_every_state_input_pair(machine, text):
    expected = spec(text)
    assert set(expected) <= set(pairs(machine)), "the spec names a state or input the machine lacks"
    for state, inp in pairs(machine):
        m = in_state(machine, state)
        action = m.on(inp, "arg")
        want_state, want_action = expected.get((state, inp), (state, L.IGNORE))
        assert (m.state, action) == (want_state, want_action), (state, inp)
        if action == L.DEFER:
            assert m.take_deferred() == [(inp, ("arg",))]


def test_stop_while_attaching_waits_for_the_attach_then_stops():
    m = L.StreamMachine()
    assert m.state == L.ATTACHING
    assert m.on(L.STOP, "bye") == L.DEFER
    assert m.on(L.DTMF, "5", 100) == L.DEFER
    assert m.state == L.ATTACHING
    assert m.on(L.ATTACHED) == L.START
    replay = m.take_deferred()
    assert replay == [(L.STOP, ("bye",)), (L.DTMF, ("5", 100))]
    assert [m.on(i, *a) for i, a in replay] == [L.END, L.IGNORE]      # the digit comes after the end
    assert m.state == L.DRAINING


def test_a_failed_attach_drops_what_waited():
    m = L.StreamMachine()
    m.on(L.STOP)
    m.on(L.COMMAND)
    assert m.on(L.ATTACH_FAILED) == L.DISCARD and m.state == L.CLOSED
    assert len(m.take_deferred()) == 2        # the stream's DISCARD drops them


def test_a_finish_before_the_first_connection_is_replayed_when_it_opens():
    m = L.LinkMachine()
    assert m.on(L.FINISH, 1000) == L.DEFER
    assert m.on(L.OPENED) == L.L_CONNECTED
    assert [m.on(i, *a) for i, a in m.take_deferred()] == [L.L_DRAIN]
    assert m.state == L.L_CLOSING


MEDIA_ENDS = {L.END, L.GRACEFUL_END, L.MEDIA_OVER, L.ABANDON, L.GOING_AWAY}


def run_stream(inputs):
    """Feed inputs as stream.py does (replaying deferred ones at START); the actions taken."""
    m = L.StreamMachine()
    actions = []

    def feed(inp):
        action = m.on(inp)
        actions.append((inp, action, m.state))
        if action == L.START:
            for i, _ in m.take_deferred():
                feed(i)
    for inp in inputs:
        feed(inp)
    return m, actions


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(L.STREAM_INPUTS), max_size=30))
def test_stream_invariants_over_any_sequence(inputs):
    m, actions = run_stream(inputs)
    states = [s for _, _, s in actions]
    # the call's audio ends at most once (a live state is never entered again after it is left)
    media_ends = [a for _, a, _ in actions if a in MEDIA_ENDS and a != L.GOING_AWAY]
    assert len(media_ends) <= 1
    left_live = False
    for s in states:
        if left_live:
            assert s not in L.LIVE
        if s not in L.LIVE and s != L.ATTACHING:
            left_live = True
    # cleanup at most once, and closed is the end
    assert sum(a == L.CLEANUP for _, a, _ in actions) <= 1
    if L.CLOSED in states:
        assert all(s == L.CLOSED for s in states[states.index(L.CLOSED):])
    # nothing is carried out before the attach (only deferred)
    for inp, a, s in actions:
        if a == L.START:
            break
        assert a in (L.DEFER, L.IGNORE, L.DISCARD, L.REFUSE)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(L.LINK_INPUTS), max_size=30))
def test_link_closed_is_final(inputs):
    m = L.LinkMachine()
    closed = False
    for inp in inputs:
        action = m.on(inp)
        if closed:
            assert m.state == L.L_CLOSED and action == L.IGNORE
        closed = m.state == L.L_CLOSED


def test_tables_are_complete():
    for machine in (L.StreamMachine, L.LinkMachine):
        machine.check()
        broken = type("Broken", (machine,), {"TABLE": {s: {} for s in machine.STATES}})
        with pytest.raises(AssertionError):
            broken.check()
