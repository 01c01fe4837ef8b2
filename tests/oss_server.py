"""A loopback OSS server that oss2 really talks to, with planned faults and a request log.

It speaks enough of the OSS object API for the storage tier: GET object (with Range), HEAD
object, PUT object, GET bucket (list objects), and OSS's XML errors. Signatures are not
checked; the request log keeps every header (Authorization too) for tests to read. oss2 addresses an IP endpoint path-style (`/bucket/key`, the key URL-quoted with
'/' as %2F); a virtual-host style Host (`bucket.host`) is understood too.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import socket
import struct
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit
from xml.sax.saxutils import escape

import pytest

ERRORS = {
    400: ("InvalidArgument", "Invalid argument."),
    403: ("AccessDenied", "You have no right to access this object."),
    404: ("NoSuchKey", "The specified key does not exist."),
    412: ("PreconditionFailed", "At least one of the pre-conditions you specified did not hold."),
    416: ("InvalidRange", "The requested range cannot be satisfied."),
    500: ("InternalError", "We encountered an internal error. Please try again."),
    503: ("ServiceUnavailable", "Please reduce your request rate."),
}


@dataclass
class Fault:
    """A planned misbehaviour for the next `remaining` matching requests."""

    kind: str  # "status", "reset" or "delay"
    remaining: int
    key: str | None = None
    method: str | None = None
    status: int = 503
    seconds: float = 0.0

    def matches(self, method: str, key: str) -> bool:
        return (
            self.remaining > 0
            and (self.key is None or self.key == key)
            and (self.method is None or self.method == method)
        )


@dataclass
class StoredObject:
    data: bytes
    etag: str
    crc64: int | None
    mtime: float


class OssServer:
    """The server and its controls; `endpoint` is what oss2.Bucket takes."""

    def __init__(self):
        self.objects: dict[tuple[str, str], StoredObject] = {}
        self.faults: list[Fault] = []
        self._log: list[tuple[str, str, dict[str, str]]] = []
        self.listings: list[dict[str, str]] = []  # each list-objects page served: its query
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.oss = self
        self.httpd.handle_error = lambda request, address: None  # clients that hang up are fine
        self.port = self.httpd.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def url(self, bucket: str, key: str) -> str:
        """A plain http URL of an object (the server ignores signatures)."""
        return f"{self.endpoint}/{bucket}/{quote(key)}"

    def put(self, bucket: str, key: str, data: bytes) -> None:
        self.objects[(bucket, key)] = _stored(data)

    def fail_next(
        self, n: int, status: int = 503, key: str | None = None, method: str | None = None
    ):
        self._plan(Fault("status", n, key, method, status=status))

    def reset_next(self, n: int, key: str | None = None, method: str | None = None):
        self._plan(Fault("reset", n, key, method))

    def delay_next(self, n: int, seconds: float, key: str | None = None, method: str | None = None):
        self._plan(Fault("delay", n, key, method, seconds=seconds))

    @property
    def requests(self) -> list[tuple[str, str, dict[str, str]]]:
        """(method, path, headers) of every request so far: the path as `/bucket/key`
        (unquoted), header names title-cased (`Range`)."""
        with self._lock:
            return list(self._log)

    def requests_for(self, key: str, method: str | None = None) -> list[tuple[str, str, dict]]:
        return [
            r for r in self.requests if r[1].split("/", 2)[-1] == key and method in (None, r[0])
        ]

    def close(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def _plan(self, fault: Fault) -> None:
        with self._lock:
            self.faults.append(fault)

    def _record(self, method: str, path: str, headers: dict[str, str], key: str) -> Fault | None:
        with self._lock:
            self._log.append((method, path, headers))
            for fault in self.faults:
                if fault.matches(method, key):
                    fault.remaining -= 1
                    return fault
        return None


def _stored(data: bytes) -> StoredObject:
    try:
        from oss2.utils import Crc64

        crc = Crc64()
        crc.update(data)
        crc64 = crc.crc
    except ImportError:
        crc64 = None
    etag = '"' + hashlib.md5(data).hexdigest().upper() + '"'
    return StoredObject(data, etag, crc64, time.time())


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "AliyunOSS"

    def log_message(self, format, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        self._serve("GET")

    def do_HEAD(self):
        self._serve("HEAD")

    def do_PUT(self):
        self._serve("PUT")

    @property
    def oss(self) -> OssServer:
        return self.server.oss

    def _serve(self, method: str) -> None:
        parts = urlsplit(self.path)
        bucket, key = self._address(parts.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {name.title(): value for name, value in self.headers.items()}
        fault = self.oss._record(method, f"/{bucket}/{key}", headers, key)
        if fault is not None:
            if fault.kind == "reset":
                return self._reset()
            if fault.kind == "delay":
                self.oss.stopping.wait(fault.seconds)
            if fault.kind == "status":
                return self._error(method, fault.status, bucket, key)
        if method == "PUT":
            return self._put(bucket, key, body)
        if not key:
            return self._list(bucket, parse_qs(parts.query))
        stored = self.oss.objects.get((bucket, key))
        if stored is None:
            return self._error(method, 404, bucket, key)
        if_match = self.headers.get("If-Match")
        if if_match and if_match.strip().strip('"') != stored.etag.strip('"'):
            return self._error(method, 412, bucket, key)
        self._object(method, stored, bucket, key)

    def _address(self, path: str) -> tuple[str, str]:
        host = (self.headers.get("Host") or "").split(":")[0]
        first = host.split(".")[0]
        if host and not host.replace(".", "").isdigit() and host != "localhost" and "." in host:
            return first, unquote(path.lstrip("/"))
        bucket, _, key = path.lstrip("/").partition("/")
        return unquote(bucket), unquote(key)

    def _object(self, method: str, stored: StoredObject, bucket: str, key: str) -> None:
        data, status, extra = stored.data, 200, {}
        wanted = self.headers.get("Range")
        if wanted:
            span = _parse_range(wanted, len(data))
            if span == "invalid":
                return self._error(method, 416, bucket, key)
            if span is not None:
                start, end = span
                data, status = data[start : end + 1], 206
                extra["Content-Range"] = f"bytes {start}-{end}/{len(stored.data)}"
        if status == 200 and stored.crc64 is not None:
            extra["x-oss-hash-crc64ecma"] = str(stored.crc64)
        self.send_response(status)
        self._common_headers(len(data))
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("ETag", stored.etag)
        self.send_header("Last-Modified", email.utils.formatdate(stored.mtime, usegmt=True))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("x-oss-object-type", "Normal")
        self.send_header("x-oss-storage-class", "Standard")
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        if method == "GET":
            self.wfile.write(data)

    def _put(self, bucket: str, key: str, body: bytes) -> None:
        stored = _stored(body)
        self.oss.objects[(bucket, key)] = stored
        self.send_response(200)
        self._common_headers(0)
        self.send_header("ETag", stored.etag)
        if stored.crc64 is not None:
            self.send_header("x-oss-hash-crc64ecma", str(stored.crc64))
        self.end_headers()

    def _list(self, bucket: str, query: dict[str, list[str]]) -> None:
        prefix = query.get("prefix", [""])[0]
        marker = query.get("marker", [""])[0]
        max_keys = int(query.get("max-keys", ["100"])[0])
        url = query.get("encoding-type", [""])[0] == "url"
        keys = sorted(k for (b, k) in self.oss.objects if b == bucket and k.startswith(prefix))
        keys = [k for k in keys if k > marker]
        page, truncated = keys[:max_keys], len(keys) > max_keys
        with self.oss._lock:
            self.oss.listings.append(
                {"bucket": bucket, "prefix": prefix, "marker": marker, "keys": len(page)}
            )

        def enc(text: str) -> str:
            return escape(quote(text) if url else text)

        items = []
        for k in page:
            o = self.oss.objects[(bucket, k)]
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(o.mtime))
            items.append(
                f"<Contents><Key>{enc(k)}</Key><LastModified>{stamp}</LastModified>"
                f"<ETag>{escape(o.etag)}</ETag><Type>Normal</Type><Size>{len(o.data)}</Size>"
                "<StorageClass>Standard</StorageClass>"
                "<Owner><ID>0</ID><DisplayName>0</DisplayName></Owner></Contents>"
            )
        xml = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult>'
            f"<Name>{escape(bucket)}</Name><Prefix>{enc(prefix)}</Prefix>"
            f"<Marker>{enc(marker)}</Marker><MaxKeys>{max_keys}</MaxKeys><Delimiter></Delimiter>"
            + ("<EncodingType>url</EncodingType>" if url else "")
            + f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>"
            + (f"<NextMarker>{enc(page[-1])}</NextMarker>" if truncated and page else "")
            + "".join(items)
            + "</ListBucketResult>"
        ).encode()
        self.send_response(200)
        self._common_headers(len(xml))
        self.send_header("Content-Type", "application/xml")
        self.end_headers()
        self.wfile.write(xml)

    def _error(self, method: str, status: int, bucket: str, key: str) -> None:
        """OSS's XML error; a HEAD carries it base64-encoded in x-oss-err instead of a body."""
        code, message = ERRORS.get(status, ("UnknownError", "Unknown error."))
        extra = ""
        if status == 403:
            # Real OSS echoes the caller's access key id in signature errors.
            key_id = access_key_id(self.headers.get("Authorization") or "")
            extra = f"<OSSAccessKeyId>{escape(key_id)}</OSSAccessKeyId>"
            message = f"{message} AccessKeyId {key_id}"
        request_id = uuid.uuid4().hex[:24].upper()
        xml = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Error>'
            f"<Code>{code}</Code><Message>{escape(message)}</Message>"
            f"<RequestId>{request_id}</RequestId><HostId>127.0.0.1</HostId>"
            f"<Key>{escape(key)}</Key>{extra}</Error>"
        ).encode()
        self.send_response(status)
        self.send_header("x-oss-request-id", request_id)
        if method == "HEAD":
            self.send_header("x-oss-err", base64.b64encode(xml).decode())
            self._common_headers(0)
            self.end_headers()
            return
        self._common_headers(len(xml))
        self.send_header("Content-Type", "application/xml")
        self.end_headers()
        self.wfile.write(xml)

    def _common_headers(self, length: int) -> None:
        self.send_header("Content-Length", str(length))
        self.send_header("Date", email.utils.formatdate(usegmt=True))

    def _reset(self) -> None:
        """Drops the connection with a TCP RST, as a crashed proxy would."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()


def access_key_id(authorization: str) -> str:
    """The caller's key id in a V1 (`OSS id:signature`) or V4 (`OSS4-HMAC-SHA256
    Credential=id/date/region/oss/aliyun_v4_request, ...`) Authorization header."""
    scheme, _, rest = authorization.partition(" ")
    if scheme == "OSS4-HMAC-SHA256":
        return rest.partition("Credential=")[2].partition("/")[0]
    return rest.partition(":")[0]


def _parse_range(header: str, size: int) -> tuple[int, int] | str | None:
    """(start, end) of `bytes=a-b`; "invalid" when unsatisfiable; None to send it all."""
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        return None
    first, _, last = spec.strip().partition("-")
    try:
        if first == "":
            start, end = max(0, size - int(last)), size - 1
        else:
            start = int(first)
            end = min(int(last), size - 1) if last else size - 1
    except ValueError:
        return None
    if start >= size or start > end:
        return "invalid"
    return start, end


@pytest.fixture
def oss_server():
    """A running loopback OSS server; closed after the test."""
    server = OssServer()
    try:
        yield server
    finally:
        server.close()
