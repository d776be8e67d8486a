"""Errors as values with an HTTP-like code.

Every layer raises :class:`CorralError` (or a subclass); the service base turns it into a
NATS micro error reply, the bus client turns that reply back into the same exception, and the
gateway renders it as LXD's error envelope. Nobody parses message strings.
"""

from __future__ import annotations


class CorralError(Exception):
    """An error a person can act on, with the HTTP status code that describes it."""

    code: int = 500

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code}, {self.message!r})"

    @staticmethod
    def from_code(code: int, message: str) -> "CorralError":
        """Rebuild the most specific error class for a code received over the wire."""
        cls = _BY_CODE.get(code, CorralError)
        err = cls(message)
        err.code = code
        return err


class BadRequest(CorralError):
    code = 400


class Forbidden(CorralError):
    code = 403


class NotFound(CorralError):
    code = 404


class Conflict(CorralError):
    code = 409


class PreconditionFailed(CorralError):
    code = 412


class Internal(CorralError):
    code = 500


class NotImplementedYet(CorralError):
    code = 501


class Unavailable(CorralError):
    """A service did not answer in time, or nobody serves the subject."""

    code = 503


_BY_CODE = {
    c.code: c
    for c in (BadRequest, Forbidden, NotFound, Conflict, PreconditionFailed, Internal,
              NotImplementedYet, Unavailable)
}
