"""The shared base of the configuration objects: frozen strict models, preset sections whose
every number cites a source, strict number types and the one-line validation error format."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, model_validator

__all__ = [
    "Fraction",
    "Frozen",
    "NonNegativeInt",
    "PositiveFloat",
    "PositiveInt",
    "Sourced",
    "UnitInterval",
    "first_error",
    "pow2",
]


class Frozen(BaseModel):
    """A frozen model that refuses unknown keys."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Sourced(Frozen):
    """A preset section whose every numeric field must cite its source in ``sources``."""

    sources: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _every_number_has_a_source(self) -> Sourced:
        for name in type(self).model_fields:
            if name == "sources" or name not in self.model_fields_set:
                continue  # defaults are structural (e.g. rows = 1 for matrix-vector)
            value = getattr(self, name)
            numeric = isinstance(value, int | float) and not isinstance(value, bool)
            numeric |= isinstance(value, tuple) and all(isinstance(v, int | float) for v in value)
            if numeric and not self.sources.get(name, "").strip():
                raise ValueError(
                    f"{type(self).__name__.lower()}.{name} = {value!r} has no source: add "
                    f"'sources: {{{name}: \"datasheet, paper or derivation\"}}'"
                )
        unknown = set(self.sources) - set(type(self).model_fields)
        if unknown:
            raise ValueError(f"sources name unknown fields {sorted(unknown)}")
        return self


# Numbers are strict: a bool or a string is not a number (``chains: true`` or ``bits: "4"`` is
# a mistake, not a 1 or a 4), and a float must be finite.
PositiveInt = Annotated[StrictInt, Field(gt=0)]
NonNegativeInt = Annotated[StrictInt, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0, strict=True, allow_inf_nan=False)]
Fraction = Annotated[float, Field(gt=0, le=1, strict=True, allow_inf_nan=False)]
UnitInterval = Annotated[float, Field(ge=0, le=1, strict=True, allow_inf_nan=False)]


def pow2(x: int) -> bool:
    """Whether ``x`` is a positive power of two."""
    return x > 0 and x & (x - 1) == 0


def first_error(e: ValidationError, keys: Mapping[str, str] | None = None) -> str:
    """One line for a validation error: where (``keys`` renames top-level fields), what is
    wrong and the value given."""
    err = e.errors()[0]
    parts = [str(p) for p in err["loc"]]
    if keys and parts:
        parts[0] = keys.get(parts[0], parts[0])
    loc = ".".join(parts)
    msg = err["msg"].removeprefix("Value error, ").replace("valid tuple", "valid list")
    if err["type"] == "extra_forbidden":
        return f"unknown key {loc!r}"
    if err["type"] == "missing":
        return f"missing key {loc!r}"
    got = err.get("input")
    head = f"{loc}: " if loc else ""
    quiet = (
        isinstance(got, dict | list) or "input" not in err or (isinstance(got, str) and got in msg)
    )
    return f"{head}{msg}" + ("" if quiet else f" (got {got!r})")
