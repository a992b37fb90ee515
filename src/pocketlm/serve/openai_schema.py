"""The requests of OpenAI's API that `pocketlm serve` answers, as pydantic models, and its error shape.

Fields pocketlm does not use (user, logit_bias, ...) are accepted and ignored, as OpenAI-compatible
servers commonly do; fields whose meaning it cannot honour yet (n > 1, tools, logprobs, echo, suffix) are
refused with a 400 naming the field. Values the generation cannot take are bounded here, so they
get a 400 (or a harmless equivalent) instead of an error deep in sampling: `seed` is a 64-bit integer (torch's
generator takes no more), and a temperature too small to divide the logits by in float32 is greedy."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, WrapValidator, field_validator
from pydantic_core import PydanticCustomError


class APIError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or error_type(status)


def error_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 404:
        return "not_found_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def error_body(status: int, message: str, *, param: str | None = None, code: str | None = None,
               type: str | None = None) -> dict:
    return {"error": {"message": message, "type": type or error_type(status), "param": param, "code": code}}


# Below this a temperature is greedy: logits / 1e-40 overflow float32 (NaN probabilities), and a temperature
# this small picks the most likely token anyway (another token would need a logit within ~1e-5 of it).
GREEDY_BELOW = 1e-6
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """The body of every error answer, as `error_body` builds it (for the OpenAPI document)."""
    error: ErrorDetail


def _either(what: str) -> WrapValidator:
    """For a field of several types: a value that fits none of them is one error at the field ("prompt: Input
    should be a string or a list of strings"), not one per type at locations naming the types (`prompt.str`),
    which the client would get as the error's `param`."""
    def validate(value, handler):
        try:
            return handler(value)
        except ValidationError as e:
            raise PydanticCustomError("invalid_type", "Input should be {what}", {"what": what}) from e
    return WrapValidator(validate)


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant"]
    content: Annotated[str | list[TextPart] | None, _either("a string or a list of text parts")] = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampling(_Request):
    model: str
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Annotated[str | list[str] | None, _either("a string or a list of strings")] = None
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX)
    logprobs: Annotated[bool | int | None, _either("a boolean or an integer")] = None

    @field_validator("temperature")
    @classmethod
    def _tiny_is_greedy(cls, t: float) -> float:
        return 0.0 if t < GREEDY_BELOW else t

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4:
            raise APIError(400, "stop: at most 4 stop sequences", param="stop")
        return [s for s in stops if s]


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    response_format: dict | None = None
    tools: list | None = None

    def wanted_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_Sampling):
    prompt: Annotated[str | list[str], _either("a string or a list of strings")]
    max_tokens: int | None = Field(16, ge=1)
    echo: bool = False
    suffix: str | None = None

    def wanted_tokens(self) -> int | None:
        return self.max_tokens

    def text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise APIError(400, "prompt: one prompt per request is supported (a string or a list of one)",
                           param="prompt")
        return self.prompt[0]
