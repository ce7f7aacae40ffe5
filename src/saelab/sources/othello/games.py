"""Vectorized random Othello games and board-state labels, using 64-bit bitboards in numpy.

Every operation acts on all games of a batch at once (one numpy op per direction per move),
so there is no Python loop per game. Bit i of a bitboard is square i (numbering as in
``engine.py``). Game records are int16 arrays [N, 60] of squares, -1 after the game ends;
a side with no legal move passes silently and the record continues with the opponent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from saelab.sources.othello.engine import MAX_MOVES

BLACK_TO_MOVE, WHITE_TO_MOVE, NO_POSITION = 0, 1, -1
LABEL_EMPTY, LABEL_MINE, LABEL_THEIRS = 0, 1, 2

_U = np.uint64
_ONE = _U(1)
_NOT_A = _U(0xFEFEFEFEFEFEFEFE)  # every square except column a (col 0)
_NOT_H = _U(0x7F7F7F7F7F7F7F7F)  # every square except column h (col 7)
_ALL = _U(0xFFFFFFFFFFFFFFFF)
# Start: black on 28 and 35, white on 27 and 36.
_BLACK0 = _U((1 << 28) | (1 << 35))
_WHITE0 = _U((1 << 27) | (1 << 36))
# (shift left?, amount, mask that drops bits which wrapped around a row edge)
_DIRECTIONS = (
    (True, 1, _NOT_A),  # east
    (False, 1, _NOT_H),  # west
    (True, 8, _ALL),  # south
    (False, 8, _ALL),  # north
    (True, 9, _NOT_A),  # south-east
    (True, 7, _NOT_H),  # south-west
    (False, 7, _NOT_A),  # north-east
    (False, 9, _NOT_H),  # north-west
)
_CHUNK = 8192  # games per vectorized batch; bounds memory of the [chunk, 64] temporaries


def _shift(b: np.ndarray, left: bool, amount: int, mask: np.uint64) -> np.ndarray:
    return ((b << _U(amount)) if left else (b >> _U(amount))) & mask


def legal_bitboard(own: np.ndarray, opp: np.ndarray) -> np.ndarray:
    """Return a bitboard of the legal moves of the side owning `own` (uint64 arrays)."""
    empty = ~(own | opp)
    moves = np.zeros_like(own)
    for left, k, mask in _DIRECTIONS:
        run = _shift(own, left, k, mask) & opp
        # An opposing run is at most 6 discs long, so 5 more extensions reach its end.
        for _ in range(5):
            run |= _shift(run, left, k, mask) & opp
        moves |= _shift(run, left, k, mask) & empty
    return moves


def flip_bitboard(own: np.ndarray, opp: np.ndarray, move: np.ndarray) -> np.ndarray:
    """Return the discs flipped when the side owning `own` plays the single-bit `move`."""
    flipped = np.zeros_like(own)
    for left, k, mask in _DIRECTIONS:
        run = _shift(move, left, k, mask) & opp
        for _ in range(5):
            run |= _shift(run, left, k, mask) & opp
        # The contiguous opposing run flips only if the square beyond it is the mover's.
        closed = (_shift(run, left, k, mask) & own) != 0
        flipped |= np.where(closed, run, _U(0))
    return flipped


def bits_to_bool(b: np.ndarray) -> np.ndarray:
    """Expand uint64 bitboards [...] into bool arrays [..., 64] indexed by square."""
    b = np.ascontiguousarray(b, dtype="<u8")
    by = b.view(np.uint8).reshape(*b.shape, 8)
    return np.unpackbits(by, axis=-1, bitorder="little").astype(bool)


def _generate_chunk(n: int, rng: np.random.Generator) -> np.ndarray:
    own = np.full(n, _BLACK0, dtype=np.uint64)  # side to move
    opp = np.full(n, _WHITE0, dtype=np.uint64)
    out = np.full((n, MAX_MOVES), -1, dtype=np.int16)
    alive = np.ones(n, dtype=bool)
    for t in range(MAX_MOVES):
        legal = legal_bitboard(own, opp)
        stuck = np.nonzero(alive & (legal == 0))[0]
        if stuck.size:
            # The side to move passes: hand the turn over, and end games where neither can move.
            own[stuck], opp[stuck] = opp[stuck], own[stuck].copy()
            legal[stuck] = legal_bitboard(own[stuck], opp[stuck])
            alive[stuck[legal[stuck] == 0]] = False
        if not alive.any():
            break
        # A uniformly random key per legal square; the argmax is a uniform legal move.
        keys = rng.random((n, 64), dtype=np.float32)
        keys[~bits_to_bool(legal)] = -1.0
        sq = keys.argmax(axis=1)
        move = np.where(alive, _ONE << sq.astype(np.uint64), _U(0))
        f = flip_bitboard(own, opp, move)
        new_own = own | move | f
        new_opp = opp & ~f
        own, opp = new_opp, new_own
        out[:, t] = np.where(alive, sq, -1)
    return out


def generate_games(n: int, seed: int) -> np.ndarray:
    """Return `n` random games as int16 [n, 60] squares (-1 after the end), deterministic in seed."""
    if n < 0:
        raise ValueError(f"n={n}: must be >= 0")
    rng = np.random.default_rng(seed)
    parts = [_generate_chunk(min(_CHUNK, n - i), rng) for i in range(0, n, _CHUNK)]
    if not parts:
        return np.full((0, MAX_MOVES), -1, dtype=np.int16)
    return np.concatenate(parts, axis=0)


@dataclass
class Replay:
    """Per-position facts of replayed games; position t is the state right after move t.

    labels:  uint8 [N, 60, 64], 0 empty / 1 mine / 2 theirs, "mine" = the player to move next.
    to_move: int8 [N, 60], 0 black / 1 white to move next, -1 where move t does not exist.
             After the final move it names the mover's opponent (nominal: nobody can move).
    legal:   bool [N, 60, 64], legal squares for the player to move next (all False at the end).
    Positions past the end of a game repeat the final state's labels; mask them with to_move.
    """

    labels: np.ndarray
    to_move: np.ndarray
    legal: np.ndarray


def _replay_chunk(games: np.ndarray, offset: int, want_labels: bool, want_legal: bool):
    n, T = games.shape
    own = np.full(n, _BLACK0, dtype=np.uint64)  # side that plays the next recorded move
    opp = np.full(n, _WHITE0, dtype=np.uint64)
    colour = np.zeros(n, dtype=np.int8)  # colour of `own`: 0 black, 1 white
    legal = legal_bitboard(own, opp)
    alive = np.ones(n, dtype=bool)
    labels = np.zeros((n, T, 64), dtype=np.uint8) if want_labels else None
    legal_out = np.zeros((n, T, 64), dtype=bool) if want_legal else None
    to_move = np.full((n, T), NO_POSITION, dtype=np.int8)
    for t in range(T):
        sq = games[:, t].astype(np.int64)
        played = sq >= 0
        bad = played & ~alive
        if bad.any():
            g = int(np.nonzero(bad)[0][0]) + offset
            raise ValueError(f"games[{g}, {t}]={int(sq[g - offset])}: move after the game ended")
        ended_early = alive & ~played
        if ended_early.any() and (legal[ended_early] != 0).any():
            g = int(np.nonzero(ended_early & (legal != 0))[0][0]) + offset
            raise ValueError(f"games[{g}, {t}]=-1: record stops while a legal move exists")
        alive = played
        if not alive.any():
            if want_labels:
                labels[:, t:] = labels[:, t - 1 : t] if t else 0
            break
        move = np.where(alive, _ONE << np.where(alive, sq, 0).astype(np.uint64), _U(0))
        illegal = alive & ((move & legal) == 0)
        if illegal.any():
            g = int(np.nonzero(illegal)[0][0])
            raise ValueError(f"games[{g + offset}, {t}]={int(sq[g])}: illegal move")
        f = flip_bitboard(own, opp, move)
        mover, other = own | move | f, opp & ~f
        mover = np.where(alive, mover, own)
        other = np.where(alive, other, opp)
        # Normally the opponent moves next; if it has no move, the same side moves again.
        own, opp = np.where(alive, other, mover), np.where(alive, mover, other)
        colour = np.where(alive, 1 - colour, colour).astype(np.int8)
        legal = legal_bitboard(own, opp)
        passes = np.nonzero(alive & (legal == 0))[0]
        if passes.size:
            back = legal_bitboard(opp[passes], own[passes])
            swap = passes[back != 0]
            own[swap], opp[swap] = opp[swap], own[swap].copy()
            colour[swap] = 1 - colour[swap]
            legal[swap] = back[back != 0]
        to_move[:, t] = np.where(alive, colour, NO_POSITION)
        if want_labels:
            lab = bits_to_bool(own).astype(np.uint8) + 2 * bits_to_bool(opp).astype(np.uint8)
            # Finished games keep their final state so padded positions stay well defined.
            labels[:, t] = np.where(alive[:, None], lab, labels[:, t - 1] if t else lab)
        if want_legal:
            legal_out[:, t] = bits_to_bool(np.where(alive, legal, _U(0)))
    return labels, to_move, legal_out


def replay_games(games: np.ndarray, labels: bool = True, legal: bool = True) -> Replay:
    """Replay records (passes included) and return per-position labels, side to move and legal moves."""
    games = np.asarray(games)
    if games.ndim != 2 or games.shape[1] > MAX_MOVES:
        raise ValueError(f"games.shape={games.shape}: expected [N, <=60]")
    if games.size and (games.min() < -1 or games.max() > 63):
        raise ValueError(f"games: squares must lie in -1..63, got {games.min()}..{games.max()}")
    labs, tms, legs = [], [], []
    for i in range(0, max(len(games), 1), _CHUNK):
        lab, tm, leg = _replay_chunk(games[i : i + _CHUNK], i, labels, legal)
        labs.append(lab)
        tms.append(tm)
        legs.append(leg)
    return Replay(
        labels=np.concatenate(labs) if labels else None,
        to_move=np.concatenate(tms),
        legal=np.concatenate(legs) if legal else None,
    )


def board_states(games: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (labels uint8 [N,60,64] 0 empty/1 mine/2 theirs, to_move int8 [N,60]) per position."""
    r = replay_games(games, labels=True, legal=False)
    return r.labels, r.to_move


def legal_moves(games: np.ndarray) -> np.ndarray:
    """Return bool [N, 60, 64]: legal squares for the side to move after each move."""
    return replay_games(games, labels=False, legal=True).legal
