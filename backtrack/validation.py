"""One reading of pydantic's validation errors: which field, what kind, pydantic's words.

Every layer that answers a bad value reads pydantic's errors through `problems` and words the
answer for its own reader: the request vocabulary (`InvalidParameter`), the HTTP layer's 422 and
400 bodies, the server settings and the training config. Torch-free: clients import it.

    >>> from pydantic import BaseModel
    >>> class Knobs(BaseModel):
    ...     depth: int
    >>> try:
    ...     Knobs(depth="deep")
    ... except ValueError as error:
    ...     problem = problems(error.errors())[0]
    >>> problem.field(), problem.kind
    ('depth', 'int_parsing')
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Problem:
    """One error of a validation: where, pydantic's type for it, its message and the input."""

    location: tuple[str | int, ...]
    kind: str
    message: str
    value: Any = None
    context: dict[str, Any] = field(default_factory=dict)

    def field(self, skip: Callable[[str | int], bool] = lambda part: False, empty: str = "") -> str:
        """The dotted field name (`backtrack.phases.1.max_errors`), leaving out the parts
        `skip` says are no field names; `empty` when nothing is left."""
        return ".".join(str(part) for part in self.location if not skip(part)) or empty


def problems(errors: Sequence[Mapping[str, Any]]) -> list[Problem]:
    """pydantic's `error.errors()` (a ValidationError's or FastAPI's), as `Problem`s."""
    return [
        Problem(
            location=tuple(item.get("loc", ())),
            kind=str(item.get("type", "")),
            message=str(item.get("msg", "")),
            value=item.get("input"),
            context=dict(item.get("ctx") or {}),
        )
        for item in errors
    ]
