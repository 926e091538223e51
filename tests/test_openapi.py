"""The OpenAPI document is generated from the routes that exist, and is valid OpenAPI 3.1.

``validated_document`` and ``routes_of`` are meant for a test of the real app too:
build it, then ``assert documented_routes(validated_document(app)) == routes_of(app)``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from pydantic import BaseModel, Field

from controller.settings import Scope
from web.auth import TokenAuth, required_scope, requires
from web.openapi import (
    OPENAPI_PATH,
    Operation,
    add_openapi_route,
    openapi_document,
    operation,
    operation_of,
    undocumented_routes,
)

METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def routes_of(app: web.Application) -> set[tuple[str, str]]:
    """(method, path) of every route, straight from aiohttp's own route info."""
    found = set()
    for route in app.router.routes():
        info = route.get_info()
        path = info.get("path", info.get("formatter"))
        if route.method != "HEAD" and path is not None:  # not static files, not auto HEADs
            found.add((route.method.lower(), path))
    return found


def documented_routes(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method, path)
        for path, item in document["paths"].items()
        for method in item
        if method in METHODS
    }


def validated_document(app: web.Application) -> dict[str, Any]:
    document = openapi_document(app, title="Test API", version="1.2.3", description="testing")
    validate(document, cls=OpenAPIV31SpecValidator)
    return document


# A small app ---------------------------------------------------------------------------


class ThingQuery(BaseModel):
    color: str = Field(description="only things of this color")
    limit: int = Field(default=10, ge=1, le=100)


class Dimensions(BaseModel):
    width: float
    height: float


class ThingBody(BaseModel):
    name: str = Field(min_length=1)
    size: Dimensions
    note: str | None = None


class ThingOut(BaseModel):
    id: str
    name: str
    size: Dimensions


@requires(None)
@operation("List things", query=ThingQuery, responses={200: "the things"}, tags=["things"])
async def list_things(request: web.Request) -> web.Response:
    return web.json_response({"things": []})


@operation("One thing", response=ThingOut, responses={200: "the thing"}, tags=["things"])
@requires(Scope.READ)
async def get_thing(request: web.Request) -> web.Response:
    return web.json_response({})


@requires(Scope.STAFF)
@operation(
    "Create or replace a thing",
    description="Idempotent.",
    body=ThingBody,
    response=ThingOut,
    responses={200: "replaced", 201: "created", 409: "conflicts with another thing"},
    tags=["things", "admin"],
)
async def put_thing(request: web.Request) -> web.Response:
    return web.json_response({})


@requires(Scope.STAFF)
@operation("Remove a thing", responses={204: "removed"})
async def delete_thing(request: web.Request) -> web.Response:
    return web.Response(status=204)


@requires(Scope.READ)
@operation("Live updates", responses={200: "an event stream"}, media_type="text/event-stream")
async def stream(request: web.Request) -> web.Response:
    return web.Response(text="", content_type="text/event-stream")


def make_app(static_dir: Path) -> web.Application:
    auth = TokenAuth({"read-token": frozenset({Scope.READ})})
    app = web.Application(middlewares=[auth.middleware])
    app.router.add_get("/api/things", list_things)
    app.router.add_get("/api/things/{thing}", get_thing)
    app.router.add_put("/api/things/{thing}", put_thing)
    app.router.add_delete("/api/things/{thing}", delete_thing)
    app.router.add_get("/api/stream", stream)
    app.router.add_static("/static", static_dir)  # not part of the API: skipped
    add_openapi_route(app, title="Test API", version="1.2.3", description="testing")
    return app


@pytest.fixture
def app(tmp_path: Path) -> web.Application:
    return make_app(tmp_path)


@pytest.fixture
def document(app: web.Application) -> dict[str, Any]:
    return validated_document(app)


# The tests -----------------------------------------------------------------------------


def test_the_decorators_compose_with_requires_in_either_order() -> None:
    for handler, scope in [(get_thing, Scope.READ), (put_thing, Scope.STAFF)]:
        assert required_scope(handler) is scope
        assert isinstance(operation_of(handler), Operation)
    declared = operation_of(put_thing)
    assert declared is not None
    assert declared.body is ThingBody
    assert declared.tags == ("things", "admin")
    assert operation_of(make_app) is None


def test_the_document_lists_exactly_the_routes_of_the_app(
    app: web.Application, document: dict[str, Any]
) -> None:
    assert documented_routes(document) == routes_of(app)
    assert documented_routes(document) == {
        ("get", "/api/things"),
        ("get", "/api/things/{thing}"),
        ("put", "/api/things/{thing}"),
        ("delete", "/api/things/{thing}"),
        ("get", "/api/stream"),
        ("get", OPENAPI_PATH),
    }
    assert document["openapi"] == "3.1.0"
    assert document["info"] == {"title": "Test API", "version": "1.2.3", "description": "testing"}
    operation_ids = [
        operation["operationId"]
        for item in document["paths"].values()
        for operation in item.values()
    ]
    assert sorted(operation_ids) == sorted(
        ["list_things", "get_thing", "put_thing", "delete_thing", "stream", "get_openapi"]
    )


