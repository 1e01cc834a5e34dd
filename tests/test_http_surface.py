"""The HTTP surface a hostile client sees (issue 13, item 11): the access log cannot be
forged, the logged client address cannot be spoofed unless a proxy is trusted, the API
docs follow `docs_public` when a key is set, and auth comes before the body is read."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.edge.middleware import LOGGED_CHARS
from tests.conftest import wait_until
from tests.tts_server import RunningServer, serve_app


@pytest.fixture
def empty_models(tmp_path: Path) -> Path:
    return tmp_path


def raw_get(server: RunningServer, target: str, headers: str = "") -> bytes:
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n"
                     .encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def access_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The access log's lines, once there is one: the server thread logs after it answered,
    so the client may read the answer first (waited for, not slept on)."""

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "audioserve.access"]

    wait_until(lines, "an access log line")
    return lines()


@pytest.fixture
def server(empty_models: Path) -> Iterator[RunningServer]:
    with serve_app(models_dir=empty_models, models="none") as s:
        yield s


@pytest.mark.parametrize("target", ["/no%0A127.0.0.1%20GET%20/forged", "/a%0D%0Ab",
                                    "/x%1B[31mred", "/%E2%80%AEevil"])
def test_the_access_log_cannot_be_forged(server: RunningServer, target: str,
                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="audioserve.access")
    assert raw_get(server, target).startswith(b"HTTP/1.1 404")
    lines = access_lines(caplog)
    assert lines, "no access log line"
    line = lines[-1]
    assert "\n" not in line and "\r" not in line and "\x1b" not in line, line
    assert all(c.isprintable() for c in line), line
    assert target.split("%")[0] in line


def test_an_access_line_holds_a_bounded_part_of_what_the_client_sent(
        server: RunningServer, caplog: pytest.LogCaptureFixture) -> None:
    """A 60 KB path (and as long a method) had been logged whole on every request: a
    client wrote the log as fast as it could send."""
    caplog.set_level(logging.INFO, logger="audioserve.access")
    assert raw_get(server, "/" + "%0a" * 20_000).startswith(b"HTTP/1.1 404")
    line = access_lines(caplog)[-1]
    assert len(line) < 2 * LOGGED_CHARS + 200 and "...(+" in line, line[:300]


def test_a_page_of_another_origin_may_only_read(server: RunningServer) -> None:
    """Browsers POST a form across origins without asking first: such a request (any
    method but GET/HEAD/OPTIONS) is a 403 unless its Origin is this server or allowed, as
    for the WebSockets. This server has no models: a request let through gets their 503."""
    def post(origin: str | None) -> httpx.Response:
        headers = {} if origin is None else {"origin": origin}
        return httpx.post(server.url + "/classify", files={"file": ("a.wav", b"RIFF")},
                          data={"labels": "dog"}, headers=headers, timeout=30)

    refused = post("https://elsewhere.example")
    assert refused.status_code == 403, refused.text
    assert "AUDIOSERVE_LIVE_ALLOWED_ORIGINS" in refused.json()["error"]["message"]
    assert refused.headers["x-request-id"]
    for origin in (None, f"http://{server.host}:{server.port}"):
        assert post(origin).status_code != 403
    read = httpx.get(server.url + "/healthz", headers={"origin": "https://elsewhere.example"})
    assert read.status_code == 200


@pytest.mark.parametrize("path", ["/v1/audio/analysis/stream", "/v1/audio/speech/stream"])
def test_plain_http_to_a_websocket_route_says_how_to_connect(server: RunningServer,
                                                             path: str) -> None:
    r = httpx.get(server.url + path, timeout=30)
    assert r.status_code == 426, r.text
    assert r.headers["upgrade"] == "websocket"
    assert "WebSocket route" in r.json()["error"]["message"]


