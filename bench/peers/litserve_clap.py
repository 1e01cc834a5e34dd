"""Peer: the CLAP classify graph served by LitServe with its own dynamic batching.

`python -m bench.peers.litserve_clap --pack models/clap --port 8101 --max-batch 8 --wait-ms 5`

LitServe's loop runs decode_request -> batch -> predict -> unbatch -> encode_response in
its inference worker; `max_batch_size` and `batch_timeout` are set to audioserve's
`max_batch_size` and `max_wait_ms`, the request timeout to its deadline, `--workers`
worker processes (audioserve's batch workers) with the same ORT threads. POST /classify
takes the same multipart body; GET /health is ready.

One adaptation: LitServe hands the parsed multipart form (starlette FormData with an
UploadFile) to its worker through a multiprocessing queue, which cannot pickle it
("Pickling an AuthenticationString object is disallowed"), so the form is turned into plain
bytes + strings in the API process before it is queued (`_plain_form`).
"""


from pathlib import Path
from typing import Any

import litserve as ls
import litserve.server as ls_server
from fastapi import Request
from starlette.datastructures import FormData, UploadFile

from bench.peers.clap_core import ClapCore, Prepared, labels_from_form, peer_arguments

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


def main() -> None:
    p = peer_arguments(__doc__)
    args = p.parse_args()
    api = ClapLitAPI(args.pack, args.threads, max_batch_size=args.max_batch,
                     batch_timeout=args.wait_ms / 1000.0, api_path="/classify")
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=args.workers,
                          timeout=args.timeout_s)
    server.run(host="127.0.0.1", port=args.port, num_api_servers=1, log_level="warning",
               generate_client_file=False, api_server_worker_type="thread")


if __name__ == "__main__":
    main()
