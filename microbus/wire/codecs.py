"""Message schemas and the codec that turns content into wire JSON and back.

The wire format is microcosm-pubsub 3.0.0's: a JSON object with the schema's fields plus
``mediaType``, ``opaqueData`` (a string map) and optionally ``uri``.

Fields a schema does not declare:

- **encoding** (producing) refuses them with a :class:`MessageValidationError` naming them, because the wire
  carries declared fields only and they would be lost without a word. Content keys are the names content is
  given by (a field's ``attribute``, else its name: ``media_type``, ``opaque_data``, ``uri``, ``order_id``),
  not wire names (``mediaType``). A schema opts into dropping them silently, as microcosm-pubsub does, the
  way marshmallow spells it: ``class Meta: unknown = EXCLUDE`` (detected as the schema instance's
  ``unknown``, which the registry builds from the class with no arguments). ``RAISE`` (marshmallow's
  default) and ``INCLUDE`` refuse them: nothing would carry an included field to the wire.
- **decoding** (consuming) always accepts and drops them, whatever the schema's ``unknown``: a newer producer
  may have added a field this consumer does not know yet.
"""

from __future__ import annotations

import json
import json.scanner
from collections.abc import Mapping
from typing import Any, ClassVar

from marshmallow import EXCLUDE, Schema, ValidationError, fields, missing

from microbus.errors import MalformedBodyError, MessageValidationError, SchemaViolationError

DEFAULT_MEDIA_TYPE = "application/json"
PUBLISHED_KEY = "x-request-published"
MESSAGE_ID_KEY = "x-microbus-message-id"  # stamped by the producer; stable across every redelivery
REQUEST_ID_KEY = "x-request-id"


class PubSubMessageSchema(Schema):
    """Base schema of every message; subclasses set ``MEDIA_TYPE`` and declare their fields."""

    MEDIA_TYPE: ClassVar[str] = DEFAULT_MEDIA_TYPE

    mediaType = fields.String(attribute="media_type", required=True)
    opaqueData = fields.Dict(attribute="opaque_data", required=False)
    uri = fields.String(required=False, allow_none=True)


def _describe(messages: Any) -> str:
    """Turn marshmallow's error messages into one sentence naming the fields."""
    if isinstance(messages, dict):
        parts = []
        for name, problem in sorted(messages.items()):
            text = " ".join(str(p) for p in problem) if isinstance(problem, list) else _describe(problem)
            parts.append(f"{name}: {text}")
        return "; ".join(parts)
    if isinstance(messages, list):
        return " ".join(str(m) for m in messages)
    return str(messages)


_ABSENT = object()
_KEPT: dict[type[fields.Field[Any]], type] = {fields.String: str, fields.Integer: int, fields.Dict: dict}
"""The plain field classes, and the class of the values each keeps as they are (a Dict's is copied)."""
_LOAD_METHODS = ("load", "_do_load", "_deserialize", "_call_and_store", "_invoke_field_validators", "_bind_field")


class _PlainLoader:
    """``schema.load(data, unknown=EXCLUDE)`` for a schema of plain fields, without marshmallow's per-field calls.

    Plain: no hooks or validators anywhere, no loading method overridden, and only ``String``, ``Integer``
    and ``Dict`` fields (exactly those classes, a ``Dict`` without key or value fields), none with a
    ``load_default``, a dotted ``attribute`` or ``pre_load``/``post_load`` functions. :meth:`load` takes only
    values marshmallow would keep as they are (a ``str``, an ``int`` that is not a bool, a ``dict`` (copied),
    None where allowed); for anything else (a missing required field, a wrong type) it returns None and
    marshmallow loads the message, so the result and every error are marshmallow's. Decoding was a third of
    a message's framework CPU.
    """

    def __init__(self, plan: list[tuple[str, str, type, bool, bool]]) -> None:
        self._plan = plan

    @classmethod
    def of(cls, schema: Schema) -> _PlainLoader | None:
        """The loader of ``schema``, or None when it is not plain."""
        overridden = any(getattr(type(schema), name, None) is not getattr(Schema, name, None) for name in _LOAD_METHODS)
        if overridden or schema.many or schema.partial or schema.dict_class is not dict or any(schema._hooks.values()):
            return None
        plan: list[tuple[str, str, type, bool, bool]] = []
        for name, field in schema.load_fields.items():
            kept = _KEPT.get(type(field))
            attribute = field.attribute or name
            if kept is None or "." in attribute or not _plain_field(field):
                return None
            data_key = field.data_key if field.data_key is not None else name
            plan.append((data_key, attribute, kept, bool(field.required), bool(field.allow_none)))
        return cls(plan)

    def load(self, data: dict[str, Any]) -> dict[str, Any] | None:
        """The loaded content, or None when marshmallow must load it (it may be invalid)."""
        loaded: dict[str, Any] = {}
        for data_key, attribute, kept, required, allow_none in self._plan:
            value: Any = data.get(data_key, _ABSENT)
            if value is _ABSENT:
                if required:
                    return None
                continue
            if value is None:
                if not allow_none:
                    return None
            elif value.__class__ is not kept:
                return None
            # marshmallow loads a Dict as dict(value): the same shallow copy
            loaded[attribute] = dict(data[data_key]) if kept is dict and value is not None else value
        return loaded


