"""Validate a JSON document against one of docs/schemas/*.json.

The subset of JSON Schema (2020-12) that kvmha's schemas use: type, const, enum,
properties, required, items, minimum, $ref to #/$defs. A keyword outside it is an error,
so a schema can never quietly check less than it says.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"
KNOWN = {
    "$schema",
    "$id",
    "title",
    "$defs",
    "type",
    "const",
    "enum",
    "properties",
    "required",
    "items",
    "minimum",
    "$ref",
    "description",
}
TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "null": type(None),
}


def load(name: str) -> dict[str, Any]:
    """The schema of a document's "schema" value: kvmha.NAME.v1 -> docs/schemas/NAME.v1.json."""
    assert name.startswith("kvmha."), name
    return json.loads((SCHEMAS / f"{name[len('kvmha.'):]}.json").read_text())


def _is(value: Any, kind: str) -> bool:
    if kind in ("integer", "number") and isinstance(value, bool):
        return False
    return isinstance(value, TYPES[kind])


def errors(
    doc: Any, schema: dict[str, Any], root: dict[str, Any] | None = None, at: str = "$"
) -> list[str]:
    root = root or schema
    unknown = set(schema) - KNOWN
    if unknown:
        return [f"{at}: schema keyword(s) {sorted(unknown)} not supported by this checker"]
    if "$ref" in schema:
        ref = schema["$ref"]
        assert ref.startswith("#/$defs/"), ref
        return errors(doc, root["$defs"][ref[len("#/$defs/") :]], root, at)
    out: list[str] = []
    if "type" in schema:
        kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_is(doc, k) for k in kinds):
            return [f"{at}: {doc!r} is not of type {kinds}"]
    if "const" in schema and doc != schema["const"]:
        out.append(f"{at}: {doc!r} is not {schema['const']!r}")
    if "enum" in schema and doc not in schema["enum"]:
        out.append(f"{at}: {doc!r} is not one of {schema['enum']}")
    if "minimum" in schema and isinstance(doc, (int, float)) and doc < schema["minimum"]:
        out.append(f"{at}: {doc!r} < {schema['minimum']}")
    if isinstance(doc, dict):
        for key in schema.get("required", []):
            if key not in doc:
                out.append(f"{at}: {key!r} is missing")
        for key, sub in schema.get("properties", {}).items():
            if key in doc:
                out += errors(doc[key], sub, root, f"{at}.{key}")
    if isinstance(doc, list) and "items" in schema:
        for i, item in enumerate(doc):
            out += errors(item, schema["items"], root, f"{at}[{i}]")
    return out


def validate(doc: Any) -> None:
    """AssertionError listing every way doc breaks the schema it names."""
    assert isinstance(doc, dict) and isinstance(doc.get("schema"), str), doc
    problems = errors(doc, load(doc["schema"]))
    assert problems == [], problems
