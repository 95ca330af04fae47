"""The store interface: stored responses and conversations, behind one small Protocol.

SQLite (``store/sqlite.py``) is the embedded default; a PostgreSQL backend serving several
replicas can implement the same Protocol without touching services or routers. Items and responses
travel as plain JSON-ready dicts in their official shapes (``services/items.py``).

Errors: ``StoreUnavailableError`` (503 + ``Retry-After``) when the database stays locked past the
retry budget or cannot be used at all; ``DuplicateItemError`` (400) when an item id already
exists in a conversation; ``CursorNotFoundError`` (400) for an ``after``/``before`` cursor that
names no item of the list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from egemma.errors import InvalidRequestError, UnavailableError

Item = dict[str, Any]
Order = Literal["asc", "desc"]


class StoreUnavailableError(UnavailableError):
    """The store is locked past its retry budget, or broken: 503 + Retry-After, never a 500."""

    def __init__(self, message: str = "The store is busy; retry shortly.", retry_after: int = 1):
        super().__init__(message, retry_after=retry_after, code="store_unavailable")


@dataclass(frozen=True)
class Owner:
    """Whose rows these are: the API key's name. An admin sees every row; anyone else only their
    own, and another owner's row is reported exactly like a missing one (no existence oracle)."""

    name: str
    admin: bool = False


# The primary key (WORKBENCH_API_KEY / the generated key). Rows stored before owners existed
# belong to it (migration v2).
ADMIN = Owner("admin", admin=True)

BROKEN_MESSAGE = (
    "The store of responses and conversations is unavailable; see /health for the reason."
)


@dataclass(frozen=True)
class StoreHealth:
    """What ``/health``, ``/ready`` and ``/metrics`` say about the store (no I/O to read it).

    ``reason`` names the problem without file paths (it is shown on the public ``/health``).
    """

    status: Literal["ok", "error", "not_opened"] = "not_opened"
    reason: str | None = None


class DuplicateItemError(InvalidRequestError):
    def __init__(self, item_id: str, param: str | None = None) -> None:
        super().__init__(
            f"Duplicate item found with id {item_id}. Remove duplicate items from your input "
            "and try again.",
            param=param,
            code="duplicate_item",
        )
        self.item_id = item_id


class CursorNotFoundError(InvalidRequestError):
    def __init__(self, cursor: str, param: str) -> None:
        super().__init__(f"No item with id '{cursor}' in this list.", param=param)


@dataclass
class Page:
    """One page of a cursor-paginated list, in the requested order."""

    data: list[Item] = field(default_factory=list)
    has_more: bool = False

    @property
    def first_id(self) -> str | None:
        return str(self.data[0]["id"]) if self.data else None

    @property
    def last_id(self) -> str | None:
        return str(self.data[-1]["id"]) if self.data else None


@runtime_checkable
class ResponseStore(Protocol):
    """Stored responses: the ``Response`` dict, its input items and its output items."""

    async def save(self, response: Item, input_items: list[Item]) -> None:
        """Insert or replace ``response`` (keyed by its ``id``) with its input items, atomically.

        Output items are taken from ``response["output"]`` and indexed for ``find_item``.
        """

    async def get(self, response_id: str) -> tuple[Item, list[Item]] | None:
        """``(response, input_items)`` or None when unknown or deleted."""

    async def delete(self, response_id: str) -> bool:
        """Delete a response and its items; False when it did not exist."""

    async def list_input_items(
        self,
        response_id: str,
        *,
        after: str | None = None,
        before: str | None = None,
        limit: int = 20,
        order: Order = "desc",
    ) -> Page | None:
        """A page of the response's input items; None when the response is unknown."""

    async def find_item(self, item_id: str) -> Item | None:
        """The newest stored item with this id, for ``item_reference``.

        Searches response input and output items and conversation items alike.
        """


@runtime_checkable
class ConversationStore(Protocol):
    """Conversations: ``{id, object, created_at, metadata}`` plus an ordered item list."""

    async def create(self, metadata: dict[str, str], items: list[Item]) -> Item:
        """Create a conversation (a new ``conv_`` id) holding ``items``; return the object."""

    async def get(self, conversation_id: str) -> Item | None: ...

    async def update(self, conversation_id: str, metadata: dict[str, str]) -> Item | None:
        """Replace the metadata; None when the conversation is unknown."""

    async def delete(self, conversation_id: str) -> bool: ...

    async def add_items(self, conversation_id: str, items: list[Item]) -> list[Item] | None:
        """Append items atomically (all or none); None when the conversation is unknown."""

    async def all_items(self, conversation_id: str) -> list[Item] | None:
        """Every item in insertion order (for building a prompt); None when unknown."""

    async def list_items(
        self,
        conversation_id: str,
        *,
        after: str | None = None,
        limit: int = 20,
        order: Order = "desc",
    ) -> Page | None:
        """A page of items in insertion order (``asc``) or newest first; None when unknown."""

    async def get_item(self, conversation_id: str, item_id: str) -> Item | None: ...

    async def delete_item(self, conversation_id: str, item_id: str) -> bool: ...

    async def list_conversations(self, *, limit: int = 20, after: str | None = None) -> Page:
        """Newest first; each entry carries ``item_count`` (the original's list extension)."""


@runtime_checkable
class BackgroundStore(Protocol):
    """Background responses' runs and event logs (not owner-scoped: callers check the
    response through ``responses.get`` first). Shared by every replica on the store."""

    async def begin(self, response_id: str) -> None:
        """Record a new run (not cancelled, not done, heartbeat now)."""

    async def tick(self, response_id: str, first: int, events: list[Item]) -> bool:
        """Append ``events`` numbered from ``first``, refresh the heartbeat; whether a cancel
        was requested."""

    async def finish(self, response_id: str) -> None:
        """Mark the run done (its final response is stored)."""

    async def request_cancel(self, response_id: str) -> bool:
        """Ask the run to stop, from any replica; False when there is no such run."""

    async def events_after(self, response_id: str, after: int) -> tuple[list[Item], bool]:
        """Events with ``sequence_number > after`` in order, and whether the run is done
        (read before the events, so a done run's list is complete)."""

    async def abandoned(self, stale_before: float) -> list[str]:
        """Runs not done whose heartbeat is older than ``stale_before`` (unix seconds)."""


@runtime_checkable
class Store(Protocol):
    """Everything the services need: ``store.responses`` and ``store.conversations``.

    ``open`` creates the database and runs migrations (also done lazily on first use);
    ``close`` releases connections and files. The store itself acts as ``ADMIN``; requests use
    ``scoped(owner)``.
    """

    @property
    def responses(self) -> ResponseStore: ...

    @property
    def conversations(self) -> ConversationStore: ...

    @property
    def background(self) -> BackgroundStore: ...

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    def scoped(self, owner: Owner) -> Store:
        """A view whose ``responses`` and ``conversations`` see and write only ``owner``'s rows
        (all rows for an admin). It shares the store's connections; closing it is a no-op."""

    def health(self) -> StoreHealth:
        """The last known state, updated by every operation and by ``check``; no I/O."""

    async def check(self) -> None:
        """Probe the store now (cheap): ``StoreUnavailableError`` unless it can be used.

        Routes whose work ends in a write call this *before* the model runs, so a broken store
        is a 503 up front, never a generation whose answer then cannot be kept.
        """
