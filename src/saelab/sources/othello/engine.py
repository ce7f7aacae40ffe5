"""Reference Othello rules: a slow, scalar, obviously-correct implementation.

Squares are numbered 0..63 row-major from the top-left: a1 = 0, b1 = 1, ..., h1 = 7,
a2 = 8, ..., h8 = 63 (row = square // 8, column = square % 8). Cells hold EMPTY, BLACK
or WHITE. Black moves first from the standard position: white on 27 and 36, black on
28 and 35. The vectorized generator in ``games.py`` is tested against this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

EMPTY, BLACK, WHITE = 0, 1, 2
N_SQUARES = 64
MAX_MOVES = 60
START_SQUARES = (27, 28, 35, 36)
DIRECTIONS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def opponent(player: int) -> int:
    """Return the other colour."""
    return WHITE if player == BLACK else BLACK


def initial_board() -> list[int]:
    """Return the standard starting position as a list of 64 cells."""
    board = [EMPTY] * N_SQUARES
    board[27] = WHITE
    board[36] = WHITE
    board[28] = BLACK
    board[35] = BLACK
    return board


def flips(board: list[int], player: int, square: int) -> list[int]:
    """Return the squares flipped if `player` plays `square` (empty list: not a legal move)."""
    if board[square] != EMPTY:
        return []
    row, col = divmod(square, 8)
    them = opponent(player)
    flipped: list[int] = []
    for dr, dc in DIRECTIONS:
        run: list[int] = []
        r, c = row + dr, col + dc
        while 0 <= r < 8 and 0 <= c < 8 and board[r * 8 + c] == them:
            run.append(r * 8 + c)
            r, c = r + dr, c + dc
        # A run only flips when it is closed by one of the mover's own discs.
        if run and 0 <= r < 8 and 0 <= c < 8 and board[r * 8 + c] == player:
            flipped.extend(run)
    return flipped


def legal_moves(board: list[int], player: int) -> list[int]:
    """Return the sorted legal squares for `player`."""
    return [sq for sq in range(N_SQUARES) if flips(board, player, sq)]


def apply_move(board: list[int], player: int, square: int) -> list[int]:
    """Return a new board after `player` plays the legal move `square`."""
    flipped = flips(board, player, square)
    if not flipped:
        raise ValueError(f"square={square}: not a legal move for player {player}")
    new = list(board)
    new[square] = player
    for sq in flipped:
        new[sq] = player
    return new


@dataclass
class GameState:
    """A position plus whose turn it is; `player` is None once neither side can move."""

    board: list[int] = field(default_factory=initial_board)
    player: int | None = BLACK

    def play(self, square: int) -> "GameState":
        """Play `square` for the side to move and hand the turn on, skipping a side with no move."""
        if self.player is None:
            raise ValueError(f"square={square}: the game is over")
        board = apply_move(self.board, self.player, square)
        them = opponent(self.player)
        if legal_moves(board, them):
            nxt: int | None = them
        elif legal_moves(board, self.player):
            nxt = self.player  # the opponent passes; the record just continues
        else:
            nxt = None
        return GameState(board, nxt)


def replay(moves) -> list[GameState]:
    """Return the state after each move of a record (entries < 0 end the record)."""
    state = GameState()
    states = []
    for sq in moves:
        if sq < 0:
            break
        state = state.play(int(sq))
        states.append(state)
    return states


def random_game(rng: np.random.Generator) -> list[int]:
    """Play one game with each move uniform among the legal moves; return the move list."""
    state = GameState()
    moves: list[int] = []
    while state.player is not None:
        options = legal_moves(state.board, state.player)
        sq = options[int(rng.integers(len(options)))]
        moves.append(sq)
        state = state.play(sq)
    return moves
