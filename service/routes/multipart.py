"""multipart/form-data -> parts, on a complete body, in a worker thread.

Starlette's `request.form()` parses as the body arrives, on the event loop, and spools
files over 1 MB to temporary files. Uploads here are read whole first (under the body
limits of service.edge.read_limits), so the parse is a function of bytes: python-multipart's
push parser fed the body at once, run in the CPU pool by the caller, parts kept in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

from service.errors import BadRequest, InvalidInput


@dataclass
class Part:
    name: str
    data: bytes
    filename: str | None = None
    content_type: str | None = None


@dataclass
class _Collector:
    max_parts: int
    parts: list[Part] = field(default_factory=list)
    _headers: dict[bytes, bytes] = field(default_factory=dict)
    _field: bytearray = field(default_factory=bytearray)
    _value: bytearray = field(default_factory=bytearray)
    _data: list[memoryview] = field(default_factory=list)

    def on_part_begin(self) -> None:
        if len(self.parts) >= self.max_parts:
            raise InvalidInput(f"the form has more than {self.max_parts} parts")
        self._headers.clear()
        self._data.clear()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[bytes(self._field).lower()] = bytes(self._value)
        self._field.clear()
        self._value.clear()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self._data.append(memoryview(data)[start:end])  # copied once, by the join

    def on_part_end(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name")
        if name is None:
            raise BadRequest("malformed multipart body: a part has no name")
        filename = options.get(b"filename")
        content_type = self._headers.get(b"content-type")
        self.parts.append(Part(
            name=_text(name, "a part's name"), data=b"".join(self._data),
            filename=None if filename is None else _text(filename, "a file name"),
            content_type=None if content_type is None else content_type.decode("latin-1"),
        ))


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(f"malformed multipart body: {what} is not UTF-8") from None


def parse_multipart(content_type: str, body: bytes, max_parts: int) -> list[Part]:
    """Every part of a multipart/form-data body, in order, or BadRequest / InvalidInput."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise BadRequest("malformed multipart body: the content type has no boundary")
    collector = _Collector(max_parts)
    callbacks = {name: getattr(collector, name) for name in (
        "on_part_begin", "on_header_field", "on_header_value", "on_header_end",
        "on_part_data", "on_part_end")}
    try:  # the constructor refuses a boundary over 256 bytes (RFC 2046 allows 70)
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        parser.write(body)
        parser.finalize()
    except FormParserError as exc:  # MultipartParseError is one
        raise BadRequest(f"malformed multipart body: {exc}") from None
    if parser.state != MultipartState.END:
        raise BadRequest("malformed multipart body: it ends before its closing boundary")
    return collector.parts


def text_field(part: Part) -> str:
    """A form field's value as text (fields are UTF-8)."""
    try:
        return part.data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"form field {part.name!r} is not UTF-8 text") from None
