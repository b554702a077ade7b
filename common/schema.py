"""The suite's one schema: its dataclasses, read by one small validator.

A recipe (``common.config.Phase``, ``Recipe``, ``Fidelity``), a run configuration
(``RunConfig`` and its parts) and a ``result.json`` (``common.results.Result`` and its
parts) are each described once, by a dataclass's own field annotations. The validators
(``common.config.parse_phase`` and friends, ``common.results.Record.parse``) ask here what
kind of value a field takes, so no second table of field types exists to drift from the
class (docs/design.md, "One schema").
"""

from __future__ import annotations

import dataclasses
import types
import typing
from functools import cache


@cache
def field_kinds(cls: type) -> dict[str, type]:
    """Each field of the dataclass ``cls`` -> the kind of value it takes, from its
    annotation: ``X | None`` -> ``X``, ``tuple[str, ...]`` -> ``tuple``, ``list | None`` ->
    ``list``, a dataclass -> that class."""
    hints = typing.get_type_hints(cls)
    return {f.name: kind_of(hints[f.name]) for f in dataclasses.fields(cls)}


def kind_of(hint: typing.Any) -> type:
    """The kind of value an annotation takes: ``None`` dropped from a union, generics
    reduced to their container."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
    return typing.get_origin(hint) or hint


@cache
def nullable_fields(cls: type) -> frozenset[str]:
    """The fields of ``cls`` whose annotation admits ``None`` (``X | None``)."""
    hints = typing.get_type_hints(cls)
    return frozenset(f.name for f in dataclasses.fields(cls)
                     if type(None) in typing.get_args(hints[f.name]))


@cache
def field_choices(cls: type) -> dict[str, tuple]:
    """The fields of ``cls`` that take one of a few values -> those values (a field's
    ``metadata["choices"]``)."""
    return {f.name: f.metadata["choices"] for f in dataclasses.fields(cls)
            if "choices" in f.metadata}
