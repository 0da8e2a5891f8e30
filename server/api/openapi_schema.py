"""The OpenAPI schema with this server's limits written on the fields they bound.

FastAPI's schema states the types and the vocabulary's ranges; the caps in effect
(`server.limits`: `maxItems`, `maxLength`, `maximum`), the served model's id (an enum) and the
vocabulary size (token-id prompts) are written in here, so clients read every bound from
`/openapi.json` as well as from `/info`. Each stream's events are described here too
(`server.api.responses.describe_streams`).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from server.api.responses import describe_streams
from server.limits import Limits


class LimitedSchemaApp(FastAPI):
    """A FastAPI application whose `/openapi.json` carries this server's limits."""

    def openapi(self) -> dict[str, Any]:
        return limited_openapi(self)


def limited_openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema with this server's limits on the fields they bound (cached once the
    model is loaded: its vocabulary bounds token ids)."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    schema = describe_streams(
        get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
    )
    service = app.state.service
    if service is None:
        return apply_limits(schema, Limits.from_settings(app.state.settings))
    app.openapi_schema = apply_limits(schema, service.limits)
    return app.openapi_schema


def apply_limits(schema: dict[str, Any], limits: Limits) -> dict[str, Any]:
    """Write this server's limits into the OpenAPI schema (maxItems, maxLength, maximum), so
    clients can read them from `/openapi.json` as well as from `/info`."""
    bounds = limits.schema_bounds()
    for component in schema.get("components", {}).get("schemas", {}).values():
        for name, prop in component.get("properties", {}).items():
            if name in bounds:
                _bound(prop, bounds[name])
            if name == "prompt":
                _bound_token_ids(prop, limits)
            if name == "model" and limits.model_id is not None:
                for branch in prop.get("anyOf", [prop]):
                    if branch.get("type") == "string":
                        branch["enum"] = [limits.model_id]
    return schema


def _bound_token_ids(prop: dict[str, Any], limits: Limits) -> None:
    """Token-id prompts: ids below the vocabulary size, at most the input token limit."""
    for branch in prop.get("anyOf", [prop]):
        items = branch.get("items", {})
        if items.get("type") == "array":  # list[list[int]]
            items = items.setdefault("items", {})
            target = branch["items"]
        else:
            target = branch
        if items.get("type") == "integer":
            if limits.vocab_size is not None:
                items["maximum"] = limits.vocab_size - 1
            if limits.max_prompt_tokens is not None:
                target["maxItems"] = limits.max_prompt_tokens
            items.pop("maxLength", None)


def _bound(prop: dict[str, Any], bounds: dict[str, int]) -> None:
    """Put each bound on the branch of the property's type it applies to (a list's length
    bound on its strings; a list of objects, such as messages, keeps its own schema)."""
    for branch in prop.get("anyOf") or prop.get("oneOf") or [prop]:
        kind = branch.get("type")
        if kind == "array":
            if "maxItems" in bounds:
                branch["maxItems"] = bounds["maxItems"]
            items = branch.setdefault("items", {})
            strings = items.get("type", "string") == "string" and "$ref" not in items
            if "maxLength" in bounds and strings:
                items["maxLength"] = bounds["maxLength"]
        elif kind == "string" and "maxLength" in bounds:
            branch["maxLength"] = bounds["maxLength"]
        elif kind == "integer" and "maximum" in bounds:  # the tighter of the two bounds
            branch["maximum"] = min(bounds["maximum"], branch.get("maximum", bounds["maximum"]))
