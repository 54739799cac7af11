"""The FastAPI application: wiring of routers, middleware, error handlers and lifespan."""

from __future__ import annotations

import contextlib
import hmac
import logging

import httpx
from fastapi import Depends, FastAPI, Request, Security
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api import Problem, bearer_scheme, canonical_path_ids, errors_for
from app.apidocs import install_docs
from app.contract import finish as finish_contract
from app.auth.jwt import TokenVerifier
from app.db.engine import Database, with_pooler
from app.db.listener import listen_dsn
from app.errors import DatabaseUnavailable, Unauthorized, install_error_handlers
from app.middleware import RequestContextMiddleware
from app.secrets.crypto import Cipher
from app.settings import Settings, get_settings

log = logging.getLogger("meshhook.app")

DESCRIPTION = """MeshHook engine service: durable webhook-driven workflows on Postgres, with
**resume from a chosen step** for failed, paused and cancelled runs.

Authenticate with a Supabase access token: `Authorization: Bearer <jwt>`. Every error is
RFC 9457 `application/problem+json` with a `request_id`."""


OPENAPI_TAGS = [
    {"name": "projects", "description": "Projects (the tenant), their members and encrypted secrets."},
    {"name": "workflows", "description": "Workflow definitions and their immutable versions."},
    {"name": "runs", "description": "Start, list and inspect runs, their steps, lineage and events; cancel or pause."},
    {"name": "resume", "description": "Resume a failed, paused or cancelled run from a chosen step, or preview it."},
    {"name": "hooks", "description": "Signed webhook deliveries that start runs (no bearer token)."},
    {
        "name": "bulk-resume",
        "description": "Resume every run a filter matches (e.g. after an outage): throttled, "
        "previewable, idempotent, cancellable and audited per run.",
    },
    {"name": "audit", "description": "The append-only audit log of a project (owners only)."},
    {
        "name": "health",
        "description": "Liveness, readiness (no bearer token) and Prometheus metrics (a bearer "
        "token only when MESHHOOK_METRICS_TOKEN is set).",
    },
]


