"""Gemini through ``google-genai``: one summary per call, every failure a real HTTP status.

The original eGemma returned Gemini failures as the summary text with a 200 and cached them.
Here a failure raises: quota (429) → ``RateLimitError`` with ``Retry-After`` from the API's
``RetryInfo.retryDelay``; overload (503) → ``UnavailableError``; any other API error, a timeout,
a blocked prompt or an answer without text → ``UpstreamError`` (502). Nothing that raises is
cached by the caller.

``google-genai`` is imported here only (the ``gemini`` extra): a missing package makes the
capability an error at load time, not a crash. ``GEMINI_BASE_URL`` points the SDK elsewhere
(a proxy, or the local fake server the tests run).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from dataclasses import dataclass
from typing import Any

from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from egemma.errors import RateLimitError, UnavailableError, UpstreamError
from egemma.settings import GeminiSettings

log = logging.getLogger(__name__)

# The categories the original blocked at BLOCK_LOW_AND_ABOVE when enable_safety was set.
SAFETY_CATEGORIES = (
    types.HarmCategory.HARM_CATEGORY_HARASSMENT,
    types.HarmCategory.HARM_CATEGORY_HATE_SPEECH,
    types.HarmCategory.HARM_CATEGORY_SEXUALLY_EXPLICIT,
    types.HarmCategory.HARM_CATEGORY_DANGEROUS_CONTENT,
)
# Finish reasons that mean the answer was withheld, not merely cut short.
BLOCKED_FINISH = frozenset(
    {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "MODEL_ARMOR"}
)
DEFAULT_QUOTA_RETRY = 60  # seconds, when a 429 carries neither RetryInfo nor Retry-After
DEFAULT_OVERLOAD_RETRY = 5
_DELAY_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")
_MESSAGE_CAP = 300


@dataclass(frozen=True)
class GeminiRequest:
    model: str
    system: str
    user: str
    max_tokens: int
    temperature: float
    enable_safety: bool = False


@dataclass(frozen=True)
class GeminiResult:
    text: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


def _transport_errors() -> tuple[type[BaseException], ...]:
    """httpx and (when installed) httpx2 errors: the SDK uses whichever is present."""
    import httpx

    classes: list[type[BaseException]] = [httpx.HTTPError]
    try:
        import httpx2

        classes.append(httpx2.HTTPError)
    except ImportError:
        pass
    return tuple(classes)


def _timeout_errors() -> tuple[type[BaseException], ...]:
    import httpx

    classes: list[type[BaseException]] = [httpx.TimeoutException, TimeoutError]
    try:
        import httpx2

        classes.append(httpx2.TimeoutException)
    except ImportError:
        pass
    return tuple(classes)


class GeminiBackend:
    """A ``google-genai`` client built from ``GeminiSettings`` (API key, timeout, base URL)."""

    def __init__(self, settings: GeminiSettings) -> None:
        if settings.api_key is None:
            raise ValueError("GEMINI_API_KEY is not set")
        self.settings = settings
        self.timeout = settings.api_timeout
        http_options = types.HttpOptions(
            timeout=int(settings.api_timeout * 1000),
            base_url=settings.base_url or None,
            # No SDK retries: a quota or overload answer goes back to our client with its
            # Retry-After instead of holding the request for up to a minute.
            retry_options=None,
        )
        self._client = genai.Client(
            api_key=settings.api_key.get_secret_value(),
            vertexai=False,
            http_options=http_options,
        )
        self._transport_errors = _transport_errors()
        self._timeout_errors = _timeout_errors()

    def config_for(self, request: GeminiRequest) -> types.GenerateContentConfig:
        """The one place a summary request becomes Gemini generation parameters."""
        safety = None
        if request.enable_safety:
            safety = [
                types.SafetySetting(
                    category=category, threshold=types.HarmBlockThreshold.BLOCK_LOW_AND_ABOVE
                )
                for category in SAFETY_CATEGORIES
            ]
        thinking = None
        budget = self.settings.thinking_budget
        if budget == -1 and request.model.startswith("gemini-2.5-flash"):
            # 2.5 Flash counts thinking against max_output_tokens: with the original's 300
            # tokens the answer is often empty. Summaries do not need it.
            budget = 0
        if budget >= 0:
            thinking = types.ThinkingConfig(thinking_budget=budget)
        return types.GenerateContentConfig(
            system_instruction=request.system,
            temperature=request.temperature,
            max_output_tokens=request.max_tokens,
            safety_settings=safety,
            thinking_config=thinking,
        )

    async def generate(self, request: GeminiRequest) -> GeminiResult:
        """One ``generateContent`` call; raises the eGemma error for every failure."""
        config = self.config_for(request)
        try:
            # The SDK's own timeout covers the HTTP exchange; this one bounds the whole call.
            async with asyncio.timeout(self.timeout + 5.0):
                response = await self._client.aio.models.generate_content(
                    model=request.model, contents=request.user, config=config
                )
        except genai_errors.APIError as exc:
            raise map_api_error(exc) from None
        except self._timeout_errors:
            raise UpstreamError(
                f"The Gemini API did not answer within {self.timeout:g} seconds.",
                code="upstream_timeout",
            ) from None
        except self._transport_errors as exc:
            log.warning("Gemini request failed: %s", type(exc).__name__)
            raise UpstreamError(
                "The Gemini API could not be reached.", code="upstream_unreachable"
            ) from None
        return read_response(response, request.model)

    async def aclose(self) -> None:
        await self._client.aio.aclose()

    def close(self) -> None:
        self._client.close()


def map_api_error(exc: genai_errors.APIError) -> Exception:
    """Quota → 429, overload → 503, anything else → 502 (never a 200 with the error text)."""
    code = int(exc.code or 0)
    status = str(exc.status or "")
    message = _short(exc.message)
    if code == 429 or status == "RESOURCE_EXHAUSTED":
        retry = retry_delay(exc.details) or _header_retry(exc) or DEFAULT_QUOTA_RETRY
        log.warning("Gemini quota exhausted; retry in %ss", retry)
        return RateLimitError(
            retry,
            f"Gemini API quota exhausted. Rate limit exceeded. Try again in {retry} seconds.",
        )
    if code == 503 or status == "UNAVAILABLE":
        retry = _header_retry(exc) or DEFAULT_OVERLOAD_RETRY
        return UnavailableError(
            f"The Gemini API is temporarily overloaded ({message or status}).",
            retry_after=retry,
            code="upstream_overloaded",
        )
    log.warning("Gemini API error %s %s", code, status)
    return UpstreamError(
        f"Gemini API error {code} {status}: {message}".rstrip(": "), code="upstream_error"
    )


def retry_delay(details: Any) -> int | None:
    """Whole seconds from a ``google.rpc.RetryInfo`` detail (``"retryDelay": "38.2s"``)."""
    if isinstance(details, list) and len(details) == 1:
        details = details[0]
    error = details.get("error", details) if isinstance(details, dict) else None
    entries = error.get("details") if isinstance(error, dict) else None
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or not str(entry.get("@type", "")).endswith("RetryInfo"):
            continue
        match = _DELAY_RE.match(str(entry.get("retryDelay", "")))
        if match:
            return max(1, math.ceil(float(match.group(1))))
    return None


def _header_retry(exc: genai_errors.APIError) -> int | None:
    headers = getattr(getattr(exc, "response", None), "headers", None)
    value = headers.get("retry-after") if headers is not None else None
    if value and str(value).strip().isdigit():
        return max(1, int(str(value).strip()))
    return None


def _short(message: Any) -> str:
    text = " ".join(str(message or "").split())
    return text if len(text) <= _MESSAGE_CAP else text[: _MESSAGE_CAP - 1] + "…"


def read_response(response: types.GenerateContentResponse, model: str) -> GeminiResult:
    """The summary text, or ``UpstreamError`` for a blocked prompt, no candidate or no text."""
    feedback = response.prompt_feedback
    if feedback is not None and feedback.block_reason is not None:
        reason = _enum_name(feedback.block_reason)
        raise UpstreamError(f"Gemini blocked the request ({reason}).", code="upstream_blocked")
    if not response.candidates:
        raise UpstreamError("Gemini returned no candidates.", code="upstream_empty")
    candidate = response.candidates[0]
    finish = _enum_name(candidate.finish_reason) if candidate.finish_reason else "STOP"
    if finish in BLOCKED_FINISH:
        raise UpstreamError(f"Gemini withheld the answer ({finish}).", code="upstream_blocked")
    parts = candidate.content.parts if candidate.content and candidate.content.parts else []
    text = "".join(p.text for p in parts if p.text and not p.thought).strip()
    if not text:
        raise UpstreamError(
            f"Gemini returned no text (finish reason {finish}); a larger max_tokens may help.",
            code="upstream_empty",
        )
    usage = response.usage_metadata
    return GeminiResult(
        text=text,
        model=response.model_version or model,
        prompt_tokens=(usage.prompt_token_count or 0) if usage else 0,
        completion_tokens=(usage.candidates_token_count or 0) if usage else 0,
        finish_reason="length" if finish == "MAX_TOKENS" else "stop",
    )


def _enum_name(value: Any) -> str:
    return str(getattr(value, "value", value))
