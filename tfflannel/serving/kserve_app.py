"""The KServe half of `serve` (the optional `serve` extra): a `kserve.Model` around an export, and the server.

Only the request and response formats live in `rest_protocol`; everything HTTP is KServe's (FastAPI on
uvicorn). tfflannel adds three settings KServe does not have: the address to bind (KServe listens on every
interface; here 127.0.0.1 unless `--host` says otherwise), a request body limit (an ASGI middleware that
answers 413 from the Content-Length header, or as soon as a streamed body passes the limit, so an oversized
body is never held whole), and TF Serving's `{"error": ...}` for HTTP errors FastAPI would answer as
`{"detail": ...}`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path

import tensorflow as tf

from tfflannel.serving.encoded_guard import IMAGE_LIMITS_FILE
from tfflannel.serving.predict import latest_version
from tfflannel.serving.rest_protocol import (
    SIGNATURE,
    BadRequest,
    describe_graph_refusal,
    parse_predict_request,
    prediction_rows,
)


def import_kserve():
    """Import `kserve` (the `serve` extra), which parses `sys.argv` at import: hide tfflannel's options from it.

    KServe's own argument parser would read `--model` as its `--model_name` (argparse abbreviations).

    Returns:
        module. `kserve`.

    Raises:
        ImportError: the extra is not installed, with the command that installs it.
    """
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        import kserve
        import kserve.model_server  # noqa: F401  (its module-level parser runs here)
    except ImportError as error:
        raise ImportError("`serve` needs KServe: pip install 'tfflannel[serve]' (or pip install kserve)") from error
    finally:
        sys.argv = argv
    return kserve


kserve = import_kserve()
from fastapi.responses import JSONResponse  # noqa: E402  (after kserve's argv guard; FastAPI comes with it)
from kserve.errors import InvalidInput  # noqa: E402
from starlette.datastructures import Headers  # noqa: E402
from starlette.exceptions import HTTPException  # noqa: E402


class ExportedModel(kserve.Model):
    """An export's `serving_default` signature as a KServe V1 model.

    Args:
        name: str. The model name in the URL (`/v1/models/NAME`).
        export_dir: str or Path. An `export` directory (its highest version is served) or a version folder.
        max_instances: int. Most instances in one request.
    """

    def __init__(self, name, export_dir, max_instances):
        super().__init__(name)
        self.export_dir = Path(export_dir)
        self.max_instances = int(max_instances)
        self.signature = None
        self.image_limits = {}

    def load(self):
        """Load the SavedModel and its recorded image limits; the model is ready afterwards."""
        version = latest_version(self.export_dir)
        self.signature = tf.saved_model.load(str(version)).signatures[SIGNATURE]
        limits = version / "assets.extra" / IMAGE_LIMITS_FILE
        self.image_limits = json.loads(limits.read_text()) if limits.is_file() else {}
        self.version = version
        self.ready = True
        return self.ready

    def run_signature(self, images):
        """`serving_default` on encoded images; the graph's refusals become `BadRequest`."""
        try:
            outputs = self.signature(images=tf.constant(images, tf.string))
        except tf.errors.InvalidArgumentError as error:
            raise BadRequest(describe_graph_refusal(error.message)) from None
        return prediction_rows({name: value.numpy() for name, value in outputs.items()})

    async def predict(self, payload, headers=None):
        """TF Serving's predict: `{"instances": [...]}` -> `{"predictions": [...]}`, the graph in a worker thread."""
        try:
            images = parse_predict_request(payload, self.max_instances)
            rows = await asyncio.get_running_loop().run_in_executor(None, self.run_signature, images)
        except BadRequest as error:
            raise InvalidInput(str(error)) from None
        return {"predictions": rows}


class BodyTooLarge(HTTPException):
    """A request body over the limit (413)."""

    def __init__(self, max_bytes):
        super().__init__(413, f"request body over the limit of {max_bytes} bytes (--max-body-mb)")


class RequestBodyLimit:
    """ASGI middleware: 413 for a body over `max_bytes`, from its Content-Length or once the streamed bytes pass it.

    Args:
        app: the ASGI application.
        max_bytes: int. Largest accepted request body.
    """

    def __init__(self, app, max_bytes):
        self.app = app
        self.max_bytes = int(max_bytes)

    async def __call__(self, scope, receive, send):
        """Refuse an HTTP request whose body is over the limit; pass everything else through."""
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            response = await error_response(None, BodyTooLarge(self.max_bytes))
            return await response(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise BodyTooLarge(self.max_bytes)      # answered by `error_response`, inside the app
            return message

        return await self.app(scope, limited_receive, send)


async def error_response(_request, error):
    """An HTTP error as TF Serving writes it: its status and `{"error": "..."}`."""
    return JSONResponse(status_code=error.status_code, content={"error": str(error.detail)})


class BoundModelServer(kserve.ModelServer):
    """KServe's ModelServer listening on one address (KServe's own binds every interface).

    Args:
        host: str. The address to listen on.
        **kwargs: `kserve.ModelServer` arguments.
    """

    def __init__(self, host, **kwargs):
        super().__init__(**kwargs)
        self.host = host

    def setup_event_loop(self):
        """`start` calls this after creating its REST server and before it listens: set the address here."""
        if self._rest_server is None:
            raise RuntimeError("this KServe version starts no single-process REST server; pin kserve as setup.cfg")
        self._rest_server.config.host = self.host
        super().setup_event_loop()


def serve_export(export_dir, name, host, port, max_body_mb, max_instances):
    """Serve an export until interrupted (SIGINT / SIGTERM).

    Args:
        export_dir: str or Path. An `export` directory or version folder.
        name: str. The model name in the URLs.
        host: str. Address to listen on.
        port: int. HTTP port.
        max_body_mb: float. Largest request body, in MB (1e6 bytes).
        max_instances: int. Most instances per request.

    Returns:
        ExportedModel. The model that was served, after the server stopped.
    """
    from kserve.model_server import app

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")   # no-op if set up
    logging.getLogger("uvicorn.error").setLevel(logging.INFO)      # "Uvicorn running on http://HOST:PORT" once bound
    model = ExportedModel(name, export_dir, max_instances)
    model.load()
    app.add_middleware(RequestBodyLimit, max_bytes=int(max_body_mb * 1e6))
    app.add_exception_handler(HTTPException, error_response)
    server = BoundModelServer(host, http_port=port, enable_grpc=False, workers=1, enable_docs_url=False)
    server.start([model])
    return model