def _raw(server: RunningServer, data: bytes) -> bytes:
    with socket.create_connection((server.host, server.port), timeout=30) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_the_edges_own_answers_carry_a_request_id_and_an_access_line(
        empty_models: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A malformed head (400), one over the caps (431) and one that never comes (408) are
    answered before any app runs; each still has its id, in the body and the header, and
    the access line that finds it."""
    caplog.set_level(logging.INFO, logger="audioserve.access")
    with serve_app(models_dir=empty_models, models="none", header_timeout_s=1.0,
                   max_header_bytes=4096) as server:
        answers = {
            400: _raw(server, b"NOT A REQUEST LINE\r\n\r\n"),
            431: _raw(server, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8000
                      + b"\r\n\r\n"),
            408: _raw(server, b"GET / HTTP/1.1\r\n"),  # the rest never comes
        }
        for status, answer in answers.items():
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 %d" % status), answer[:200]
            request_id = json.loads(body)["error"]["request_id"]
            assert f"x-request-id: {request_id}".encode() in head.lower()
            wait_until(lambda rid=request_id: any(
                rid in r.getMessage() for r in caplog.records if r.name == "audioserve.access"),
                f"the access line of the {status}")


def test_forwarded_for_is_not_trusted_by_default(server: RunningServer,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="audioserve.access")
    raw_get(server, "/healthz", "X-Forwarded-For: 6.6.6.6\r\n")
    line = access_lines(caplog)[-1]
    assert "6.6.6.6" not in line and line.startswith("127.0.0.1:")


def test_forwarded_for_is_taken_from_a_trusted_proxy(empty_models: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="audioserve.access")
    with serve_app(models_dir=empty_models, models="none",
                   forwarded_allow_ips="127.0.0.1") as server:
        raw_get(server, "/healthz", "X-Forwarded-For: 203.0.113.7\r\n")
        assert access_lines(caplog)[-1].startswith("203.0.113.7")


@pytest.mark.parametrize(("docs_public", "expected"), [(False, 401), (True, 200)])
def test_docs_follow_the_setting_when_a_key_is_set(empty_models: Path, docs_public: bool,
                                                   expected: int) -> None:
    with serve_app(models_dir=empty_models, models="none", api_key="k",
                   docs_public=docs_public) as server:
        for path in ("/docs", "/openapi.json"):
            assert httpx.get(server.url + path).status_code == expected, path
        assert httpx.get(server.url + "/openapi.json",
                         headers={"Authorization": "Bearer k"}).status_code == 200
        assert httpx.get(server.url + "/healthz").status_code == 200


def test_a_request_id_with_a_newline_is_replaced(server: RunningServer) -> None:
    answer = raw_get(server, "/healthz", "X-Request-ID: abc\\n\r\n")
    assert b"x-request-id: abc" not in answer.lower()


def test_auth_comes_before_the_body_is_read(empty_models: Path) -> None:
    """The 401 arrives although the client has sent only the headers of a 20 MB body:
    nothing waited for, read or parsed it first."""
    with serve_app(models_dir=empty_models, models="none", api_key="k") as server, \
            socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(b"POST /tts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 20000000\r\n\r\n{\"text\": ")
        sock.shutdown(socket.SHUT_WR)  # the rest never comes
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]


def test_a_405_lists_every_method_of_its_path(server: RunningServer) -> None:
    """For every path of the OpenAPI, a method it does not take: a 405 whose `Allow` is
    what the OpenAPI lists there (+ HEAD beside GET), not only the first route's."""
    paths = httpx.get(server.url + "/openapi.json").json()["paths"]
    assert {"get", "post"} <= paths["/v1/voices"].keys()  # two routes share this path
    for path, operations in paths.items():
        listed = {method.upper() for method in operations}
        listed |= {"HEAD"} if "GET" in listed else set()
        other = next(m for m in ("PATCH", "PUT", "DELETE", "POST", "GET") if m not in listed)
        url = server.url + path.replace("{", "").replace("}", "")  # {name} -> name
        r = httpx.request(other, url)
        assert r.status_code == 405, (other, path, r.status_code)
        assert r.headers["allow"] == ", ".join(sorted(listed)), (other, path)
        assert r.json()["error"]["message"].endswith(f"allowed: {r.headers['allow']}")


def test_metrics_name_what_answered_without_an_api_route(server: RunningServer) -> None:
    """The schema, the docs' files and the page's files are counted under their own
    routes; only what nothing served is `unmatched`."""
    for path in ("/openapi.json", "/docs/assets/swagger-ui.css", "/ui/app.css", "/nope"):
        httpx.get(server.url + path)
    routes = {(line.split('route="')[1].split('"')[0], line.split('status="')[1].split('"')[0])
              for line in httpx.get(server.url + "/metrics").text.splitlines()
              if line.startswith("audioserve_requests_total{")}
    assert {("/openapi.json", "200"), ("/docs/assets/*", "200"), ("/ui/*", "200"),
            ("unmatched", "404")} <= routes
    assert ("unmatched", "200") not in routes


def test_the_schema_has_the_operations_routes_open_with_a_key(empty_models: Path) -> None:
    with serve_app(models_dir=empty_models, models="none", api_key="k",
                   docs_public=True) as s:
        spec = httpx.get(s.url + "/openapi.json").json()
        ready = httpx.get(s.url + "/readyz")
    assert spec["security"] == [{"bearerAuth": []}]
    for path in ("/healthz", "/readyz", "/metrics"):
        operation = spec["paths"][path]["get"]
        assert operation["security"] == [] and "401" not in operation["responses"], path
    assert "401" in spec["paths"]["/v1/models"]["get"]["responses"]
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


@pytest.mark.parametrize(("path", "target", "shape"), [
    ("/readyz", "service.pipelines.loader.ModelLoader.status", {"code", "message",
                                                               "request_id"}),
    ("/v1/models/clap", "service.routes.openai_models._kind_named", {"message", "type",
                                                                    "param", "code"}),
])
def test_a_defect_is_one_500_with_its_id_on_a_connection_that_stays_usable(
        server: RunningServer, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, path: str, target: str, shape: set[str]) -> None:
    """Any exception a route lets out is answered where the request id is: a 500 in the
    route's error shape carrying X-Request-ID, one traceback in the log, and the kept-alive
    connection serves the next request (Starlette's own 500 went out without the id, was
    raised again to uvicorn, which logged it twice and dropped the connection)."""

    def boom(*args: object) -> None:
        raise RuntimeError("a defect")

    monkeypatch.setattr(target, boom)
    caplog.set_level(logging.INFO)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        failed = client.get(path, headers={"X-Request-ID": "defect-1"})
        assert failed.status_code == 500, failed.text
        assert failed.headers["x-request-id"] == "defect-1"
        assert set(failed.json()["error"]) == shape
        assert client.get("/healthz").status_code == 200  # the same pooled connection
    access_lines(caplog)  # the server thread has finished that request's logging
    tracebacks = [r for r in caplog.records if r.exc_info is not None]
    assert len(tracebacks) == 1 and "defect-1" in tracebacks[0].getMessage()
    assert not any("Exception in ASGI application" in r.getMessage() for r in caplog.records)
