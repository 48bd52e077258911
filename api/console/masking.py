"""Sensitive input fields, masked for display: the saga's input schema says which.

A saga marks a field of its marshmallow input schema as sensitive with metadata, and
every page that shows a run's input shows it masked (nested schemas, lists and dicts of
them too):

    class OrderSchema(Schema):
        card = fields.Str(required=True, metadata={"sensitive": True})

    masked(saga, {"order_id": "o-1", "card": "4242…"})   # {"order_id": "o-1", "card": "•••"}

Without the definition (its version is not loaded) nothing can say which fields are
sensitive, so every value is masked: a page fails closed rather than show a card number.
"""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, fields

from saga.definitions import Saga

__all__ = ["MASK", "masked", "sensitive"]

MASK = "•••"


def sensitive(field: fields.Field) -> bool:
    """Whether a schema field is marked `metadata={"sensitive": True}`."""
    return bool(field.metadata.get("sensitive"))


def masked(saga: Saga | None, input: Any) -> Any:
    """A copy of `input` with each sensitive field's value replaced by MASK.

    `saga` None (its definition is not loaded): every leaf value is masked. A saga with
    no input schema marks nothing sensitive.
    """
    if saga is None:
        return _all_masked(input)
    schema = _instance(saga.input)
    return input if schema is None else _masked_by(schema, input)


def _instance(schema: Any) -> Schema | None:
    if schema is None:
        return None
    return schema() if isinstance(schema, type) else schema


def _masked_by(schema: Schema, value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    by_key = {field.data_key or name: field for name, field in schema.fields.items()}
    return {key: _field_value(by_key[key], item) if key in by_key else item
            for key, item in value.items()}


def _field_value(field: fields.Field, value: Any) -> Any:
    if sensitive(field):
        return MASK if value is not None else None
    if isinstance(field, fields.Pluck):  # each value is the one plucked field's
        inner = _nested_schema(field)
        plucked = inner.fields.get(field.field_name) if inner is not None else None
        if plucked is None:
            return value
        if field.many and isinstance(value, list):
            return [_field_value(plucked, item) for item in value]
        return _field_value(plucked, value)
    if isinstance(field, fields.Nested):
        inner = _nested_schema(field)
        if inner is None:
            return value
        if field.many and isinstance(value, list):
            return [_masked_by(inner, item) for item in value]
        return _masked_by(inner, value)
    if isinstance(field, fields.List) and isinstance(value, list):
        return [_field_value(field.inner, item) for item in value]
    if isinstance(field, fields.Tuple) and isinstance(value, list | tuple):
        inners = field.tuple_fields
        return [*(_field_value(inner, item) for inner, item in zip(inners, value, strict=False)),
                *value[len(inners):]]
    if isinstance(field, fields.Dict) and isinstance(value, dict):
        values = field.value_field
        if values is None:
            return value
        return {key: _field_value(values, item) for key, item in value.items()}
    return value


def _nested_schema(field: fields.Nested) -> Schema | None:
    try:
        schema = field.schema
    except Exception:  # a nested schema named by a string not registered here
        return None
    return schema if isinstance(schema, Schema) else None


def _all_masked(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _all_masked(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_all_masked(item) for item in value]
    return MASK if value is not None else None
