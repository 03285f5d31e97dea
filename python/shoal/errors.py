"""Exceptions raised by the Shoal client.

Everything the client raises on purpose is a :class:`ShoalError`, so
``except ShoalError`` catches every failure of a call, whether the node
refused it, could not be reached, or the user's function failed.
"""

from __future__ import annotations

from typing import Any, Dict, Optional


class ShoalError(Exception):
    """A call to the node failed.

    Attributes:
        status: the HTTP status of the answer, or ``None`` when no answer came
            (the node could not be reached or the connection broke).
        code: a stable machine-readable code: one of the node's error codes
            (``function_not_found``, ``category_not_found``, ``unauthorized``,
            ...; see docs/api.md), or one of the client's own: ``unreachable``
            (the node could not be reached or the connection broke),
            ``timeout`` (no answer within the client's ``timeout``),
            ``bad_answer`` (an answer the client cannot read).
        message: what went wrong, in words.
    """

    def __init__(self, status: Optional[int], code: str, message: str):
        super().__init__(status, code, message)
        self.status = status
        self.code = code
        self.message = message

    def __str__(self) -> str:
        where = f"HTTP {self.status}" if self.status is not None else "no answer"
        return f"{self.message} ({self.code}, {where})"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status!r}, code={self.code!r}, message={self.message!r})"


class FunctionError(ShoalError):
    """The function ran and failed (the call itself worked).

    Attributes:
        type: how it failed: ``raised``, ``timed_out``, ``out_of_memory``,
            ``crashed``, ``exited``, ``forked``, ``output_limit``,
            ``bad_result`` or ``load_failed`` (see docs/functions.md).
        exception: the Python exception's class name when it raised, else ``None``.
        message: the failure's message.
        traceback: the Python traceback when it raised, else ``None``.
        invocation_id: the invocation's id (for ``Client.invocation`` and ``Client.logs``).
    """

    def __init__(self, invocation_id: Optional[str], error: Dict[str, Any], status: int = 200):
        self.type = str(error.get("type") or "unknown")
        self.exception = error.get("exception")
        self.traceback = error.get("traceback")
        self.invocation_id = invocation_id
        self.error = error
        super().__init__(status, "function_error", str(error.get("message") or ""))

    def __str__(self) -> str:
        what = f"{self.exception}: {self.message}" if self.exception else self.message
        return f"function failed ({self.type}): {what} [invocation {self.invocation_id}]"


class QueryError(ShoalError):
    """A query failed after it started.

    Attributes:
        code: ``map_failed`` when user code (``map``, ``map_batch`` or
            ``reduce``) failed, else one of the node's error codes.
        message: what went wrong.
        doc_id: the document whose ``map`` failed, when one is to blame.
        error: the failure of the user code as a dict (``type``,
            ``exception``, ``message``, ``traceback``), or ``None``.
        type, exception, traceback: shortcuts into ``error`` (``None`` when absent).
    """

    def __init__(self, body: Dict[str, Any], status: int = 200):
        self.doc_id = body.get("doc_id")
        self.error = body.get("error")
        err = self.error or {}
        self.type = err.get("type")
        self.exception = err.get("exception")
        self.traceback = err.get("traceback")
        super().__init__(status, str(body.get("code") or "query_failed"), str(body.get("message") or ""))

    def __str__(self) -> str:
        parts = [f"query failed ({self.code}): {self.message}"]
        if self.doc_id is not None:
            parts.append(f"document {self.doc_id!r}")
        if self.error:
            what = self.error.get("exception") or self.error.get("type")
            parts.append(f"{what}: {self.error.get('message', '')}")
        return "; ".join(parts)
