"""A sweep's overrides as an Optuna search space: Hydra's override grammar gives `interval(...)`, `choice(...)`,
`range(...)` and `a,b,c` as sweep objects; each becomes an Optuna distribution, every other override is passed to
each trial as it is.

    optim.lr=tag(log, interval(1e-4, 1e-2))   FloatDistribution(1e-4, 1e-2, log=True)
    model.n_layer=tag(int, interval(2, 8))    IntDistribution(2, 8)       (`int`: whole numbers, as Hydra's plugin)
    optim.warmup_iters=range(0,200,50)        IntDistribution(0, 150, step=50): ordered, so TPE can model it
    model.n_layer=choice(2,4,6)  or  2,4,6    CategoricalDistribution([2, 4, 6])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep

from nanogpt.errors import UserError


@dataclass
class SearchSpace:
    fixed: list[str]  # overrides every trial gets as they are
    distributions: dict[str, Any] = field(default_factory=dict)  # key -> optuna distribution
    # key -> {choice: its override text}: a choice is told to Optuna as its value, given to Hydra as typed
    choice_text: dict[str, dict[Any, str]] = field(default_factory=dict)

    def overrides(self, params: dict[str, Any]) -> list[str]:
        """One trial's overrides: the fixed ones, then its sampled parameters."""
        sampled = [f"{k}={self.choice_text.get(k, {}).get(v, _number_text(v))}" for k, v in params.items()]
        return [*self.fixed, *sampled]

    def grid(self) -> dict[str, list[Any]]:
        """Every parameter's values, for the grid sampler (which cannot grid an interval)."""
        out = {}
        for key, dist in self.distributions.items():
            if hasattr(dist, "choices"):
                out[key] = list(dist.choices)
            elif getattr(dist, "step", None) is not None:
                count = round((dist.high - dist.low) / dist.step) + 1
                out[key] = [dist.low + i * dist.step for i in range(count)]
            else:
                raise UserError(
                    f"hydra.sweeper.sampler.name=grid cannot grid {key} (an interval): give it as choice(...) or "
                    "range(...), or use sampler.name=tpe"
                )
        return out

    def describe(self) -> dict[str, str]:
        """Each parameter as JSON-able text, to check that a resumed study searches the same space."""
        return {k: repr(d) for k, d in sorted(self.distributions.items())}


def parse(overrides: list[str]) -> SearchSpace:
    """The search space of `overrides` (hydra.sweeper.params as key=value, then the command line's)."""
    import optuna.distributions as od

    space = SearchSpace(fixed=[])
    for o in OverridesParser.create().parse_overrides(overrides):
        key = o.get_key_element()
        # The last word on a key wins, as in Hydra: the command line's over hydra.sweeper.params.
        space.distributions.pop(key, None)
        space.choice_text.pop(key, None)
        space.fixed = [f for f in space.fixed if f.split("=", 1)[0] != key]
        if not o.is_sweep_override():
            space.fixed.append(f"{key}={o.get_value_element_as_str()}")
            continue
        try:
            space.distributions[key] = _distribution(o, od, space.choice_text)
        except ValueError as e:  # optuna's refusals: low > high, log with low <= 0, ...
            raise UserError(f"{key}={o.input_line.split('=', 1)[-1] if o.input_line else ''}: {e}") from None
    if not space.distributions:
        raise UserError(
            "nothing to search: give a parameter as interval(...), choice(...) or range(...), e.g. "
            "'optim.lr=tag(log, interval(1e-4, 1e-2))'"
        )
    return space


def _distribution(o: Override, od: Any, choice_text: dict[str, dict[Any, str]]) -> Any:
    key, sweep = o.get_key_element(), o.value()
    if isinstance(sweep, IntervalSweep):
        unknown = sweep.tags - {"log", "int"}
        if unknown:
            raise UserError(f"{key}: unknown tag {sorted(unknown)[0]!r} on an interval: use log and/or int")
        log = "log" in sweep.tags
        if "int" in sweep.tags:
            return od.IntDistribution(int(sweep.start), int(sweep.end), log=log)
        return od.FloatDistribution(float(sweep.start), float(sweep.end), log=log)
    if isinstance(sweep, RangeSweep):
        values = list(o.sweep_iterator())
        if not values:
            raise UserError(f"{key}: range({sweep.start}, {sweep.stop}, {sweep.step}) is empty: check its bounds")
        if all(isinstance(v, int) for v in values):
            if sweep.step < 0:  # range(8, 0, -2): the same values, in no order Optuna's ranges take
                return od.CategoricalDistribution(values)
            return od.IntDistribution(values[0], values[-1], step=sweep.step)
        return od.FloatDistribution(min(values), max(values), step=abs(sweep.step))
    if isinstance(sweep, ChoiceSweep):
        values, texts = list(o.sweep_iterator()), list(o.sweep_string_iterator())
        if not all(v is None or isinstance(v, (bool, int, float, str)) for v in values):
            values = texts  # lists and dicts: Optuna takes them as their override text
        choice_text[key] = dict(zip(values, texts, strict=True))
        return od.CategoricalDistribution(values)
    raise UserError(f"{key}: {type(sweep).__name__} cannot be searched: use interval(...), choice(...) or range(...)")


def _number_text(value: Any) -> str:
    """A sampled number as override text (repr keeps a float's every digit)."""
    return repr(value) if isinstance(value, float) else str(value)
