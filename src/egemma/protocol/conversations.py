"""Request bodies of the Conversations API (responses are the official shapes, as dicts).

Unknown fields are accepted and ignored; items and metadata are validated in the service so
errors name the exact field (``items[2].content``, ``metadata``).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ConversationCreateRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    items: list[Any] | None = Field(default=None, description="Initial items (at most 20).")
    metadata: Any = Field(default=None, description="Up to 16 string pairs.")


class ConversationUpdateRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    metadata: Any = Field(default=None, description="Replaces the metadata; up to 16 string pairs.")


class ConversationItemsCreateRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    items: list[Any] = Field(description="Items to append (1 to 20).")
