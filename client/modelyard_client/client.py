"""The HTTP client: one ``request`` with retries, a streaming multipart upload, waiters.

Retries: a connection error, a 5xx or a 409 ``idempotency_key_in_progress`` is retried with
exponential backoff. Only requests that are safe to repeat are retried: reads, and creates that
carry an ``Idempotency-Key`` (the server then returns the first answer instead of creating twice).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, Iterable, List, Optional, Tuple

import requests

RETRY_STATUSES = {500, 502, 503, 504}


class ApiError(Exception):
    """The server's error answer (``{"error": {"code", "message"}}``) or a transport failure."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details

    def __str__(self) -> str:
        where = f"HTTP {self.status}, " if self.status else ""
        return f"{self.message} ({where}{self.code})"


class MultipartBody:
    """A multipart/form-data body read in chunks from disk, with an exact length, so the upload
    is streamed (never held in memory) and sent with Content-Length (no chunked encoding)."""

    def __init__(self, fields: List[Tuple[str, str]], file_field: str, path: Path,
                 progress: Optional[Callable[[int], None]] = None) -> None:
        self.boundary = "modelyard-" + uuid.uuid4().hex
        head = b"".join(self._part(name, value.encode()) for name, value in fields)
        head += (f"--{self.boundary}\r\nContent-Disposition: form-data; name=\"{file_field}\"; "
                 f"filename=\"{path.name}\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
        self._parts: List[Any] = [head, path, f"\r\n--{self.boundary}--\r\n".encode()]
        self._length = len(head) + path.stat().st_size + len(self._parts[2])
        self._progress = progress
        self._current: Optional[BinaryIO] = None
        self._index = 0
        self._pending = b""

    def _part(self, name: str, value: bytes) -> bytes:
        return (f"--{self.boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n").encode() + value + b"\r\n"

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def __len__(self) -> int:
        return self._length

    def read(self, size: int = -1) -> bytes:
        size = 1024 * 1024 if size is None or size < 0 else size
        while self._index < len(self._parts):
            part = self._parts[self._index]
            if isinstance(part, bytes):
                self._index += 1
                return self._count(part)
            if self._current is None:
                self._current = open(part, "rb")
            chunk = self._current.read(size)
            if chunk:
                return self._count(chunk)
            self._current.close()
            self._current = None
            self._index += 1
        return b""

    def _count(self, data: bytes) -> bytes:
        if self._progress:
            self._progress(len(data))
        return data

    def close(self) -> None:
        if self._current is not None:
            self._current.close()


class Client:
    def __init__(self, url: str, token: str, *, retries: int = 5, backoff: float = 1.0, timeout: float = 900) -> None:
        self.url = url.rstrip("/")
        self.retries, self.backoff, self.timeout = retries, backoff, timeout
        self.session = requests.Session()
        self.session.headers["User-Agent"] = "modelyard-client/1.0"
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self.on_retry: Callable[[int, str, float], None] = lambda attempt, why, delay: None

    # --- transport ---------------------------------------------------------------------------
    def request(self, method: str, path: str, *, json_body: Any = None, params: Optional[dict] = None,
                idempotency_key: Optional[str] = None, body_factory: Optional[Callable[[], MultipartBody]] = None,
                stream: bool = False, ok: Iterable[int] = ()) -> requests.Response:
        headers: Dict[str, str] = {}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        repeatable = method in ("GET", "HEAD") or bool(idempotency_key)
        attempt = 0
        while True:
            attempt += 1
            body = body_factory() if body_factory else None
            try:
                kwargs: Dict[str, Any] = {"params": params, "timeout": self.timeout, "stream": stream,
                                          "headers": dict(headers)}
                if body is not None:
                    kwargs["data"] = body
                    kwargs["headers"]["Content-Type"] = body.content_type
                    kwargs["headers"]["Content-Length"] = str(len(body))
                elif json_body is not None:
                    kwargs["json"] = json_body
                response = self.session.request(method, self.url + path, **kwargs)
            except (requests.ConnectionError, requests.Timeout) as exc:
                if not repeatable or attempt > self.retries:
                    raise ApiError(0, "connection_error", f"Cannot reach {self.url}: {exc}") from None
                self._wait(attempt, f"connection error ({type(exc).__name__})")
                continue
            finally:
                if body is not None:
                    body.close()
            if response.status_code < 400 or response.status_code in ok:
                return response
            error = self._error(response)
            retry = response.status_code in RETRY_STATUSES or error.code == "idempotency_key_in_progress"
            if retry and repeatable and attempt <= self.retries:
                self._wait(attempt, f"{error.code} (HTTP {response.status_code})")
                continue
            raise error

    def _wait(self, attempt: int, why: str) -> None:
        delay = min(self.backoff * 2 ** (attempt - 1), 30.0)
        self.on_retry(attempt, why, delay)
        time.sleep(delay)

    @staticmethod
    def _error(response: requests.Response) -> ApiError:
        try:
            error = response.json()["error"]
            return ApiError(response.status_code, error.get("code", "error"), error.get("message", ""),
                            error.get("details"))
        except (ValueError, KeyError, TypeError):
            return ApiError(response.status_code, "http_error", response.text[:300] or response.reason)

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None}).json()

    def post(self, path: str, body: Any = None, *, idempotency_key: Optional[str] = None) -> Any:
        return self.request("POST", path, json_body=body if body is not None else {},
                            idempotency_key=idempotency_key).json()

    def list_all(self, path: str, **params: Any) -> List[dict]:
        page = self.get(path, **params)
        return page["results"] if isinstance(page, dict) and "results" in page else page

    # --- registry ------------------------------------------------------------------------------
    def ensure_model(self, name: str, task: str, key: str) -> dict:
        try:
            return self.get(f"/api/v1/models/{name}/")
        except ApiError as exc:
            if exc.status != 404:
                raise
        return self.post("/api/v1/models/", {"name": name, "task": task}, idempotency_key=key + ":model")

    def push(self, model: str, artifact: Path, *, tags: Iterable[str] = (), metadata: Optional[dict] = None,
             parent: Optional[int] = None, description: str = "", key: Optional[str] = None,
             progress: Optional[Callable[[int], None]] = None) -> dict:
        """Upload one version. One Idempotency-Key for the logical push, reused by every retry."""
        key = key or str(uuid.uuid4())
        fields = [(name, value) for name, value in [
            ("description", description), ("metadata", json.dumps(metadata) if metadata else ""),
            ("tags", ",".join(tags)), ("parent", str(parent) if parent else "")] if value]
        return self.request("POST", f"/api/v1/models/{model}/versions/", idempotency_key=key,
                            body_factory=lambda: MultipartBody(fields, "artifact", artifact, progress)).json()

    def upload_dataset(self, model: str, role: str, path: Path, *, version: Optional[int], key: str) -> dict:
        fields = [("role", role), ("name", path.name)] + ([("version", str(version))] if version else [])
        return self.request("POST", f"/api/v1/models/{model}/datasets/", idempotency_key=f"{key}:dataset:{role}",
                            body_factory=lambda: MultipartBody(fields, "file", path)).json()

    def resolve_version(self, model: str, ref: str) -> int:
        if str(ref).isdigit():
            return int(ref)
        return int(self.get(f"/api/v1/models/{model}/aliases/{ref}")["version"])

    def pull(self, model: str, version: int, dest: Path, progress: Optional[Callable[[int], None]] = None) -> dict:
        """Download, hashing while writing; a digest that differs from the server's removes the file."""
        response = self.request("GET", f"/api/v1/models/{model}/versions/{version}/artifact", stream=True)
        expected = (response.headers.get("X-Checksum-Sha256") or response.headers.get("ETag", "")).strip('"')
        digest = hashlib.sha256()
        tmp = dest.with_name(dest.name + ".part")
        with open(tmp, "wb") as fh:
            for chunk in response.iter_content(1024 * 1024):
                digest.update(chunk)
                fh.write(chunk)
                if progress:
                    progress(len(chunk))
        if digest.hexdigest() != expected:
            tmp.unlink()
            raise ApiError(0, "digest_mismatch", f"Downloaded bytes have sha256 {digest.hexdigest()}, the server "
                                                 f"says {expected}: file discarded.")
        os.replace(tmp, dest)
        return {"model": model, "version": version, "path": str(dest), "sha256": expected,
                "size_bytes": dest.stat().st_size}

    # --- waiting -------------------------------------------------------------------------------
    def wait(self, path: str, done: Callable[[dict], bool], *, timeout: float, interval: float = 2.0,
             on_poll: Callable[[dict], None] = lambda obj: None) -> Optional[dict]:
        """Poll until ``done(obj)``; None when the timeout passed first."""
        deadline = time.monotonic() + timeout
        while True:
            obj = self.get(path)
            on_poll(obj)
            if done(obj):
                return obj
            if time.monotonic() >= deadline:
                return None
            time.sleep(min(interval, max(0.0, deadline - time.monotonic())) or interval)
