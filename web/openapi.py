"""The API's OpenAPI 3.1 document, generated from the routes that really exist.

Each handler declares its documentation next to its scope::

    @requires(Scope.READ)
    @operation("One room with its devices", responses={200: "the room"}, tags=["rooms"])
    async def get_room(request: web.Request) -> web.Response: ...

:func:`openapi_document` walks ``app.router.routes()`` and merges what each handler
declares with what the route and :func:`web.auth.required_scope` already know (path
parameters, security, the error responses every such route can give). A route whose
handler declares nothing makes it raise, so the document cannot silently drift from
the API: a test that builds the document for the real app catches a new route added
without its documentation. :func:`add_openapi_route` serves the document at
``GET /api/openapi.json``.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from controller.settings import Scope
from web.auth import required_scope, requires

H = TypeVar("H", bound=Callable[..., Any])

OPENAPI_PATH = "/api/openapi.json"
JSON = "application/json"

_OPERATION_ATTRIBUTE = "__openapi_operation__"
_REF_TEMPLATE = "#/components/schemas/{model}"
_ERROR_SCHEMA_NAME = "Error"
_ERROR_REF = {"$ref": f"#/components/schemas/{_ERROR_SCHEMA_NAME}"}
_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": 'Every error: {"error": {"code", "message", "details"}}.',
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "string", "description": "machine-readable, e.g. not_found"},
                "message": {"type": "string", "description": "for people"},
                "details": {"description": "anything that helps, often null"},
            },
            "required": ["code", "message", "details"],
        }
    },
    "required": ["error"],
}
_PATH_PARAMETER = re.compile(r"\{([^{}]+)\}")
# Statuses whose responses carry no body.
_NO_CONTENT = frozenset({204, 205, 304})


@dataclass(frozen=True, slots=True)
class Operation:
    """What a handler declares about itself; the rest comes from the route and its scope."""

    summary: str
    description: str = ""
    body: type[BaseModel] | None = None  # JSON request body model
    query: type[BaseModel] | None = None  # query parameters model (each field one parameter)
    response: type[BaseModel] | None = None  # optional schema of the success body
    # status -> description (successes and errors); 401/403, 400/413/422 and 404 are
    # added where they apply, 200 when no success status is declared.
    responses: Mapping[int, str] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    # Media type of the success body: e.g. text/event-stream for a stream, text/plain
    # for metrics (a non-JSON success body is documented as a string).
    media_type: str = JSON


def operation(
    summary: str,
    *,
    description: str = "",
    body: type[BaseModel] | None = None,
    query: type[BaseModel] | None = None,
    response: type[BaseModel] | None = None,
    responses: Mapping[int, str] | None = None,
    tags: Iterable[str] = (),
    media_type: str = JSON,
) -> Callable[[H], H]:
    """Document a handler (composes with :func:`web.auth.requires` in either order)."""
    statuses = dict(responses or {})
    for status in statuses:
        if not isinstance(status, int) or not 100 <= status <= 599:
            raise ValueError(f"{summary!r}: {status!r} is not an HTTP status")
    declared = Operation(
        summary=summary,
        description=description,
        body=body,
        query=query,
        response=response,
        responses=statuses,
        tags=tuple(tags),
        media_type=media_type,
    )

    def mark(handler: H) -> H:
        setattr(handler, _OPERATION_ATTRIBUTE, declared)
        return handler

    return mark


def operation_of(handler: object) -> Operation | None:
    declared = getattr(handler, _OPERATION_ATTRIBUTE, None)
    return declared if isinstance(declared, Operation) else None


def undocumented_routes(app: web.Application) -> list[str]:
    """``"GET /api/x"`` for every documentable route whose handler declares no Operation."""
    return [
        f"{method} {path}"
        for method, path, handler in _routes(app)
        if operation_of(handler) is None
    ]


def openapi_document(
    app: web.Application, *, title: str, version: str, description: str = ""
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route of ``app``.

    Raises ValueError when a route is undocumented, uses the ``*`` method, or two
    routes share a handler name (operationId).
    """
    missing = undocumented_routes(app)
    if missing:
        raise ValueError("routes without @operation documentation: " + ", ".join(missing))
    routes = [(method, path, handler, _declared(handler)) for method, path, handler in _routes(app)]

    wildcard = [path for method, path, _, _ in routes if method == "*"]
    if wildcard:
        raise ValueError("routes for any method cannot be documented: " + ", ".join(wildcard))

    wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = []
    for _, _, _, declared in routes:
        uses: list[tuple[type[BaseModel] | None, JsonSchemaMode]] = [
            (declared.query, "validation"),
            (declared.body, "validation"),
            (declared.response, "serialization"),
        ]
        for model, mode in uses:
            if model is not None and (model, mode) not in wanted:
                wanted.append((model, mode))
    refs, definitions = models_json_schema(wanted, ref_template=_REF_TEMPLATE)
    schemas: dict[str, Any] = dict(definitions.get("$defs", {}))
    if _ERROR_SCHEMA_NAME in schemas:
        raise ValueError(f"a model is named {_ERROR_SCHEMA_NAME!r}, the shared error schema")
    schemas[_ERROR_SCHEMA_NAME] = _ERROR_SCHEMA

    paths: dict[str, dict[str, Any]] = {}
    handler_names: dict[str, str] = {}
    tags: list[str] = []
    for method, path, handler, declared in routes:
        name = getattr(handler, "__name__", None)
        if not isinstance(name, str):
            raise ValueError(f"{method} {path}: the handler has no __name__ for an operationId")
        if name in handler_names:
            raise ValueError(
                f"operationId {name!r} is used by both {handler_names[name]} and {method} {path}"
            )
        handler_names[name] = f"{method} {path}"
        tags.extend(tag for tag in declared.tags if tag not in tags)
        paths.setdefault(path, {})[method.lower()] = _operation_object(
            path, name, declared, required_scope(handler), refs, schemas
        )

    info: dict[str, Any] = {"title": title, "version": version}
    if description:
        info["description"] = description
    document: dict[str, Any] = {"openapi": "3.1.0", "info": info}
    if tags:
        document["tags"] = [{"name": tag} for tag in tags]
    document["paths"] = paths
    document["components"] = {
        "schemas": schemas,
        "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
    }
    return copy.deepcopy(document)  # no shared sub-objects: callers may edit it


