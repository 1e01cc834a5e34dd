"""`python -m service`: run the API with uvicorn on the configured host and port."""

from __future__ import annotations

import logging

import uvicorn

from service.app import create_app
from service.server import uvicorn_config
from service.settings import Settings


def main() -> None:
    settings = Settings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    uvicorn.Server(uvicorn_config(create_app(settings), settings)).run()


if __name__ == "__main__":
    main()
