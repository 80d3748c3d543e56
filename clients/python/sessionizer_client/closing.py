"""``with`` support shared by the client's classes (and the pipeline's services)."""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Self

from sessionizer_client.exceptions import TransportError

log = logging.getLogger("sessionizer_client.publisher")


class ClosesOnExit:
    """``with``: :meth:`close` on the way out; when an exception is already on its way,
    a failure to flush is logged instead of hiding it."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
            return
        try:
            self.close()
        except TransportError as error:  # do not hide the exception already on its way
            log.warning("could not flush on exit: %s", error)
