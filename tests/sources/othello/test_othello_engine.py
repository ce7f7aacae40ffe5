"""The vectorized Othello generator against the slow reference engine and against the rules."""

import time

import numpy as np
import pytest

from saelab.sources.othello import engine as E
from saelab.sources.othello import games as G


def _bitboard(board, colour):
    return np.uint64(sum(1 << i for i, c in enumerate(board) if c == colour))


def _moves(row):
    return [int(s) for s in row if s >= 0]


def test_start_position_and_first_moves():
    b = E.initial_board()
    assert [i for i, c in enumerate(b) if c == E.WHITE] == [27, 36]
    assert [i for i, c in enumerate(b) if c == E.BLACK] == [28, 35]
    assert E.legal_moves(b, E.BLACK) == [19, 26, 37, 44]


def test_generated_games_are_legal_complete_games_for_the_reference():
    games = G.generate_games(150, seed=11)
    for row in games:
        moves = _moves(row)
        # The record is a prefix of moves followed only by padding.
        assert (row[len(moves) :] == -1).all()
        states = E.replay(moves)  # raises if any move is illegal for the side the rules give
        assert states[-1].player is None  # ended exactly when neither side could move
        final = states[-1].board
        assert not E.legal_moves(final, E.BLACK) and not E.legal_moves(final, E.WHITE)


def test_generator_format_and_determinism():
    a = G.generate_games(300, seed=5)
    assert a.shape == (300, 60) and np.issubdtype(a.dtype, np.integer)
    assert np.array_equal(a, G.generate_games(300, seed=5))
    assert not np.array_equal(a, G.generate_games(300, seed=6))
    for row in a:
        m = _moves(row)
        assert len(set(m)) == len(m)
        assert not set(m) & set(E.START_SQUARES)
    assert G.generate_games(0, seed=1).shape == (0, 60)


def test_first_move_is_uniform_among_legal_moves():
    first = G.generate_games(4000, seed=3)[:, 0]
    counts = np.array([(first == s).sum() for s in (19, 26, 37, 44)])
    assert counts.sum() == 4000
    chi2 = ((counts - 1000) ** 2 / 1000).sum()
    assert chi2 < 16.3  # p = 0.001 for 3 degrees of freedom


def test_vectorized_legal_moves_and_flips_match_reference_on_random_positions():
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(40):
        moves = E.random_game(rng)
        state = E.GameState()
        for sq in moves:
            p = state.player
            own = np.array([_bitboard(state.board, p)])
            opp = np.array([_bitboard(state.board, E.opponent(p))])
            legal = G.bits_to_bool(G.legal_bitboard(own, opp))[0]
            assert sorted(np.nonzero(legal)[0].tolist()) == E.legal_moves(state.board, p)
            flipped = G.bits_to_bool(G.flip_bitboard(own, opp, np.array([np.uint64(1) << np.uint64(sq)])))[0]
            assert sorted(np.nonzero(flipped)[0].tolist()) == sorted(E.flips(state.board, p, sq))
            state = state.play(sq)
            checked += 1
    assert checked > 1000


def test_disc_counts_and_flips_only_along_closed_lines():
    rng = np.random.default_rng(1)
    for _ in range(30):
        state = E.GameState()
        for n_moves, sq in enumerate(E.random_game(rng), start=1):
            p, before = state.player, state.board
            flipped = E.flips(before, p, sq)
            state = state.play(sq)
            after = state.board
            assert sum(c != E.EMPTY for c in after) == 4 + n_moves
            assert after.count(p) == before.count(p) + 1 + len(flipped)
            assert after.count(E.opponent(p)) == before.count(E.opponent(p)) - len(flipped)
            # Every flipped disc lies on one of the 8 rays from the move, and on each ray the
            # flipped discs are a run starting next to the move and closed by a mover's disc.
            r0, c0 = divmod(sq, 8)
            on_rays = set()
            for dr, dc in E.DIRECTIONS:
                ray = []
                r, c = r0 + dr, c0 + dc
                while 0 <= r < 8 and 0 <= c < 8:
                    ray.append(r * 8 + c)
                    r, c = r + dr, c + dc
                k = 0
                while k < len(ray) and ray[k] in flipped:
                    k += 1
                assert not set(ray[k:]) & set(flipped)
                if k:
                    assert k < len(ray) and before[ray[k]] == p
                on_rays.update(ray[:k])
            assert on_rays == set(flipped)
            changed = {i for i in range(64) if before[i] != after[i]}
            assert changed == set(flipped) | {sq}


def test_no_legal_move_at_the_end_of_generated_games():
    games = G.generate_games(2000, seed=9)
    r = G.replay_games(games, labels=True, legal=True)
    length = (games >= 0).sum(1)
    last = r.legal[np.arange(len(games)), length - 1]
    assert not last.any()
    # Both sides are stuck: check the final board from each side with the bitboard engine.
    final = r.labels[np.arange(len(games)), length - 1]
    mine = np.array([_bitboard(list(b), 1) for b in final])
    theirs = np.array([_bitboard(list(b), 2) for b in final])
    assert (G.legal_bitboard(mine, theirs) == 0).all() and (G.legal_bitboard(theirs, mine) == 0).all()


@pytest.mark.slow
def test_generator_speed_at_least_3000_games_per_second():
    G.generate_games(1000, seed=0)
    t = time.perf_counter()
    G.generate_games(20_000, seed=1)
    assert 20_000 / (time.perf_counter() - t) >= 3000
