"""``/openapi.json`` as this server answers: FastAPI's document, then what depends on the configuration (the
documents limit, the engine options the loaded model accepts, the API key, the ``Host`` check), and no trace of
FastAPI's default 422 ``HTTPValidationError`` where a route answers 400 ``{message, detail}``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi.openapi.utils import get_openapi

from ettin_rerank.options import ACTIVATIONS, STRATEGIES
from ettin_rerank.serving.schemas import InfinityRequest, TeiRequest

if TYPE_CHECKING:
    from fastapi import FastAPI

    from ettin_rerank.serving.config import ServerConfig

_LISTS = {"CohereV2Request": "documents", "CohereV1Request": "documents", "InfinityRequest": "documents",
          "TeiRequest": "texts", "NativeRequest": "documents"}
_OPEN = frozenset({"/health", "/ping", "/live", "/ready", "/metrics", "/"})


def describe(app: FastAPI, config: ServerConfig) -> dict[str, Any]:
    """The OpenAPI document of ``app`` (built once the model is loaded, then cached)."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    document = get_openapi(title=app.title, version=_version(), description=app.description, routes=app.routes)
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for model in (TeiRequest, InfinityRequest):  # /rerank reads its body itself: no model FastAPI would list
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    for name, field in _LISTS.items():
        if name in schemas:
            schemas[name]["properties"][field]["maxItems"] = config.max_documents
    engine = app.state.service.engine
    if "NativeRequest" in schemas:
        schemas["NativeRequest"]["properties"]["options"] = _options_schema(engine)
    for path, operations in document.get("paths", {}).items():
        for operation in operations.values():
            tei = "tei" in operation.get("tags", ()) and path != "/ready"
            error = {"$ref": f"#/components/schemas/{'TeiError' if tei else 'CohereError'}"}
            for parameter in operation.get("parameters", ()):  # an optional header is absent, never "null"
                options = parameter.get("schema", {}).get("anyOf", [])
                if parameter.get("in") == "header" and {"type": "null"} in options:
                    parameter["schema"] = next(option for option in options if option != {"type": "null"})
            responses = operation.setdefault("responses", {})
            if not tei:
                responses.pop("422", None)
            if config.allowed_hosts is not None:
                responses.setdefault("400", _error(error, "A Host that is not allowed, or an invalid request"))
            if config.api_key is not None and path not in _OPEN:
                operation["security"] = [{"bearer": []}]
                responses["401"] = _error(error, "Missing or wrong API key", {"WWW-Authenticate": {
                    "description": "Bearer", "schema": {"type": "string"}}})
    if config.api_key is not None:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    if not any("HTTPValidationError" in str(operations) for operations in document.get("paths", {}).values()):
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
    if engine is not None:
        app.openapi_schema = document
    return document


def _error(schema: dict[str, str], description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}},
            **({"headers": headers} if headers else {})}


def _options_schema(engine: Any) -> dict[str, Any]:
    """The engine options of ``POST /ettin/v1/rerank``, with the bounds of the loaded model (``null``: the
    server's default for that option)."""

    def nullable(schema: dict[str, Any]) -> dict[str, Any]:
        return {"anyOf": [schema, {"type": "null"}]}

    length: dict[str, Any] = {"type": "integer"}
    activations = list(ACTIVATIONS)
    if engine is not None:
        length |= {"minimum": engine.min_max_length, "maximum": engine.model_max_length}
        if engine.calibration is None:
            activations.remove("calibrated")
    return {"type": "object", "additionalProperties": False, "description": (
        "RerankOptions by name. window_overlap must be below half of max_length, and a query at most half of "
        "max_length unless truncate_query."), "properties": {
        "max_length": nullable(length),
        "long_document_strategy": nullable({"enum": list(STRATEGIES)}),
        "window_overlap": nullable({"type": "integer", "minimum": 0}),
        "activation": nullable({"enum": activations}),
        "calibration_factor": nullable({"type": "number"}),
        "max_tokens_per_doc": nullable({"type": "integer", "minimum": 1}),
        "truncate_query": nullable({"type": "boolean"}),
        "truncation_direction": nullable({"enum": ["right", "left"]}),
    }}


def _version() -> str:
    from ettin_rerank import __version__

    return __version__
