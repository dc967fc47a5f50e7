"""`tfflannel serve` in a child process on a free loopback port, and a minimal client for it (tests, benchmarks).

The child is started with the running Python, waited for on its own log line (uvicorn's "Uvicorn running on
http://HOST:PORT", printed once the socket listens) within a deadline, checked with one
`GET /v1/models/NAME`, and always stopped (SIGTERM, then SIGKILL after a grace period). Standard library only.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import queue
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

LISTENING = "Uvicorn running on http://"


def free_loopback_port():
    """A TCP port that was free on 127.0.0.1 a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(side):
    """A valid 8-bit grey PNG of side x side black pixels in a few hundred KB: a decompression bomb.

    20,000 x 20,000 is 389 KB on disk and 400 MB decoded. Built in well under a second: the zlib stream is
    cut into 10 MB blocks with full flushes, after which every block compresses to the same bytes.

    Args:
        side: int. Width and height in pixels.

    Returns:
        bytes. The PNG file.
    """
    row_bytes, rows_per_block = side + 1, 500                     # each row: filter byte 0, then the pixels
    blocks, rest = divmod(side, rows_per_block)
    compressor = zlib.compressobj(9)
    parts = []
    if blocks:
        block = b"\0" * (row_bytes * rows_per_block)
        first = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
        repeat = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
        parts = [first] + [repeat] * (blocks - 1)
    parts.append(compressor.compress(b"\0" * (row_bytes * rest)) + compressor.flush(zlib.Z_SYNC_FLUSH))
    total = row_bytes * side                                      # Adler-32 of n zero bytes: a = 1, b = n mod 65521
    stream = b"".join(parts) + b"\x03\x00" + struct.pack(">I", ((total % 65521) << 16) | 1)
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", stream)
            + _png_chunk(b"IEND", b""))


def hostile_requests(film, max_body_bytes):
    """Requests a served model must refuse, each with the status it must get and a word its error must contain.

    Args:
        film: bytes. A good encoded film (truncated for one request, put beside a bomb in another).
        max_body_bytes: int. The server's `--max-body-mb` in bytes.

    Returns:
        list of (name, body bytes, status, word).
    """
    return [
        ("body over the limit", b" " * (max_body_bytes + 1), 413, "limit"),
        ("malformed JSON", b'{"instances": [{"b64": ', 400, "line 1 column"),
        ("empty batch", b'{"instances": []}', 400, "non-empty"),
        ("bomb inside a batch", instances_body([film, bomb_png(20000)]), 400, "instance 1: 20000x20000 pixels"),
        ("truncated film", instances_body([film[: len(film) // 2]]), 400, "truncated"),
        ("not an image", instances_body([b"GIF89a" + bytes(200)]), 400, "not a PNG or JPEG"),
        ("bad base64", b'{"instances": [{"b64": "%%%"}]}', 400, "base64"),
        ("other signature", b'{"signature_name": "predict_uint8", "instances": [{"b64": ""}]}', 400, "signature"),
    ]


def instances_body(files_bytes, signature=True):
    """TF Serving's request body for encoded images: `{"signature_name": ..., "instances": [{"b64": ...}]}` bytes."""
    body = {"instances": [{"b64": base64.b64encode(data).decode()} for data in files_bytes]}
    if signature:
        body = {"signature_name": "serving_default", **body}
    return json.dumps(body).encode()


class ServedModel:
    """A `tfflannel serve` child process; use as a context manager (it is stopped on exit, whatever happens).

    Args:
        export_dir: str or Path. The export to serve.
        name: str. Model name. Defaults to `"tfflannel"`.
        options: list of str. Further `serve` options (`--max-body-mb`, ...). Defaults to `()`.
        log: str or Path or None. File that receives the child's output; `None` keeps the last lines in memory
            only. Defaults to `None`.
        start_timeout: float. Seconds to wait for the server to listen. Defaults to `600`.
    """

    def __init__(self, export_dir, name="tfflannel", options=(), log=None, start_timeout=600.0):
        self.export_dir, self.name, self.options = Path(export_dir), name, list(options)
        self.log_path, self.start_timeout = log, float(start_timeout)
        self.port = free_loopback_port()
        self.process = None
        self.lines = []
        self._events = queue.Queue()

    @property
    def pid(self):
        """The server's process id."""
        return self.process.pid

    def _read_output(self):
        with open(self.log_path or os.devnull, "w") as log:
            for line in self.process.stdout:
                log.write(line)
                log.flush()
                self.lines = (self.lines + [line.rstrip()])[-200:]
                if LISTENING in line:
                    self._events.put("listening")
        self._events.put("exited")

    def __enter__(self):
        command = [sys.executable, "-m", "tfflannel", "serve", "--model", str(self.export_dir), "--name", self.name,
                   "--host", "127.0.0.1", "--port", str(self.port), *self.options]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env=dict(os.environ, PYTHONUNBUFFERED="1"))
        threading.Thread(target=self._read_output, daemon=True).start()
        try:
            try:
                event = self._events.get(timeout=self.start_timeout)
            except queue.Empty:
                event = f"not listening after {self.start_timeout:.0f} s"
            if event != "listening":
                raise RuntimeError(f"tfflannel serve: {event}:\n" + "\n".join(self.lines[-40:]))
            status, answer = self.request("GET", f"/v1/models/{self.name}")
            if status != 200 or answer.get("ready") is not True:
                raise RuntimeError(f"tfflannel serve listens but is not ready: {status} {answer}")
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info):
        self.stop()

    def stop(self, grace=60.0):
        """SIGTERM, and SIGKILL if the server has not exited after `grace` seconds; returns its exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()

    def request(self, method, path, body=None, headers=None, timeout=600.0):
        """One HTTP request on a new connection.

        Args:
            method: str. `GET` or `POST`.
            path: str. URL path, e.g. `/v1/models/tfflannel:predict`.
            body: bytes or iterable of bytes or None. An iterable is sent chunked. Defaults to `None`.
            headers: dict or None. Extra headers. Defaults to `None`.
            timeout: float. Seconds. Defaults to `600`.

        Returns:
            tuple: `(status, answer)`, the HTTP status and the decoded JSON body (`{"text": ...}` if not JSON).
        """
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            chunked = body is not None and not isinstance(body, (bytes, bytearray))
            connection.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
            response = connection.getresponse()
            text = response.read()
        finally:
            connection.close()
        try:
            return response.status, json.loads(text)
        except ValueError:
            return response.status, {"text": text.decode(errors="replace")}

    def predict(self, body, timeout=600.0):
        """`POST /v1/models/NAME:predict`; returns `(status, answer, seconds)`."""
        started = time.perf_counter()
        status, answer = self.request("POST", f"/v1/models/{self.name}:predict", body, timeout=timeout)
        return status, answer, time.perf_counter() - started