def add_openapi_route(
    app: web.Application, *, title: str, version: str, description: str = ""
) -> None:
    """Serve the document at ``GET /api/openapi.json`` (open, itself documented).

    The document is built on the first request, when the router is frozen and every
    route is known, and then served from a cache.
    """
    cached: list[str] = []

    @requires(None)
    @operation(
        "The OpenAPI 3.1 document of this API",
        description="Generated from the routes the server really has.",
        responses={200: "the OpenAPI document"},
        tags=["meta"],
    )
    async def get_openapi(request: web.Request) -> web.Response:
        if not cached:
            document = openapi_document(
                request.app, title=title, version=version, description=description
            )
            cached.append(json.dumps(document, ensure_ascii=False))
        return web.json_response(text=cached[0])

    app.router.add_get(OPENAPI_PATH, get_openapi)


def _routes(app: web.Application) -> Iterator[tuple[str, str, Any]]:
    """(METHOD, canonical path, handler) of the routes worth documenting.

    Skips routes without a plain or dynamic resource (static files, sub-apps) and the
    HEAD routes aiohttp adds next to a GET with the same handler.
    """
    for route in app.router.routes():
        resource = route.resource
        if not isinstance(resource, web.PlainResource | web.DynamicResource):
            continue
        if route.method == "HEAD" and any(
            other.method == "GET" and other.handler is route.handler for other in resource
        ):
            continue
        yield route.method, resource.canonical, route.handler


def _declared(handler: object) -> Operation:
    declared = operation_of(handler)
    assert declared is not None  # undocumented routes were rejected first
    return declared


def _operation_object(
    path: str,
    operation_id: str,
    declared: Operation,
    scope: Scope | None,
    refs: Mapping[tuple[Any, JsonSchemaMode], Any],
    schemas: Mapping[str, Any],
) -> dict[str, Any]:
    result: dict[str, Any] = {"operationId": operation_id, "summary": declared.summary}
    if declared.description:
        result["description"] = declared.description
    if declared.tags:
        result["tags"] = list(declared.tags)

    path_names = _PATH_PARAMETER.findall(path)
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in path_names
    ]
    if declared.query is not None:
        parameters.extend(_query_parameters(refs[(declared.query, "validation")], schemas))
    if parameters:
        result["parameters"] = parameters

    if declared.body is not None:
        result["requestBody"] = {
            "required": True,
            "content": {JSON: {"schema": refs[(declared.body, "validation")]}},
        }

    statuses = dict(declared.responses)
    if not any(status < 400 for status in statuses):
        statuses[200] = "success"
    if scope is not None:
        statuses.setdefault(401, "no bearer token, or an unknown one")
        statuses.setdefault(403, f"the token lacks the {scope.value!r} scope")
    if declared.body is not None:
        statuses.setdefault(400, "the body is not JSON")
        statuses.setdefault(413, "the body is over the size limit")
        statuses.setdefault(422, "the body is not valid")
    if path_names:
        statuses.setdefault(404, "no such " + " or ".join(path_names))
    success_schema = (
        refs[(declared.response, "serialization")]
        if declared.response is not None
        else {"type": "object"}
    )
    result["responses"] = {
        str(status): _response(status, statuses[status], declared.media_type, success_schema)
        for status in sorted(statuses)
    }

    if scope is None:
        result["security"] = []
    else:
        result["security"] = [{"bearerAuth": []}]
        result["x-scope"] = scope.value
    return result


def _query_parameters(ref: Mapping[str, Any], schemas: Mapping[str, Any]) -> list[dict[str, Any]]:
    model_schema = _resolve(ref, schemas)
    required = set(model_schema.get("required", ()))
    parameters = []
    for name, schema in model_schema.get("properties", {}).items():
        parameter: dict[str, Any] = {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": schema,
        }
        if isinstance(schema.get("description"), str):
            parameter["description"] = schema["description"]
        parameters.append(parameter)
    return parameters


def _resolve(schema: Mapping[str, Any], schemas: Mapping[str, Any]) -> Mapping[str, Any]:
    prefix = _REF_TEMPLATE.removesuffix("{model}")
    while isinstance(ref := schema.get("$ref"), str) and ref.startswith(prefix):
        schema = schemas[ref.removeprefix(prefix)]
    return schema


def _response(
    status: int, description: str, media_type: str, success_schema: Mapping[str, Any]
) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description}
    if status >= 400:
        response["content"] = {JSON: {"schema": _ERROR_REF}}
    elif status in _NO_CONTENT or not 200 <= status < 300:
        pass
    elif media_type == JSON:
        response["content"] = {JSON: {"schema": dict(success_schema)}}
    else:
        response["content"] = {media_type: {"schema": {"type": "string"}}}
    return response
