"""Draft proposals for greedy decoding (pure: no model)."""

from __future__ import annotations

from codellama_lsp.engine.lookup import LookupDrafter


def test_proposes_what_followed_the_latest_earlier_occurrence_of_the_tail_bigram() -> None:
    d = LookupDrafter([1, 2, 3, 4, 9, 1, 2, 5, 6, 7, 1, 2])
    assert d.propose(3) == [5, 6, 7]  # the later (1, 2) wins over the first one
    assert d.propose(1) == [5]
    assert d.propose(0) == []


def test_the_tail_itself_is_never_a_match() -> None:
    assert LookupDrafter([7, 8, 9, 1, 2]).propose(4) == []
    assert LookupDrafter([5]).propose(4) == []


def test_appending_makes_the_old_tail_searchable() -> None:
    d = LookupDrafter([1, 2])
    assert d.propose(4) == []
    for t in (3, 1, 2):
        d.append(t)
    assert d.sequence == [1, 2, 3, 1, 2]
    assert d.propose(4) == [3, 1, 2]  # a repetition loop proposes its own next period


def test_history_bigram_wins_over_the_sequence() -> None:
    d = LookupDrafter([1, 2, 3, 1, 2], history=[1, 2, 8, 9])
    assert d.propose(4) == [8, 9]


def test_history_single_token_is_the_last_resort() -> None:
    # After a keystroke the prompt's tail is retokenised: only the newest token matches the old suggestion.
    d = LookupDrafter([40, 41, 42, 5], history=[30, 5, 6, 7])
    assert d.propose(2) == [6, 7]
    d.append(6)  # (5, 6) now matches in the history as a bigram
    assert d.propose(5) == [7]
    assert LookupDrafter([40, 41, 42, 5], history=[30, 5]).propose(2) == []  # nothing after it
