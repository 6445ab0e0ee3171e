"""HTTP/JSON API of the aligner (FastAPI on uvicorn): the gRPC operations for tools that speak
plain JSON, plus ``/healthz`` and ``/metrics``. The OpenAPI schema is at ``/openapi.json``;
the ``/docs`` and ``/redoc`` pages are off (they load their scripts from a CDN, so they were blank
offline, and no installed package ships the Swagger UI assets).

Every error, ours or the framework's (unknown path, wrong method, unparsable or invalid body,
too large a body, a crash), comes back in one shape, ``{"error": {"code": ..., "message": ...}}``
(``ErrorResponse``), with a status that says what to fix: 400 for a request to change, 404,
405, 409, 413 for a size limit, 500. OpenAPI declares exactly those, with that schema, and a
typed schema for every success.
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
from typing import Annotated, Literal

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest
from pydantic import BaseModel, Field, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from fedmkt.align.aligner import printable_token
from fedmkt.align.engine import (
    MAX_POSITIONS,
    MAX_TOP_K,
    AlignmentEngine,
    KnowledgeConfig,
    TargetTokens,
    TokenizerRefArg,
    parse_method,
    parse_mode,
)
from fedmkt.align.registry import TokenizerInfo
from fedmkt.errors import HTTP_STATUS, FedmktError, InvalidArgument, status_of
from fedmkt.wire.chunking import KnowledgeSample, chunk_knowledge
from fedmkt.wire.errors import WireError
from fedmkt.wire.validate import decode_sample

HTTP_REQUESTS = Counter("fedmkt_http_requests_total",
                        "HTTP requests by route template (unmatched: no route) and status",
                        ["path", "status"])
UNMATCHED = "unmatched"
log = logging.getLogger("fedmkt.aligner.http")
DEFAULT_MAX_BODY = 160 << 20


class Ref(BaseModel):
    fingerprint: str = ""
    builtin: str = ""

    @model_validator(mode="after")
    def exactly_one(self) -> Ref:
        if bool(self.fingerprint) == bool(self.builtin):
            raise ValueError("give exactly one of 'fingerprint' or 'builtin'")
        return self

    def arg(self) -> TokenizerRefArg:
        return TokenizerRefArg(fingerprint=self.fingerprint, builtin=self.builtin)


class RegisterBody(BaseModel):
    name: str = ""
    builtin: str = ""
    files: dict[str, str] = Field(default_factory=dict, description="file name -> base64 content")


class VocabMapBody(BaseModel):
    source: Ref
    target: Ref
    canonical: Literal["surface", "fate"] = "surface"


class AlignTextBody(BaseModel):
    source: Ref
    target: Ref
    text: str = Field(max_length=200_000)
    canonical: Literal["surface", "fate"] = "surface"
    method: Literal["dtw", "offsets"] = "dtw"


INT32_MAX = 2**31 - 1


class SampleIn(BaseModel):
    sample_id: str = Field(min_length=1, max_length=256)
    token_ids: list[int] = Field(max_length=MAX_POSITIONS + 1)
    topk_ids: list[Annotated[list[int], Field(max_length=MAX_TOP_K)]] = Field(
        max_length=MAX_POSITIONS)
    topk_logits: list[Annotated[list[float], Field(max_length=MAX_TOP_K)]] = Field(
        max_length=MAX_POSITIONS)
    position_start: int = Field(default=0, ge=0, le=INT32_MAX)
    loss: float | None = None
    target_token_ids: list[int] | None = None
    target_text: str | None = None


class AlignKnowledgeBody(BaseModel):
    source_fingerprint: str
    target_fingerprint: str
    canonical: Literal["surface", "fate"] = "surface"
    method: Literal["dtw", "offsets"] = "dtw"
    top_k: int = Field(default=0, ge=0, le=MAX_TOP_K)
    run_id: str = Field(default="adhoc", min_length=1, max_length=256)
    round: int = Field(default=0, ge=0, le=INT32_MAX)
    source: str = Field(default="http", min_length=1, max_length=256)
    samples: list[SampleIn] = Field(max_length=4096)


class ErrorBody(BaseModel):
    code: str = Field(description="gRPC status name: INVALID_ARGUMENT, NOT_FOUND, "
                                  "FAILED_PRECONDITION, RESOURCE_EXHAUSTED, UNIMPLEMENTED, "
                                  "INTERNAL, ...")
    message: str = Field(description="what is wrong and what to change")


class ErrorResponse(BaseModel):
    """The one shape of every error response."""

    error: ErrorBody


class Health(BaseModel):
    status: Literal["SERVING"]


class TokenizerOut(BaseModel):
    fingerprint: str
    vocab_size: int
    name: str
    special_token_ids: list[int]
    word_boundary_marker: str


class TokenizerList(BaseModel):
    tokenizers: list[TokenizerOut]


class VocabMapOut(BaseModel):
    source_fingerprint: str
    target_fingerprint: str
    canonical: Literal["surface", "fate"]
    source_to_target: list[int] = Field(description="target id per source id")
    from_cache: bool
    build_seconds: float
    exact_matches: int


class AlignTextOut(BaseModel):
    source_ids: list[int]
    target_ids: list[int]
    source_tokens: list[str]
    target_tokens: list[str]
    pairs: list[tuple[int, int]] = Field(description="(source index, target index), monotone")


class SampleStatsOut(BaseModel):
    positions: int
    aligned: int
    fallback: int


class SampleOut(BaseModel):
    """One projected sample; valid as a ``samples`` entry of a request the other way round."""

    sample_id: str
    token_ids: list[int]
    position_start: int
    topk_ids: list[list[int]] = Field(description="-1 = padding slot")
    topk_logits: list[list[float]] = Field(description="0 at padding slots")
    loss: float | None
    stats: SampleStatsOut


class AlignKnowledgeOut(BaseModel):
    target_fingerprint: str
    samples: list[SampleOut]


def _errors(*statuses: int) -> dict:
    described = {
        400: "the request is malformed or a value is out of range; the message names it",
        404: "no such tokenizer (or path)",
        405: "the path does not take that method",
        409: "the request does not fit the state (another run, round or tokenizer)",
        413: "a size limit was passed; the message names it and its setting",
        500: "a bug in the aligner",
    }
    return {s: {"model": ErrorResponse, "description": described[s]} for s in statuses}


# What a status means, as a gRPC status name, for errors the framework raises itself.
HTTP_CODES = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 405: "UNIMPLEMENTED",
              409: "FAILED_PRECONDITION", 413: "RESOURCE_EXHAUSTED", 415: "INVALID_ARGUMENT",
              499: "CANCELLED", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


def info_json(info: TokenizerInfo) -> dict:
    return {
        "fingerprint": info.fingerprint, "vocab_size": info.vocab_size, "name": info.name,
        "special_token_ids": list(info.special_token_ids),
        "word_boundary_marker": info.word_boundary_marker,
    }


def _error(code: str, message: str, status: int | None = None,
           headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}},
                        status_code=status or HTTP_STATUS.get(code, 500), headers=headers)


DESCRIPTION = (
    "MinED vocabulary maps, sequence alignment and top-k projection between Hugging Face "
    "tokenizers.\n\nEvery error has one shape, `ErrorResponse`: "
    '`{"error": {"code": "<gRPC status name>", "message": "<what to fix>"}}`.\n\n'
    "The interactive `/docs` and `/redoc` pages are turned off: they load their scripts from a "
    "CDN, which an offline deployment cannot reach, and no bundled copy is installed. Read this "
    "schema (`/openapi.json`) with any OpenAPI viewer instead."
)


def create_app(engine: AlignmentEngine, max_body_bytes: int = DEFAULT_MAX_BODY) -> FastAPI:
    app = FastAPI(title="fedmkt aligner", version="1", description=DESCRIPTION,
                  docs_url=None, redoc_url=None)
    _openapi_without_422(app)

    # Pure ASGI (no BaseHTTPMiddleware: it would wrap the body-limit error in an exception
    # group that FastAPI then reports as a parse error).
    app.add_middleware(Guard, max_bytes=max_body_bytes, routes=app.router.routes)

    @app.exception_handler(BodyTooLarge)
    async def on_too_large(request: Request, exc: BodyTooLarge):
        return _error("RESOURCE_EXHAUSTED", exc.detail)

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError):
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        return _error("INVALID_ARGUMENT", problems)

    async def on_error(request: Request, exc: Exception):
        code = status_of(exc) or "INTERNAL"
        if code == "INTERNAL":
            log.error("%s %s failed", request.method, request.url.path,
                      exc_info=(type(exc), exc, exc.__traceback__))
        return _error(code, str(exc) if code != "INTERNAL" else f"internal error: {exc}")

    # Library errors carry their status; anything else is a 500, in the same shape.
    app.add_exception_handler(FedmktError, on_error)
    app.add_exception_handler(WireError, on_error)
    app.add_exception_handler(Exception, on_error)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException):
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.url.path}; see /openapi.json for the API"
        elif exc.status_code == 405:  # Starlette's Allow names one route's methods only
            methods = sorted({m for r in app.routes if getattr(r, "methods", None)
                              and r.path_regex.match(request.url.path) for m in r.methods})
            allowed = ", ".join(methods)
            exc.headers = {**(exc.headers or {}), "Allow": allowed}
            message = f"{request.method} is not allowed on {request.url.path}; allowed: {allowed}"
        code = HTTP_CODES.get(exc.status_code,
                              "INVALID_ARGUMENT" if exc.status_code < 500 else "INTERNAL")
        return _error(code, message, status=exc.status_code, headers=exc.headers)

    @app.get("/healthz", response_model=Health, responses=_errors(500))
    def healthz() -> dict:
        return {"status": "SERVING"}

    @app.get("/metrics", response_class=Response, responses={
        200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
              "description": "Prometheus text format"}, **_errors(500)})
    def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/tokenizers", response_model=TokenizerOut,
              responses=_errors(400, 404, 413, 500))
    def register(body: RegisterBody) -> dict:
        files = {}
        for name, content in body.files.items():
            try:
                files[name] = base64.b64decode(content, validate=True)
            except (binascii.Error, ValueError):
                raise InvalidArgument(f"files.{name}: not valid base64") from None
        return info_json(engine.register(files=files, name=body.name, builtin=body.builtin))

    @app.get("/v1/tokenizers", response_model=TokenizerList, responses=_errors(500))
    def list_tokenizers() -> dict:
        return {"tokenizers": [info_json(i) for i in engine.list_tokenizers()]}

    @app.get("/v1/tokenizers/{fingerprint}", response_model=TokenizerOut,
             responses=_errors(400, 404, 500))
    def get_tokenizer(fingerprint: str) -> dict:
        return info_json(engine.tokenizer_info(TokenizerRefArg(fingerprint=fingerprint)))

    @app.post("/v1/vocab-map", response_model=VocabMapOut,
              responses=_errors(400, 404, 413, 500))
    def vocab_map(body: VocabMapBody) -> dict:
        result = engine.vocab_map(body.source.arg(), body.target.arg(), parse_mode(body.canonical))
        return {
            "source_fingerprint": result.source_fingerprint,
            "target_fingerprint": result.target_fingerprint,
            "canonical": body.canonical,
            "source_to_target": result.source_to_target.tolist(),
            "from_cache": result.from_cache,
            "build_seconds": result.build_seconds,
            "exact_matches": result.exact_matches,
        }

    @app.post("/v1/align-text", response_model=AlignTextOut,
              responses=_errors(400, 404, 413, 500))
    def align_text(body: AlignTextBody) -> dict:
        result = engine.align_text(body.source.arg(), body.target.arg(), body.text,
                                   parse_mode(body.canonical), parse_method(body.method))
        return {
            "source_ids": list(result.source_ids), "target_ids": list(result.target_ids),
            "source_tokens": [printable_token(t) for t in result.source_tokens],
            "target_tokens": [printable_token(t) for t in result.target_tokens],
            "pairs": [[int(i), int(j)] for i, j in result.path],
        }

    @app.post("/v1/align-knowledge", response_model=AlignKnowledgeOut,
              responses=_errors(400, 404, 409, 413, 500))
    def align_knowledge(body: AlignKnowledgeBody) -> dict:
        k = len(body.samples[0].topk_ids[0]) if body.samples and body.samples[0].topk_ids else 0
        chunk_samples, targets = [], {}
        for s in body.samples:
            chunk_samples.append(KnowledgeSample(
                sample_id=s.sample_id,
                token_ids=_int32(s.token_ids, f"{s.sample_id}.token_ids"),
                topk_ids=_int32(s.topk_ids, f"{s.sample_id}.topk_ids"),
                topk_logits=_float32(s.topk_logits, f"{s.sample_id}.topk_logits"),
                position_start=s.position_start,
                loss=float("nan") if s.loss is None else s.loss,
            ))
            targets[s.sample_id] = TargetTokens(
                token_ids=None if s.target_token_ids is None
                else _int32(s.target_token_ids, f"{s.sample_id}.target_token_ids"),
                text=s.target_text or "",
            )
        config = KnowledgeConfig(
            source_fingerprint=body.source_fingerprint,
            target_fingerprint=body.target_fingerprint,
            mode=parse_mode(body.canonical), method=parse_method(body.method), top_k=body.top_k,
            logit_dtype="float32",
        )
        header = {"run_id": body.run_id, "round": body.round, "source": body.source,
                  "tokenizer_fingerprint": body.source_fingerprint, "top_k": k}
        try:
            chunks = list(chunk_knowledge(chunk_samples, header, logit_dtype="float32"))
        except ValueError as exc:  # max_bytes is the chunker's, not a setting a caller has
            raise InvalidArgument(str(exc).replace(
                "raise max_bytes", f"a sample holds at most {MAX_POSITIONS + 1} token_ids and "
                f"{MAX_POSITIONS} positions of at most {MAX_TOP_K} slots")) from None
        out = []
        vocab = engine.tokenizer_info(TokenizerRefArg(fingerprint=body.target_fingerprint))
        for chunk in engine.align_knowledge(config, ((c, targets) for c in chunks)):
            for sample_pb in chunk.samples:
                s = decode_sample(sample_pb, vocab_size=vocab.vocab_size,
                                  top_k=chunk.header.top_k)
                # padding slots (id -1) carry logit 0, as the projection writes them: JSON has
                # no -inf (it became null, which no request accepts)
                logits = np.where(s.topk_ids < 0, np.float32(0), s.topk_logits)
                out.append({
                    "sample_id": s.sample_id,
                    "token_ids": s.token_ids.tolist(),
                    "position_start": s.position_start,
                    "topk_ids": s.topk_ids.tolist(),
                    "topk_logits": logits.tolist(),
                    "loss": None if math.isnan(s.loss) else s.loss,
                    "stats": {"positions": sample_pb.stats.positions,
                              "aligned": sample_pb.stats.aligned,
                              "fallback": sample_pb.stats.fallback},
                })
        return {"target_fingerprint": body.target_fingerprint, "samples": out}

    return app


def _openapi_without_422(app: FastAPI) -> None:
    """FastAPI declares 422 HTTPValidationError on every route with a body; this service answers
    validation errors with 400 ErrorResponse (declared per route), so those entries go."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version,
                                 description=app.description, routes=app.routes)
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
            schemas = schema.get("components", {}).get("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi


class BodyTooLarge(HTTPException):
    """The request body passed the limit while it was read (an HTTPException, so that FastAPI's
    body parsing lets it through instead of calling it a parse error)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"request body is over the limit of {max_bytes} bytes "
                              "(the aligner's max_message_mb setting, base64 included)")


class Guard:
    """ASGI middleware in front of every request: refuses a body whose Content-Length is over
    ``max_bytes`` before reading it, raises :class:`BodyTooLarge` as soon as the body read so
    far passes ``max_bytes`` (chunked bodies have no Content-Length; nothing more is read), and
    counts each request in ``fedmkt_http_requests_total`` under its route template
    (``/v1/tokenizers/{fingerprint}``), every path no route matches under one label,
    ``unmatched``: the number of series stays bounded whatever paths clients send."""

    def __init__(self, app, max_bytes: int, routes: list) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.routes = routes  # the app's route list (routes added later are seen too)

    def route_label(self, scope) -> str:
        from starlette.routing import Match

        for route in self.routes:
            match, _ = route.matches(scope)
            if match is not Match.NONE:  # FULL, or PARTIAL: the path matches, the method not
                return getattr(route, "path", UNMATCHED)
        return UNMATCHED

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500  # unless a response starts: an error the server itself answers

        async def counted(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        label = self.route_label(scope)
        try:
            length = dict(scope["headers"]).get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
                shown = length.decode("latin-1")[:32]
                response = _error("RESOURCE_EXHAUSTED",
                                  f"request body is {shown} bytes; the limit is "
                                  f"{self.max_bytes} (the aligner's max_message_mb setting, "
                                  "base64 included)")
                await response(scope, receive, counted)
                return
            await self.app(scope, limited, counted)
        finally:
            HTTP_REQUESTS.labels(label, str(status)).inc()


def _float32(values, what: str) -> np.ndarray:
    """JSON numbers as float32 logits; a finite number beyond float32 is refused here rather
    than turned into inf."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (ValueError, OverflowError):
        raise InvalidArgument(f"{what}: must be a rectangular list of numbers") from None
    finite = arr[np.isfinite(arr)]
    limit = float(np.finfo(np.float32).max)
    if finite.size and float(np.abs(finite).max()) > limit:
        raise InvalidArgument(f"{what}: values must fit in float32 (magnitude up to {limit:g})")
    return arr.astype(np.float32)


def _int32(values, what: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.int64)
    except (ValueError, OverflowError):
        raise InvalidArgument(f"{what}: must be a rectangular list of integers") from None
    if arr.size and (arr.min() < -(2**31) or arr.max() >= 2**31):
        raise InvalidArgument(f"{what}: ids must fit in int32")
    return arr.astype(np.int32)
