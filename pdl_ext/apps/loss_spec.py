"""Loss specs: a training loss written as a weighted sum of named terms, e.g. ``"l1+0.1*pdl"``.

The demo (``pdl-ext demo --losses "l1,l1+0.1*pdl,mdf"``) compares several such specs; this module
parses them and sums the terms' values once each term has been built as a callable.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Tuple

import torch
from torch import nn

# The terms a spec may name: pixel losses, then the perceptual ones.
TERMS: Tuple[str, ...] = ("l1", "l2", "charbonnier", "pdl", "mdf", "nima")
PIXEL_TERMS: Tuple[str, ...] = ("l1", "l2", "charbonnier")

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class LossTerm:
    """One term of a spec: ``weight * name``."""

    name: str
    weight: float = 1.0

    def __str__(self) -> str:
        return self.name if self.weight == 1.0 else f"{self.weight:g}*{self.name}"


@dataclass(frozen=True)
class LossSpec:
    """A parsed spec: its terms in the order written. ``str(spec)`` is the canonical text."""

    terms: Tuple[LossTerm, ...]

    @property
    def names(self) -> Tuple[str, ...]:
        return tuple(t.name for t in self.terms)

    @property
    def is_pixel_only(self) -> bool:
        """True when every term is a pixel loss (the baseline the distribution losses are compared with)."""
        return all(n in PIXEL_TERMS for n in self.names)

    def __str__(self) -> str:
        return "+".join(str(t) for t in self.terms)


def _parse_weight(text: str, term: str, spec: str) -> float:
    try:
        w = float(text)
    except ValueError:
        raise ValueError(f"loss spec {spec!r}: weight {text!r} of term {term!r} is not a number") from None
    if not math.isfinite(w) or w <= 0:
        raise ValueError(f"loss spec {spec!r}: weight of term {term!r} must be a finite number > 0, got {text!r}")
    return w


def parse_loss_spec(spec: str) -> LossSpec:
    """Parses ``"TERM"``, ``"WEIGHT*TERM"`` and their sums with ``+``, e.g. ``"l1+0.1*pdl"``.

    Args:
        spec: terms from ``TERMS`` (case-insensitive; spaces ignored), each optionally preceded by a
            positive weight and ``*``; a term may appear once.

    Returns:
        The ``LossSpec``.

    Raises:
        ValueError: an unknown term (the message lists the valid ones), a weight that is not a finite
            number > 0, an empty term, a repeated term.

    Example:
        >>> from pdl_ext.apps.loss_spec import parse_loss_spec
        >>> parse_loss_spec("l1 + 0.1*PDL").terms
        (LossTerm(name='l1', weight=1.0), LossTerm(name='pdl', weight=0.1))
    """
    if not isinstance(spec, str):
        raise TypeError(f"parse_loss_spec: spec must be a str, got {type(spec).__name__}")
    text = "".join(spec.split()).lower()
    if not text:
        raise ValueError(f"loss spec {spec!r} is empty; write terms like 'l1' or 'l1+0.1*pdl' (terms: {', '.join(TERMS)})")
    terms: List[LossTerm] = []
    for part in text.split("+"):
        if not part:
            raise ValueError(f"loss spec {spec!r} has an empty term (a '+' with nothing on one side)")
        if "*" in part:
            weight_text, _, name = part.partition("*")
            if "*" in name:
                raise ValueError(f"loss spec {spec!r}: term {part!r} must be TERM or WEIGHT*TERM")
            if _NAME.fullmatch(weight_text) and not _NAME.fullmatch(name):
                raise ValueError(f"loss spec {spec!r}: write the weight first, as in {name}*{weight_text}, got {part!r}")
        else:
            weight_text, name = "", part
        if name not in TERMS:
            raise ValueError(f"loss spec {spec!r}: unknown term {name!r}; valid terms: {', '.join(TERMS)}")
        weight = _parse_weight(weight_text, name, spec) if weight_text or "*" in part else 1.0
        if name in (t.name for t in terms):
            raise ValueError(f"loss spec {spec!r}: term {name!r} appears twice; give it once with the summed weight")
        terms.append(LossTerm(name, weight))
    return LossSpec(tuple(terms))


def parse_loss_specs(text: str) -> List[LossSpec]:
    """Parses a comma-separated list of specs, e.g. ``"l1,l1+0.1*pdl,mdf"``; repeated specs are an error.

    Example:
        >>> from pdl_ext.apps.loss_spec import parse_loss_specs
        >>> [str(s) for s in parse_loss_specs("l1, l1+0.1*pdl")]
        ['l1', 'l1+0.1*pdl']
    """
    if not isinstance(text, str):
        raise TypeError(f"parse_loss_specs: text must be a str, got {type(text).__name__}")
    specs: List[LossSpec] = []
    for part in text.split(","):
        if not part.strip():
            raise ValueError(f"loss list {text!r} has an empty entry; separate specs with single commas")
        spec = parse_loss_spec(part)
        if any(str(s) == str(spec) for s in specs):
            raise ValueError(f"loss list {text!r} names {str(spec)!r} twice")
        specs.append(spec)
    return specs


TermFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class WeightedSumLoss(nn.Module):
    """The value of a ``LossSpec``: the weighted sum of its terms, each a callable ``(out, ref) -> scalar``.

    Args:
        spec: a ``LossSpec`` or its text.
        term_fns: a callable per term the spec names (``nn.Module`` ones are registered as submodules,
            so ``.to(device)`` moves them).

    Shapes: ``out``, ``ref``: ``(B, 3, H, W)``. Output: a scalar; ``last_values`` then holds each
    term's unweighted value (detached), for logging.

    Example:
        >>> import torch
        >>> from pdl_ext.apps.loss_spec import WeightedSumLoss
        >>> loss = WeightedSumLoss("l1+0.5*l2", {"l1": lambda a, b: (a - b).abs().mean(),
        ...                                       "l2": lambda a, b: (a - b).pow(2).mean()})
        >>> loss(torch.zeros(1, 3, 2, 2), torch.ones(1, 3, 2, 2))
        tensor(1.5000)
    """

    def __init__(self, spec: "LossSpec | str", term_fns: Mapping[str, TermFn]) -> None:
        super().__init__()
        self.spec = parse_loss_spec(spec) if isinstance(spec, str) else spec
        missing = [n for n in self.spec.names if n not in term_fns]
        if missing:
            raise ValueError(f"WeightedSumLoss: no function given for term(s) {missing} of {str(self.spec)!r}")
        self._fns: Dict[str, TermFn] = {n: term_fns[n] for n in self.spec.names}
        self.modules_by_term = nn.ModuleDict({n: f for n, f in self._fns.items() if isinstance(f, nn.Module)})
        self.last_values: Dict[str, torch.Tensor] = {}

    def forward(self, out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        total = None
        values: Dict[str, torch.Tensor] = {}
        for term in self.spec.terms:
            v = self._fns[term.name](out, ref)
            values[term.name] = v.detach()
            total = term.weight * v if total is None else total + term.weight * v
        self.last_values = values  # tensors: reading them (a host sync) is left to the caller
        return total

    def extra_repr(self) -> str:
        return f"spec={str(self.spec)!r}"
