"""Board-state labels (empty / mine / theirs from the side to move), passes included."""

import numpy as np
import pytest

from saelab.sources.othello import engine as E
from saelab.sources.othello.games import board_states, generate_games, legal_moves, replay_games


def _reference(moves):
    """Labels [T, 64] and side to move [T] (0 black / 1 white) from the slow engine."""
    labs, tms = [], []
    last_mover = E.BLACK
    state = E.GameState()
    for sq in moves:
        last_mover = state.player
        state = state.play(sq)
        who = state.player if state.player is not None else E.opponent(last_mover)
        labs.append([0 if c == E.EMPTY else (1 if c == who else 2) for c in state.board])
        tms.append(0 if who == E.BLACK else 1)
    return np.array(labs), np.array(tms)


def _find_mid_game_pass(games, to_move):
    """Return (game, t) where the side to move after move t also moved at t (the other passed)."""
    n = (games >= 0).sum(1)
    for g in range(len(games)):
        mover = None
        for t in range(n[g] - 1):
            if mover is not None and to_move[g, t] == mover:
                return g, t
            mover = to_move[g, t]  # the side that plays move t + 1
    raise AssertionError("no pass found")


def test_labels_match_reference_engine():
    games = generate_games(120, seed=21)
    labels, to_move = board_states(games)
    assert labels.shape == (120, 60, 64) and labels.dtype == np.uint8
    for g in range(len(games)):
        moves = [int(s) for s in games[g] if s >= 0]
        ref_l, ref_t = _reference(moves)
        assert np.array_equal(labels[g, : len(moves)], ref_l)
        assert np.array_equal(to_move[g, : len(moves)], ref_t)
        assert (to_move[g, len(moves) :] == -1).all()


def test_first_position_is_seen_by_white():
    games = generate_games(50, seed=1)
    labels, to_move = board_states(games)
    assert (to_move[:, 0] == 1).all()  # black opened, white to move
    # Every opening move flips exactly one disc: black has 4, white (the side to move) has 1.
    assert ((labels[:, 0] == 2).sum(1) == 4).all() and ((labels[:, 0] == 1).sum(1) == 1).all()
    assert (labels[np.arange(50), 0, games[:, 0]] == 2).all()  # the square just played is "theirs"


def test_mine_and_theirs_follow_passes_not_move_parity():
    games = generate_games(400, seed=4)
    labels, to_move = board_states(games)
    g, t = _find_mid_game_pass(games, to_move)
    moves = [int(s) for s in games[g] if s >= 0]
    ref_l, ref_t = _reference(moves)
    assert np.array_equal(labels[g, : len(moves)], ref_l)
    # Right after the pass, the same side moves twice in a row ...
    assert to_move[g, t] == to_move[g, t - 1]
    # ... so the parity rule (white to move after even t) names the wrong side from here on:
    parity = t % 2 == 0  # True means parity says white is to move
    assert (to_move[g, t] == 1) != parity
    swapped = np.where(labels[g, t] == 0, 0, 3 - labels[g, t])
    assert not np.array_equal(labels[g, t], swapped)
    # The side to move after the pass really is the one holding the discs labelled "mine".
    board = E.replay(moves[: t + 1])[-1].board
    me = E.BLACK if to_move[g, t] == 0 else E.WHITE
    assert all((c == me) == (l == 1) for c, l in zip(board, labels[g, t]))
    assert E.legal_moves(board, E.opponent(me)) == []  # the opponent indeed had to pass


def test_legal_moves_match_reference():
    games = generate_games(60, seed=8)
    legal = legal_moves(games)
    for g in range(len(games)):
        moves = [int(s) for s in games[g] if s >= 0]
        for t, st in enumerate(E.replay(moves)):
            want = E.legal_moves(st.board, st.player) if st.player is not None else []
            assert np.nonzero(legal[g, t])[0].tolist() == want


def test_invalid_records_are_rejected():
    games = generate_games(5, seed=2)
    bad = games.copy()
    bad[1, 10] = bad[1, 9]  # replay an occupied square
    with pytest.raises(ValueError, match=r"games\[1, 10\]"):
        board_states(bad)
    cut = games.copy()
    cut[2, 30:] = -1  # stops while moves remain
    with pytest.raises(ValueError, match="legal move exists"):
        replay_games(cut)
    with pytest.raises(ValueError):
        board_states(np.full((2, 60), 70))
