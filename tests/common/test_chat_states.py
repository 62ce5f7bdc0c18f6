"""The transition table's checks say what is wrong in words (tests/graph/test_records.py walks every pair)."""

from __future__ import annotations

import pytest

from wgs.common import chat_states as cs
from wgs.common.errors import FailedPrecondition


def test_an_illegal_transition_names_both_states_and_the_legal_ones() -> None:
    with pytest.raises(FailedPrecondition) as err:
        cs.check(cs.EXITED, cs.RUNNING, ".chat-3")
    assert err.value.message == ("chat .chat-3: illegal state transition EXITED -> RUNNING; from EXITED a chat can "
                                 "go to STARTING, STOPPED")
    with pytest.raises(FailedPrecondition) as err:
        cs.check(cs.UNSPECIFIED, cs.RUNNING)
    assert err.value.message == ("illegal state transition UNSPECIFIED -> RUNNING; from UNSPECIFIED a chat can go "
                                 "to STARTING")


def test_an_unknown_state_is_named_by_its_number_and_goes_nowhere() -> None:
    assert cs.name(99) == "99" and cs.name(cs.BACKOFF) == "BACKOFF"
    with pytest.raises(FailedPrecondition) as err:
        cs.check(99, cs.STARTING)
    assert err.value.message == "illegal state transition 99 -> STARTING; from 99 a chat can go to nothing"


def test_legal_transitions_pass() -> None:
    for source, target in cs.TRANSITIONS:
        cs.check(source, target)
