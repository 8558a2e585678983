"""Validate request bodies against ../shared/fiddler-events-v3.openapi.json with jsonschema.

The spec is OpenAPI 3.0: ``nullable`` becomes a ``null`` type, and ``maxLength`` on an array (as
the spec writes it for ``source.events``) means at most that many items, so it becomes
``maxItems``.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

SPEC_PATH = Path(__file__).resolve().parents[2] / "shared" / "fiddler-events-v3.openapi.json"
_BUNDLED = Path(__file__).resolve().parent / "data" / "fiddler-events-v3.openapi.json"

OPERATIONS = {"POST": "post", "PATCH": "patch", "DELETE": "delete"}


def _convert(node: Any) -> Any:
    if isinstance(node, dict):
        node = {k: _convert(v) for k, v in node.items()}
        if node.get("type") == "array" and "maxLength" in node:
            node["maxItems"] = node.pop("maxLength")
        if node.pop("nullable", False) and "type" in node:
            node["type"] = [node["type"], "null"]
        return node
    if isinstance(node, list):
        return [_convert(v) for v in node]
    return node


@cache
def spec() -> dict[str, Any]:
    """The spec beside the project, or the copy the tests carry when it is not there."""
    path = SPEC_PATH if SPEC_PATH.is_file() else _BUNDLED
    return _convert(json.loads(path.read_text()))


def request_errors(method: str, path: str, body: Any) -> list[str]:
    """Everything wrong with a request against the spec; empty when it validates."""
    operations = spec()["paths"].get(path)
    if operations is None or OPERATIONS.get(method) not in operations:
        return [f"{method} {path} is not in the spec"]
    operation = operations[OPERATIONS[method]]
    schema = copy.deepcopy(operation["requestBody"]["content"]["application/json"]["schema"])
    root = {**spec(), **schema}
    validator = jsonschema.Draft202012Validator(
        root, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message[:300]}"
        for e in validator.iter_errors(body)
    ]
