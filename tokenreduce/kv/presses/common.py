"""Helpers shared by several presses: window checks, the always-kept recent window, and scorers composed
into other presses (``AdaKV(scorer=SnapKV(window=64, kernel=11))``)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from torch import Tensor

from ...registry import check_range
from .base import (
    REGISTRY,
    ChannelPress,
    DecodeTimePress,
    LayerView,
    MergingPress,
    MixedPrecisionPress,
    Press,
    RaggedPress,
    ReconstructionPress,
    ScoringPress,
    Shape,
    make_press,
)


def check_window(owner: str, window: int, kernel: int | None = None) -> None:
    """An observation window of >= 1 queries and an odd pooling kernel >= 1 (SnapKV's max-pooling keeps
    the length only for odd kernels)."""
    check_range(owner, "window", window, 1, hint=" (queries in the observation window)")
    if kernel is not None and (kernel < 1 or kernel % 2 == 0):
        raise ValueError(f"{owner}: kernel must be an odd int >= 1 (1 = no pooling), got {kernel!r}")


def recent_bonus(view: LayerView, scores: Tensor, count: Tensor) -> Tensor:
    """+inf on the last ``count[b]`` real tokens of each row (a per-row recent window, always kept)."""
    rank_from_end = view.valid.flip(-1).long().cumsum(-1).flip(-1)  # 1 = last real token
    recent = view.valid & (rank_from_end <= count[:, None])
    return scores.masked_fill(recent[:, None, :], float("inf"))


# Why a press cannot score for another one (checked in this order).
_NOT_A_SCORER: list[tuple[type[Press], str]] = [
    (ReconstructionPress, "it scores with a second pass over the whole context, not from one layer's view"),
    (RaggedPress, "it redistributes the budget between heads or layers (ragged storage), it does not just score"),
    (DecodeTimePress, "it compresses during decoding, it does not just score"),
    (MixedPrecisionPress, "it stores entries in mixed precision, it does not just score"),
    (ChannelPress, "it prunes key channels, it does not just score"),
    (MergingPress, "it merges evicted entries into kept ones, it does not just score"),
]


def scorer_problem(press: Press) -> str | None:
    """Why ``press`` cannot score entries for another press, or None: a scorer must be a plain per-entry
    :class:`ScoringPress` (no budget redistribution, decode-time, mixed-precision or second-pass capability)."""
    for capability, why in _NOT_A_SCORER:
        if isinstance(press, capability):
            return why
    return None if isinstance(press, ScoringPress) else "it does not score a layer's entries"


def compose_scorer(owner: Press, scorer: ScoringPress | str, **params: int | None) -> ScoringPress:
    """``scorer`` as a press object for ``owner``, checked at construction.

    A name becomes that press with ``params`` (the owner's shortcuts such as AdaKV's ``window``/``kernel``;
    None = the scorer's default), which the scorer must have. An object is used as given, so ``params``
    must all be None then (set them on the object). The scorer's ``keep`` becomes the owner's (budgets are
    the owner's); its ``sinks``/``recent`` must be its defaults (the owner protects tokens)."""
    given = {k: v for k, v in params.items() if v is not None}
    if isinstance(scorer, str):
        names = {f.name for f in fields(REGISTRY.get(scorer))}
        missing = sorted(set(given) - names)
        if missing:
            raise ValueError(f"{owner.name}: scorer {scorer} has no {', '.join(missing)} (given to {owner.name})")
        made = make_press(scorer, keep=owner.keep, **given)
    elif given:
        raise ValueError(f"{owner.name}: {'/'.join(sorted(given))} only apply to a scorer given by name; with a "
                         "scorer object set them on it, e.g. SnapKV(window=..., kernel=...)")
    elif isinstance(scorer, Press):
        made = scorer
    else:
        raise ValueError(f"{owner.name}: scorer must be a press or a press name, got {scorer!r}")
    problem = scorer_problem(made)
    if problem is not None or not isinstance(made, ScoringPress):
        raise ValueError(f"{owner.name}: scorer {made.name} cannot score for {owner.name}: {problem}")
    defaults = {f.name: f.default for f in fields(made)}
    if (made.sinks, made.recent) != (defaults["sinks"], defaults["recent"]):
        raise ValueError(f"{owner.name}: set sinks/recent on {owner.name}, not on its scorer {made.name} "
                         "(the scorer only scores; the press it scores for protects tokens)")
    return made if made.keep == owner.keep else replace(made, keep=owner.keep)


@dataclass(frozen=True)
class BudgetPress(RaggedPress, ScoringPress):
    """Base of the presses that redistribute the budget (AdaKV per head, PyramidKV per layer): the entries
    are scored by ``scorer`` (any plain :class:`ScoringPress`, or its name), kept per head in ragged storage.

    ``window``/``kernel`` configure the scorer when it is given by name (SnapKV by default; None = the
    scorer's default); with a scorer object they must stay None. After construction ``scorer`` is always
    the press object and ``window``/``kernel`` are None, so ``AdaKV(scorer=SnapKV(kernel=11))`` equals
    ``AdaKV(kernel=11)``.
    """

    scorer: ScoringPress | str = "snapkv"  # a name becomes the press object at construction
    window: int | None = None
    kernel: int | None = None
    min_share: float = 1.0  # per-head floor as a share of an even split (1.0 = equal heads)

    query_aware = True

    def __post_init__(self) -> None:
        super().__post_init__()
        for f, v in (("window", self.window), ("kernel", self.kernel)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
                raise ValueError(f"{self.name}: {f} must be an int (None = the scorer's default), got {v!r}")
        check_window(self.name, 1 if self.window is None else self.window, self.kernel)
        scorer = compose_scorer(self, self.scorer, window=self.window, kernel=self.kernel)
        object.__setattr__(self, "scorer", scorer)
        object.__setattr__(self, "window", None)
        object.__setattr__(self, "kernel", None)

    def score(self, view: LayerView) -> Tensor:
        assert isinstance(self.scorer, ScoringPress)  # made a press in __post_init__
        return self.scorer.score(view)

    def scoring_macs(self, shape: Shape, n: int) -> int:
        """The scorer's (sharing the budget between heads or layers is a sort, not a matmul)."""
        assert isinstance(self.scorer, ScoringPress)
        return self.scorer.scoring_macs(shape, n)
