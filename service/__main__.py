"""`python -m service`: serve the API with uvicorn on the configured host and port.

Settings come from `AUDIOSERVE_*` variables (or `.env`), the common ones from flags too.
Exit status: 0 after a stop by SIGINT (Ctrl-C) or SIGTERM, 1 when the server cannot serve
what it was asked to (no pack, a broken pack, a provider that is not there: one line naming
the cause), 2 for a bad command line or setting.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys

from service.cli import add_setting_flags, fail, flag_values, load_settings

PROG = "python -m service"
EXIT_CANNOT_SERVE = 1
log = logging.getLogger("audioserve")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                epilog="Exit status: 0 stopped (SIGINT, SIGTERM), 1 cannot "
                                       "serve what it was asked to, 2 bad arguments or "
                                       "settings.")
    add_setting_flags(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = load_settings(flag_values(args), PROG)  # exits 2 on a bad setting

    from service.app import create_app
    from service.edge.open_files import OpenFileShortage, fit_open_file_limit
    from service.edge.server import ServiceServer, uvicorn_config
    from service.errors import PackError
    from service.logs import configure_logging
    from service.pipelines.loader import packs_to_load
    from service.runtime.sessions import resolve_provider

    configure_logging(settings.log_level)
    try:  # a connection cap the open-file limit cannot hold is a bad setting too
        fit_open_file_limit(settings.max_connections)
    except OpenFileShortage as exc:
        fail(PROG, [str(exc)])
    try:  # what would fail the app's start-up, as one line instead of a traceback
        resolve_provider(settings.provider, log_fallback=False)
        packs = packs_to_load(settings)
    except (PackError, RuntimeError) as exc:
        log.critical("cannot serve: %s", exc)
        return EXIT_CANNOT_SERVE
    app = create_app(settings, packs=packs)
    server = ServiceServer(uvicorn_config(app, settings, log_config=None), app)
    # uvicorn raises the signal that stopped it again once it has stopped: a stop asked
    # for is a clean exit here, not a KeyboardInterrupt traceback or death by SIGTERM
    signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            server.run()
    except SystemExit:  # uvicorn's start-up failure (the lifespan raised: it logged why)
        return EXIT_CANNOT_SERVE
    if server.failure is not None or not server.started:
        return EXIT_CANNOT_SERVE
    return 0


if __name__ == "__main__":
    sys.exit(main())