def create_app(
    settings: Settings | None = None,
    *,
    database_url: str | None = None,
    jwt_secret: str | None = None,
    secret_key: str | None = None,
    run_worker: bool = False,
) -> FastAPI:
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        from app.runs.stream import EventHub

        url = database_url or settings.database_url
        if url is None:
            from app.db.embedded import resolve_database_url

            url = resolve_database_url()
        url = with_pooler(url, settings.db_pooler)
        app.state.db = Database(
            url,
            pool_size=settings.db_pool_size,
            application_name="meshhook-api",
            connect_timeout_s=settings.db_connect_timeout_s,
            pool_timeout_s=settings.db_pool_timeout_s,
            command_timeout_s=settings.db_command_timeout_s,
        )
        app.state.http = httpx.AsyncClient()
        app.state.verifier = TokenVerifier(settings, app.state.http, hs_secret=jwt_secret)
        key = secret_key or settings.secret_key
        if key is None:
            from app.db.embedded import local_secret_key

            key = local_secret_key()
        app.state.cipher = Cipher(key)
        app.state.hub = EventHub(listen_dsn(settings.listen_url, url), poll_s=settings.poll_interval_s)
        app.state.hub.start()  # at start, so a process with nowhere to LISTEN says it polls right away
        log.info(
            "database pool ready",
            extra={
                "pooler": app.state.db.pooler,
                "pool_size": settings.db_pool_size,
                "notifications": "listen" if app.state.hub.listens else "polling",
            },
        )
        worker = None
        if run_worker:
            from app.engine.worker import WorkerThread

            # Its own thread and event loop: engine work never stalls the API's loop.
            worker = WorkerThread(settings, url, app.state.cipher, name="api-inproc")
            await worker.start()
        app.state.worker = worker
        try:
            yield
        finally:
            if worker is not None:
                await worker.stop()
            await app.state.hub.close()
            await app.state.http.aclose()
            await app.state.db.dispose()

    # redirect_slashes=False: a trailing slash is a 404, never a redirect built from the Host header.
    app = FastAPI(
        title="MeshHook engine service",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_tags=OPENAPI_TAGS,
        docs_url=None,
        redoc_url=None,
        redirect_slashes=False,
    )
    app.state.settings = settings
    install_error_handlers(app)
    install_docs(app, "MeshHook engine service")

    from app.audit.router import router as audit_router
    from app.bulk.router import router as bulk_router
    from app.hooks.router import router as hooks_router
    from app.projects.router import router as projects_router
    from app.resume.router import router as resume_router
    from app.runs.router import router as runs_router
    from app.workflows.router import router as workflows_router

    # bearer_scheme only documents the security scheme (CurrentUser does the checking); hooks are signed instead.
    for r in (projects_router, workflows_router, runs_router, resume_router, audit_router, bulk_router):
        app.include_router(r, dependencies=[Security(bearer_scheme), Depends(canonical_path_ids)])
    app.include_router(hooks_router, dependencies=[Depends(canonical_path_ids)])

    from app.console.router import mount as mount_console

    mount_console(app)

    @app.get("/healthz", tags=["health"], operation_id="health-live", summary="Liveness")
    async def healthz():
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["health"],
        operation_id="health-ready",
        summary="Readiness (checks the database)",
        responses=errors_for(503),
    )
    async def readyz(request: Request):
        try:
            await request.app.state.db.ping()
        except DatabaseUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure to reach the DB is "not ready"
            raise DatabaseUnavailable() from exc
        return {"status": "ready"}

    @app.get(
        "/metrics",
        tags=["health"],
        operation_id="health-metrics",
        summary="Prometheus metrics",
        description="Open when MESHHOOK_METRICS_TOKEN is unset; otherwise requires "
        "`Authorization: Bearer <MESHHOOK_METRICS_TOKEN>` (DESIGN §9.5).",
        response_class=PlainTextResponse,
        responses=errors_for(401),
    )
    async def metrics(request: Request):
        expected = settings.metrics_token
        if expected is not None:
            scheme, _, sent = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(sent.strip().encode(), expected.encode()):
                raise Unauthorized("The metrics token is missing or wrong.", token_sent=bool(sent))
        return PlainTextResponse(generate_latest().decode(), media_type=CONTENT_TYPE_LATEST)

    # Make sure the shared problem schema is in the spec even where FastAPI would inline it.
    app.openapi_schema = None
    _orig_openapi = app.openapi

    def openapi():
        if app.openapi_schema:
            return app.openapi_schema
        from app.resume.schemas import ResumeRequest
        from app.bulk.schemas import BulkResumeRead
        from app.runs.schemas import RunDetail

        schema = _orig_openapi()
        components = schema.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        schemas["Problem"] = Problem.model_json_schema()
        # The resume route reads its raw body (so malformed requests are audited too) and
        # refers to this schema through openapi_extra.
        schemas["ResumeRequest"] = ResumeRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        # The body-size middleware can answer 413 to any request that carries a body.
        too_large = errors_for(413)[413]
        for ops in schema["paths"].values():
            for op in ops.values():
                if "requestBody" in op:
                    op["responses"].setdefault("413", too_large)
                    op["responses"] = dict(sorted(op["responses"].items()))
        components["schemas"] = dict(sorted(schemas.items()))
        finish_contract(
            schema, {"schema": {"$ref": "#/components/schemas/Problem"}}, example_models=(RunDetail, BulkResumeRead)
        )
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]

    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=False,
            allow_methods=["GET", "POST", "PUT", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID", "X-Request-ID"],
            expose_headers=["Location", "X-Request-ID", "Retry-After"],
            max_age=86400,
        )
    app.add_middleware(RequestContextMiddleware, max_body_bytes=settings.max_body_bytes)
    return app
