"""`serve`: an export behind KServe's `ModelServer`, answering TF Serving's REST API (KServe's V1 protocol).

`GET /v1/models/NAME` says whether the model is ready; `POST /v1/models/NAME:predict` takes TF Serving's
row format for the `serving_default` signature, `{"instances": [{"b64": "<PNG/JPEG>"}, ...]}` (optionally
with `"signature_name": "serving_default"`, or each instance as `{"images": {"b64": ...}}`), and answers
`{"predictions": [{"probabilities": [...], "label": "...", ...}, ...]}`: one object per instance with every
output of the signature, float32 values written as their shortest decimal, as TF Serving writes them.

Bad requests get a 4xx and `{"error": "..."}` and the server keeps serving: a body over `max_body_mb`
(413, refused from its Content-Length or while it streams, never held whole), malformed JSON, no or an
empty `instances`, more than `max_instances`, bad base64, another signature (400), and images the graph
refuses (`serving.encoded_guard`: over `data.max_megapixels`, under `data.min_side`, not PNG/JPEG, or
undecodable: 400, naming the instance and the limit). The server binds to 127.0.0.1 by default; put it
behind the usual gateway for authentication and TLS. Research use only; not a diagnosis.
"""

from __future__ import annotations

import base64
import binascii
import json
import re

import numpy as np

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8501
DEFAULT_NAME = "tfflannel"
DEFAULT_MAX_BODY_MB = 64.0
DEFAULT_MAX_INSTANCES = 16
SIGNATURE = "serving_default"


class BadRequest(ValueError):
    """A request the client must fix; the server answers 400 with its message as `{"error": ...}`."""


def parse_predict_request(payload, max_instances=DEFAULT_MAX_INSTANCES):
    """The encoded images of a TF Serving row-format request for `serving_default`.

    Args:
        payload: dict, or bytes / str holding JSON (KServe passes the raw body when the client's Content-Type
            is not JSON, as with `curl -d`).
        max_instances: int. Most instances in one request. Defaults to `16`.

    Returns:
        list of bytes: one encoded file per instance, in order.

    Raises:
        BadRequest: malformed JSON, no or empty `instances`, too many, another signature, or an instance that
            is not `{"b64": "<base64>"}` (or `{"images": {"b64": ...}}`).
    """
    if isinstance(payload, (bytes, bytearray, str)):
        try:
            payload = json.loads(payload)
        except (ValueError, UnicodeDecodeError) as error:
            raise BadRequest(f"request body is not valid JSON ({error})") from None
    if not isinstance(payload, dict):
        raise BadRequest(f"request body must be a JSON object with 'instances'; received {type(payload).__name__}")
    signature = payload.get("signature_name", SIGNATURE)
    if signature != SIGNATURE:
        raise BadRequest(f"signature_name {signature!r} is not served; use {SIGNATURE!r} (encoded PNG/JPEG)")
    instances = payload.get("instances")
    if not isinstance(instances, list) or not instances:
        raise BadRequest("'instances' must be a non-empty list of {\"b64\": \"<base64 PNG or JPEG>\"}")
    if len(instances) > max_instances:
        raise BadRequest(f"{len(instances)} instances in one request; the limit is {max_instances} (--max-instances)")
    images = []
    for index, instance in enumerate(instances):
        if isinstance(instance, dict) and set(instance) == {"images"}:
            instance = instance["images"]
        if not (isinstance(instance, dict) and set(instance) == {"b64"} and isinstance(instance["b64"], str)):
            raise BadRequest(f"instance {index}: expected {{\"b64\": \"<base64 PNG or JPEG>\"}}")
        try:
            images.append(base64.b64decode(instance["b64"], validate=True))
        except (binascii.Error, ValueError) as error:
            raise BadRequest(f"instance {index}: invalid base64 ({error})") from None
    return images


def _json_value(array):
    """A NumPy output as TF Serving writes it in JSON: floats as their shortest float32 decimal, strings as text."""
    if array.dtype.kind == "f":
        return array.astype(np.float32).astype(str).astype(np.float64).tolist()
    if array.dtype.kind in "SO":
        return array.astype(bytes).astype(str).tolist()
    return array.tolist()


def prediction_rows(outputs):
    """TF Serving's row format: one dict of every signature output per instance.

    Args:
        outputs: dict of name -> NumPy array with the batch first.

    Returns:
        list of dict: name -> JSON value (lists, floats, bools, strings), sorted by name.
    """
    names = sorted(outputs)
    count = len(outputs[names[0]])
    return [{name: _json_value(np.asarray(outputs[name][index])) for name in names} for index in range(count)]


_GRAPH_NOISE = re.compile(r"\{\{[^}]*\}\}|\[\[[^\]]*\]\]|\[Op:[^\]]*\]")


def describe_graph_refusal(message):
    """The reason in an `InvalidArgumentError` from the served graph, without TensorFlow's node names.

    Args:
        message: str. The error's message.

    Returns:
        str. The assertion text of `encoded_guard` ("instance I: ..."), or the decoder's complaint.
    """
    refused = re.search(r"assertion failed: \[([^\]]*)\]", message)
    if refused:
        return refused.group(1)
    lines = [line.strip() for line in _GRAPH_NOISE.sub("", message).splitlines()]
    reason = next((line for line in reversed(lines) if line and not line.startswith(("File ", "Detected at"))), "")
    return f"an instance could not be decoded as a PNG or JPEG image (truncated or corrupt?): {reason}"
