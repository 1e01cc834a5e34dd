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


from bench.peers.clap_core import peer_arguments


def main(argv: list[str] | None = None) -> None:
    args = peer_arguments(__doc__).parse_args(argv)
    import litserve as ls

    from bench.peers.litserve_api import ClapLitAPI

    api = ClapLitAPI(args.pack, args.threads, max_batch_size=args.max_batch,
                     batch_timeout=args.wait_ms / 1000.0, api_path="/classify")
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=args.workers,
                          timeout=args.timeout_s)
    server.run(host="127.0.0.1", port=args.port, num_api_servers=1, log_level="warning",
               generate_client_file=False, api_server_worker_type="thread")


if __name__ == "__main__":
    main()
