"""Request bodies checked field by field, and the errors that name the offending field.

Every error becomes OpenAI's error object on ``/v1/embeddings`` and TEI's ``{"error",
"error_type"}`` on TEI's routes, with the status code each API uses for it.
"""

from __future__ import annotations

from typing import Any

# kind -> (OpenAI status, TEI status, TEI error_type, OpenAI error type)
KINDS = {
    "validation": (400, 422, "Validation", "invalid_request_error"),
    "empty": (400, 400, "Empty", "invalid_request_error"),
    "too_large": (413, 413, "Validation", "invalid_request_error"),
    "unauthorized": (401, 401, "Validation", "invalid_request_error"),
    "overloaded": (429, 429, "Overloaded", "rate_limit_error"),
    "unsupported": (400, 424, "Backend", "invalid_request_error"),  # the model lacks the head a route needs
    "backend": (500, 424, "Backend", "server_error"),
    "unhealthy": (503, 503, "Unhealthy", "server_error"),
}


class ApiError(Exception):
    def __init__(self, kind: str, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.kind, self.message, self.param, self.code = kind, message, param, code or kind
        self.headers = headers or {}

    def status(self, openai: bool) -> int:
        return KINDS[self.kind][0 if openai else 1]

    def body(self, openai: bool) -> dict:
        _, _, tei_type, openai_type = KINDS[self.kind]
        if openai:
            return {"error": {"message": self.message, "type": openai_type, "param": self.param, "code": self.code}}
        return {"error": self.message, "error_type": tei_type}


def _kind_of(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_count(items: list, param: str, max_items: int) -> None:
    if not items:
        raise ApiError("empty", f"{param} is an empty list; send at least one input", param, "empty_input")
    if len(items) > max_items:
        raise ApiError("too_large", f"{param} has {len(items)} items, more than this server's "
                       f"--max-client-batch-size {max_items}; send them in several requests", param, "batch_too_large")


def texts_or_ids(value: Any, param: str, max_items: int) -> list[str | list[int]]:
    """A string, a list of strings, a token-id list, or a list of token-id lists (OpenAI's ``input``)."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise ApiError("validation", f"{param} must be a string, a list of strings, or token ids; got "
                       f"{_kind_of(value)}", param)
    if value and all(_is_int(v) for v in value):
        return [value]  # one input given as token ids
    _check_count(value, param, max_items)
    out: list[str | list[int]] = []
    for i, v in enumerate(value):
        where = f"{param}[{i}]"
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, list):
            if not v:
                raise ApiError("validation", f"{where} is an empty token-id list", where)
            for j, t in enumerate(v):
                if not _is_int(t):
                    raise ApiError("validation", f"{where}[{j}] is {_kind_of(t)}; token ids are integers",
                                   f"{where}[{j}]")
            out.append(v)
        else:
            raise ApiError("validation", f"{where} is {_kind_of(v)}; expected a string or a list of token ids", where)
    return out


def texts(value: Any, param: str, max_items: int) -> list[str]:
    """A string or a list of strings."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise ApiError("validation", f"{param} must be a string or a list of strings; got {_kind_of(value)}", param)
    _check_count(value, param, max_items)
    for i, v in enumerate(value):
        if not isinstance(v, str):
            raise ApiError("validation", f"{param}[{i}] is {_kind_of(v)}; expected a string", f"{param}[{i}]")
    return list(value)


def sequences(value: Any, param: str, max_items: int) -> tuple[list[tuple[str, ...]], bool]:
    """TEI's predict input: a string, a pair [a, b], or a batch of [a] and [a, b]; and whether it was one."""
    def one(v: Any, where: str) -> tuple[str, ...]:
        if not (isinstance(v, list) and 1 <= len(v) <= 2):
            raise ApiError("validation", f"{where} must be [text] or [text, text_pair]; got {_kind_of(v)}"
                           + (f" of {len(v)} items" if isinstance(v, list) else ""), where)
        for j, s in enumerate(v):
            if not isinstance(s, str):
                raise ApiError("validation", f"{where}[{j}] is {_kind_of(s)}; expected a string", f"{where}[{j}]")
        return tuple(v)

    if isinstance(value, str):
        return [(value,)], True
    if isinstance(value, list) and value and not isinstance(value[0], list):
        return [one(value, param)], True
    if not isinstance(value, list):
        raise ApiError("validation", f"{param} must be a string, a pair of strings, or a list of those; got "
                       f"{_kind_of(value)}", param)
    _check_count(value, param, max_items)
    return [one(v, f"{param}[{i}]") for i, v in enumerate(value)], False


def string(body: dict, name: str) -> str:
    v = body.get(name)
    if not isinstance(v, str):
        raise ApiError("validation", f"{name} must be a string; got {_kind_of(v)}", name)
    return v


def optional_string(body: dict, name: str) -> str | None:
    v = body.get(name)
    if v is not None and not isinstance(v, str):
        raise ApiError("validation", f"{name} must be a string or null; got {_kind_of(v)}", name)
    return v


def flag(body: dict, name: str, default: bool | None) -> bool | None:
    v = body.get(name)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise ApiError("validation", f"{name} must be true or false; got {_kind_of(v)}", name)
    return v


def choice(body: dict, name: str, choices: tuple[str, ...], default: str) -> str:
    v = body.get(name)
    if v is None:
        return default
    if v not in choices:
        raise ApiError("validation", f"{name}={v!r}; this server takes {' or '.join(map(repr, choices))}", name)
    return v


def dimensions(body: dict, hidden: int) -> int | None:
    v = body.get("dimensions")
    if v is None:
        return None
    if not _is_int(v) or not 1 <= v <= hidden:
        raise ApiError("validation", f"dimensions={v!r}; expected an integer from 1 to the model's {hidden}",
                       "dimensions")
    return v


def no_prompts(body: dict) -> None:
    """TEI's prompt_name picks a sentence-transformers prompt; cbert applies none, so it says so."""
    if body.get("prompt_name") is not None:
        raise ApiError("validation", "prompt_name: this server applies no prompts; prepend the prompt to the text",
                       "prompt_name")


def right_truncation(body: dict) -> None:
    choice(body, "truncation_direction", ("right", "Right"), "right")
