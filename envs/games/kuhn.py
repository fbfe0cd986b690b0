"""Kuhn poker rules and text.

Three cards J < Q < K; each player antes 1 and is dealt one card, the third stays unseen.
Player 1 (seat 0, role "p1") acts first; one bet of 1 is allowed. The betting history is a
string of one-letter actions, and the letters are also the moves a player types:

    c  check, or call when facing a bet
    b  bet
    f  fold (only when facing a bet)

Decision points and their two legal moves, listed passive first, aggressive second (the
order `legal_moves` returns them in, so the aggressive one, bet or call, is always [1]):

    ""    p1 opens        c (check) | b (bet)
    "c"   p2 after check  c (check) | b (bet)
    "b"   p2 facing bet   f (fold)  | c (call)
    "cb"  p1 facing bet   f (fold)  | c (call)

Terminal histories and player 1's payoff, s = +1 when player 1's card is higher, else -1:
"cc" showdown of the antes: s; "bc" and "cbc" bet called: 2s; "bf": +1; "cbf": -1.

An observation is `{card}:{history}?`, the card the player to move holds, the history so far, and
"?" (your move): `K:cb?` is "you hold K; you checked, the opponent bet; f or c". These 12 texts
(6 per player) are exactly the information sets. The "?" keeps them apart from a context that
merely continues with a move: without it, player 2's first observation `K:c` would be the same
tokens as player 1's context after it checked, and a model could not tell whose turn it is. An illegal or unparsable move loses 2 chips, the most a
hand can lose, so that no illegal move is ever better for the mover than a legal line.
The task's seed fixes the deal: `DEALS[seed % 6]`, so consecutive seeds cycle through all six.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from envs.errors import EnvError

CARDS = "JQK"
"""In rank order, lowest first."""
CHECK_CALL, BET, FOLD = "c", "b", "f"
YOUR_MOVE = "?"
DEALS = tuple(a + b for a in CARDS for b in CARDS if a != b)
"""Player 1's card then player 2's: JQ, JK, QJ, QK, KJ, KQ."""
DECISION_HISTORIES = ("", "c", "b", "cb")
TERMINAL_HISTORIES = ("cc", "bc", "bf", "cbc", "cbf")
def infoset_text(card: str, history: str) -> str:
    return f"{card}:{history}{YOUR_MOVE}"


INFOSETS = tuple(tuple(infoset_text(card, h) for card in CARDS for h in DECISION_HISTORIES if len(h) % 2 == seat)
                 for seat in (0, 1))
"""Each player's 6 information-set texts, as `observe` renders them: INFOSETS[0] is player 1's."""

Strategy = Mapping[str, float]
"""One player's behaviour strategy: information-set text -> probability of the aggressive
move (bet where no bet is pending, call when facing one)."""


@dataclass(frozen=True)
class KuhnState:
    cards: str
    """Player 1's card then player 2's, e.g. "KQ"."""
    history: str = ""


def showdown_sign(cards: str) -> float:
    """+1 when player 1's card beats player 2's, else -1."""
    return 1.0 if CARDS.index(cards[0]) > CARDS.index(cards[1]) else -1.0


class KuhnPoker:
    name = "kuhn_poker"
    roles = ("p1", "p2")
    illegal_move_payoff = -2.0
    payoff_metric = "chips"
    alphabet = f"{CARDS}:{CHECK_CALL}{BET}{FOLD}{YOUR_MOVE}"

    def initial_state(self, seed: int) -> KuhnState:
        return KuhnState(DEALS[seed % len(DEALS)])

    def to_move(self, state: KuhnState) -> int:
        return len(state.history) % 2

    def legal_moves(self, state: KuhnState) -> tuple[str, ...]:
        if state.history in TERMINAL_HISTORIES:
            return ()
        return (FOLD, CHECK_CALL) if state.history.endswith(BET) else (CHECK_CALL, BET)

    def apply(self, state: KuhnState, move: str) -> KuhnState:
        if move not in self.legal_moves(state):
            raise EnvError(f"illegal kuhn_poker move {move!r} after history {state.history!r}; "
                           f"legal: {self.legal_moves(state)}")
        return KuhnState(state.cards, state.history + move)

    def outcome(self, state: KuhnState) -> tuple[float, float] | None:
        if state.history not in TERMINAL_HISTORIES:
            return None
        if state.history.endswith(FOLD):
            folder = (len(state.history) - 1) % 2
            p1 = 1.0 if folder == 1 else -1.0  # the folder loses its ante
        else:
            stake = 2.0 if BET in state.history else 1.0
            p1 = stake * showdown_sign(state.cards)
        return p1, -p1

    def observe(self, state: KuhnState, seat: int) -> str:
        return infoset_text(state.cards[seat], state.history)


KUHN_POKER = KuhnPoker()


def check_strategy(strategy: Strategy, seat: int) -> Strategy:
    """`strategy` if it covers exactly `seat`'s information sets with probabilities in [0, 1]."""
    if set(strategy) != set(INFOSETS[seat]):
        raise EnvError(f"a strategy of player {seat + 1} needs the information sets {INFOSETS[seat]}, "
                       f"got {tuple(sorted(strategy))}")
    for infoset, p in strategy.items():
        if not 0.0 <= p <= 1.0:  # also rejects NaN
            raise EnvError(f"probability of the aggressive move at {infoset!r} must be in [0, 1], got {p!r}")
    return strategy
