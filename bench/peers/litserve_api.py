"""The LitServe side of `bench.peers.litserve_clap` (imported once its command line is
read, so `--help` needs no litserve): the CLAP classify graph as a `LitAPI`, and the form
adaptation its worker queue needs (see that module)."""


from pathlib import Path
from typing import Any

import litserve as ls
import litserve.server as ls_server
from fastapi import Request
from starlette.datastructures import FormData, UploadFile

from bench.peers.clap_core import ClapCore, Prepared, labels_from_form

_original_prepare = ls_server.BaseRequestHandler._prepare_request


async def _plain_form(self: Any, request: Any, request_type: Any) -> Any:
    payload = await _original_prepare(self, request, request_type)
    if isinstance(payload, FormData):
        upload = payload.get("file")
        data = await upload.read() if isinstance(upload, UploadFile) else b""
        return {"file": data, "labels": [str(v) for v in payload.getlist("labels")]}
    return payload


ls_server.BaseRequestHandler._prepare_request = _plain_form  # type: ignore[method-assign]


class ClapLitAPI(ls.LitAPI):
    def __init__(self, pack_dir: Path, threads: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pack_dir, self.threads = pack_dir, threads

    def setup(self, device: str) -> None:
        self.core = ClapCore(self.pack_dir, self.threads)

    def decode_request(self, request: Request) -> Prepared:
        form: dict[str, Any] = request  # type: ignore[assignment]  # see _plain_form
        return self.core.prepare(form["file"], labels_from_form(form["labels"]))

    def batch(self, inputs: list[Prepared]) -> list[Prepared]:
        return inputs

    def predict(self, x: list[Prepared]) -> list[dict[str, Any]]:
        return self.core.classify_batch(x)

    def unbatch(self, output: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return output

    def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
        return output
