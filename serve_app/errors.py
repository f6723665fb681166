"""API errors: one exception type, one JSON shape, stable machine-readable codes.

The body follows OpenAI's error shape so the official client surfaces the message:
    {"error": {"code": "unknown_voice", "message": "...", "type": "invalid_request_error", "param": null}}
"""
from __future__ import annotations

from typing import Any


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"code": self.code, "message": self.message, "type": kind, "param": self.param}}


def bad_request(code: str, message: str, param: str | None = None) -> ApiError:
    return ApiError(400, code, message, param)


def not_found(code: str, message: str) -> ApiError:
    return ApiError(404, code, message)
