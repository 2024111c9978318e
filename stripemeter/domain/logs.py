"""One logging format for every process."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level.upper(), format=FORMAT)
    # aiokafka is chatty about transient coordinator moves at INFO.
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    # stripe logs every error response at INFO; the writer logs what it does about them
    logging.getLogger("stripe").setLevel(logging.WARNING)