def _plain_field(field: fields.Field[Any]) -> bool:
    """No validators, no load-time functions, no default, and (a Dict) no key or value fields."""
    if field.validators or getattr(field, "pre_load", None) or getattr(field, "post_load", None):
        return False
    if getattr(field, "load_default", None) is not missing:
        return False
    if isinstance(field, fields.Dict):
        return field.key_field is None and field.value_field is None and field.mapping_type is dict
    return True


class PubSubMessageCodec:
    """Encodes and decodes the messages of one schema."""

    def __init__(self, schema: PubSubMessageSchema) -> None:
        self.schema = schema
        self.media_type = type(schema).MEDIA_TYPE
        self._plain = _PlainLoader.of(schema)

    def encode(self, dct: Mapping[str, Any] | None = None, **kwargs: Any) -> str:
        """Validate content, given as a dict, keywords or both, and return the wire JSON.

        The dict and the keywords are merged (see :func:`merge_content`); a ``uri`` of None is left out.

        Raises:
            MessageValidationError: a field is missing, has the wrong type, is given twice with different values,
                or is not declared by the schema (unless it opts into ``EXCLUDE``); the message names it.
        """
        content = merge_content(dct, kwargs, media_type=self.media_type)
        content.setdefault("media_type", self.media_type)
        if content.get("uri") is None:
            content.pop("uri", None)
        errors = self._unknown_errors(content)
        errors.update(self._field_errors(content))
        if not errors:
            dumped = self.schema.dump(content)
            errors = self.schema.validate(dumped)
        if errors:
            raise MessageValidationError(f"Invalid {self.media_type} message: {_describe(errors)}")
        return json.dumps(dumped, separators=(",", ":"))

    def _unknown_errors(self, content: dict[str, Any]) -> dict[str, Any]:
        """Content keys the schema does not declare (dump would drop them), unless it opts into EXCLUDE."""
        if self.schema.unknown == EXCLUDE:
            return {}
        known = {field.attribute or name for name, field in self.schema.fields.items()}
        return {key: ["Unknown field."] for key in content if key not in known}

    def _field_errors(self, content: dict[str, Any]) -> dict[str, Any]:
        """Errors that dump would raise without a field name, or would coerce silently (an int as a String)."""
        errors: dict[str, Any] = {}
        for name, field in self.schema.fields.items():
            key = field.attribute or name
            value = content.get(key)
            if value is None or field.dump_only:
                continue
            if isinstance(field, fields.String) and not isinstance(value, str):
                errors[field.data_key or name] = [f"Not a valid string: {type(value).__name__}."]
                continue
            try:
                field.serialize(key, content)
            except (ValueError, TypeError, AttributeError) as exc:
                errors[field.data_key or name] = [f"Cannot serialize {value!r}: {exc}"]
        return errors

    def decode(self, message: str | dict[str, Any]) -> dict[str, Any]:
        """Load wire JSON (or an already parsed dict) into content.

        Raises:
            MalformedBodyError: the text is not a JSON object.
            SchemaViolationError: the object does not validate; the message names the fields.
        """
        dct = parse_json_object(message) if isinstance(message, str) else message
        if self._plain is not None and dct.__class__ is dict:
            loaded_plain = self._plain.load(dct)
            if loaded_plain is not None:
                return loaded_plain
        try:
            loaded: dict[str, Any] = self.schema.load(dct, unknown=EXCLUDE)
        except ValidationError as exc:
            raise SchemaViolationError(
                f"{self.media_type} message does not match its schema: {_describe(exc.messages)}"
            ) from exc
        return loaded


def merge_content(dct: Mapping[str, Any] | None, kwargs: Mapping[str, Any], *, media_type: str) -> dict[str, Any]:
    """Content given as a dict and as keywords, in one dict: no field of either is lost.

    Raises:
        MessageValidationError: a field is in both with different values; the message names it (not the values).
    """
    content = dict(dct or {})
    conflicts = sorted(key for key, value in kwargs.items() if key in content and content[key] != value)
    if conflicts:
        raise MessageValidationError(
            f"Invalid {media_type} message: {', '.join(conflicts)} given twice with different values, in the "
            "content dict and as a keyword argument: give each field once."
        )
    content.update(kwargs)
    return content


_scan_once = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]  # typeshed: takes a decoder
"""The scanner of a decoder like ``json.loads``'s (no hooks, the default options)."""


def _loads(text: str) -> Any:
    """``json.loads(text)``; a text that is one JSON object, without whitespace around it, straight through the
    decoder's scanner (``json.loads`` spends five times the scan around it: two whitespace regexes, checks). Any
    other text, and any error, is ``json.loads``'s."""
    if text[:1] == "{":
        try:
            value, end = _scan_once(text, 0)
        except StopIteration:
            return json.loads(text)
        if end == len(text):
            return value
    return json.loads(text)


def parse_json_object(text: str) -> dict[str, Any]:
    """Parse text that must hold a JSON object.

    Raises:
        MalformedBodyError: it is not JSON, or not an object.
    """
    try:
        value = _loads(text)
    except (TypeError, ValueError, RecursionError) as exc:
        raise MalformedBodyError(f"Message body is not JSON (or nested too deeply): {type(exc).__name__}") from exc
    if not isinstance(value, dict):
        raise MalformedBodyError(f"Message body is JSON but not an object: {type(value).__name__}")
    return value