def test_scopes_become_security_requirements(document: dict[str, Any]) -> None:
    paths = document["paths"]
    assert document["components"]["securitySchemes"] == {
        "bearerAuth": {"type": "http", "scheme": "bearer"}
    }
    for method, path, scope in [
        ("get", "/api/things/{thing}", "read"),
        ("put", "/api/things/{thing}", "staff"),
        ("delete", "/api/things/{thing}", "staff"),
        ("get", "/api/stream", "read"),
    ]:
        assert paths[path][method]["security"] == [{"bearerAuth": []}]
        assert paths[path][method]["x-scope"] == scope
        assert {"401", "403"} <= set(paths[path][method]["responses"])
    for method, path in [("get", "/api/things"), ("get", OPENAPI_PATH)]:
        assert paths[path][method]["security"] == []
        assert "x-scope" not in paths[path][method]
        assert not {"401", "403"} & set(paths[path][method]["responses"])


def test_parameters_bodies_and_responses(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    listing = document["paths"]["/api/things"]["get"]
    assert {(p["name"], p["in"], p["required"]) for p in listing["parameters"]} == {
        ("color", "query", True),
        ("limit", "query", False),
    }
    color = next(p for p in listing["parameters"] if p["name"] == "color")
    assert color["description"] == "only things of this color"
    assert set(listing["responses"]) == {"200"}  # open, no body, no path parameter

    get = document["paths"]["/api/things/{thing}"]["get"]
    assert get["parameters"] == [
        {"name": "thing", "in": "path", "required": True, "schema": {"type": "string"}}
    ]
    assert set(get["responses"]) == {"200", "401", "403", "404"}
    success = get["responses"]["200"]["content"]["application/json"]["schema"]
    assert success["$ref"].startswith("#/components/schemas/")
    out = schemas[success["$ref"].rsplit("/", 1)[1]]
    assert set(out["required"]) == {"id", "name", "size"}

    put = document["paths"]["/api/things/{thing}"]["put"]
    assert put["description"] == "Idempotent."
    assert put["tags"] == ["things", "admin"]
    assert put["requestBody"]["required"] is True
    body = put["requestBody"]["content"]["application/json"]["schema"]
    body_schema = schemas[body["$ref"].rsplit("/", 1)[1]]
    assert set(body_schema["required"]) == {"name", "size"}
    assert body_schema["properties"]["size"] == {"$ref": "#/components/schemas/Dimensions"}
    assert "Dimensions" in schemas  # nested models lifted into components
    assert set(put["responses"]) == {"200", "201", "400", "401", "403", "404", "409", "413", "422"}
    assert put["responses"]["201"]["description"] == "created"
    for status in ["400", "401", "403", "404", "409", "413", "422"]:
        assert put["responses"][status]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Error"
        }

    deleted = document["paths"]["/api/things/{thing}"]["delete"]["responses"]["204"]
    assert deleted == {"description": "removed"}
    streamed = document["paths"]["/api/stream"]["get"]["responses"]["200"]
    assert streamed["content"] == {"text/event-stream": {"schema": {"type": "string"}}}


def test_the_error_schema_matches_the_error_shape(document: dict[str, Any]) -> None:
    error = document["components"]["schemas"]["Error"]
    assert error["required"] == ["error"]
    inner = error["properties"]["error"]
    assert inner["required"] == ["code", "message", "details"]
    assert inner["properties"]["code"]["type"] == "string"
    assert inner["properties"]["message"]["type"] == "string"
    assert "type" not in inner["properties"]["details"]  # anything


def test_an_undocumented_route_fails_loudly(tmp_path: Path) -> None:
    app = make_app(tmp_path)

    @requires(Scope.STAFF)
    async def post_secret(request: web.Request) -> web.Response:
        return web.json_response({})

    app.router.add_post("/api/things/{thing}/secret", post_secret)
    assert undocumented_routes(app) == ["POST /api/things/{thing}/secret"]
    with pytest.raises(ValueError, match=r"POST /api/things/\{thing\}/secret"):
        openapi_document(app, title="t", version="1")


def test_operation_ids_must_be_unique(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    app.router.add_get("/api/other-things", list_things)
    with pytest.raises(ValueError, match="list_things"):
        openapi_document(app, title="t", version="1")


def test_a_status_must_be_an_http_status() -> None:
    with pytest.raises(ValueError, match="1000"):
        operation("bad", responses={1000: "no such status"})


@pytest.fixture
async def client(app: web.Application) -> AsyncIterator[TestClient[Any, Any]]:
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    yield client
    await client.close()


async def test_served_without_a_token_as_json(
    app: web.Application, client: TestClient[Any, Any]
) -> None:
    async with client.get(OPENAPI_PATH) as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        served = await response.json()
    validate(served, cls=OpenAPIV31SpecValidator)
    assert served == openapi_document(app, title="Test API", version="1.2.3", description="testing")
    async with client.get(OPENAPI_PATH) as again:  # from the cache
        assert await again.json() == served
    async with client.get("/api/things/x") as guarded:  # the middleware is active
        assert guarded.status == 401
