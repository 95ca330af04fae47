"""SQL for stored responses and conversations on PostgreSQL; each method is one transaction.

The same tables, owners and keyset pagination as ``sqlite_tables.py`` (bodies are the exact JSON
text written), in PostgreSQL's dialect. PostgreSQL text cannot hold NUL characters: an id with
one is a 400 when written and unknown when looked up (SQLite would have stored it).
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from egemma.errors import InvalidRequestError
from egemma.ids import new_id
from egemma.store.base import (
    ADMIN,
    CursorNotFoundError,
    DuplicateItemError,
    Item,
    Order,
    Owner,
    Page,
)

if TYPE_CHECKING:
    from egemma.store.postgres import PostgresStore

Conn = Any  # psycopg.AsyncConnection


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _item_id(item: Item) -> str:
    item_id = item.get("id")
    if not isinstance(item_id, str) or not item_id:
        raise ValueError("stored items need an id (resolve item_reference first)")
    if "\x00" in item_id:
        raise InvalidRequestError("Item ids must not contain NUL characters.", param="id")
    return item_id


def _nul(*values: str | None) -> bool:
    """A lookup key PostgreSQL cannot even be asked about (so: unknown)."""
    return any(v is not None and "\x00" in v for v in values)


def _mine(owner: Owner, alias: str = "") -> tuple[str, list[Any]]:
    if owner.admin:
        return "", []
    return f" AND {alias}owner = %s", [owner.name]


async def _all(conn: Conn, sql: str, args: Any = ()) -> list[tuple[Any, ...]]:
    cur = await conn.execute(sql, args)
    rows: list[tuple[Any, ...]] = await cur.fetchall()
    return rows


async def _one(conn: Conn, sql: str, args: Any = ()) -> tuple[Any, ...] | None:
    cur = await conn.execute(sql, args)
    row: tuple[Any, ...] | None = await cur.fetchone()
    return row


async def _page(
    conn: Conn,
    sql: str,
    args: list[Any],
    *,
    after: int | None,
    before: int | None,
    limit: int,
    order: Order,
    decode: Any = None,
) -> Page:
    """Keyset pagination over ``pos`` (see ``sqlite_tables._page``)."""
    asc = order == "asc"
    conds: list[str] = []
    if after is not None:
        conds.append("pos > %s" if asc else "pos < %s")
        args.append(after)
    if before is not None:
        conds.append("pos < %s" if asc else "pos > %s")
        args.append(before)
    backwards = before is not None and after is None
    direction = "ASC" if asc != backwards else "DESC"
    where = (" WHERE " + " AND ".join(conds)) if conds else ""
    rows = await _all(
        conn,
        f"SELECT * FROM ({sql}) page{where} ORDER BY pos {direction} LIMIT %s",
        [*args, limit + 1],
    )
    has_more = len(rows) > limit
    data = [decode(row) if decode else json.loads(row[0]) for row in rows[:limit]]
    if backwards:
        data.reverse()
    return Page(data=data, has_more=has_more)


class PostgresResponses:
    """``ResponseStore`` on the ``responses`` and ``response_items`` tables."""

    def __init__(self, store: PostgresStore, owner: Owner = ADMIN) -> None:
        self._store = store
        self._owner = owner
        self._mine, self._mine_args = _mine(owner)

    async def save(self, response: Item, input_items: list[Item]) -> None:
        response_id = str(response["id"])
        if _nul(response_id):
            raise InvalidRequestError("Response ids must not contain NUL characters.")
        created_at = int(response.get("created_at") or time.time())
        body = _dumps(response)
        rows = [("input", i, _item_id(it), _dumps(it)) for i, it in enumerate(input_items)]
        output = response.get("output") or []
        rows += [("output", i, _item_id(it), _dumps(it)) for i, it in enumerate(output)]

        async def run(conn: Conn) -> None:
            # An upsert keeps the row (and its lock) stable under concurrent saves of one id.
            row = await _one(
                conn,
                "INSERT INTO responses (id, created_at, body, owner) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (id) DO UPDATE SET created_at = EXCLUDED.created_at, "
                "body = EXCLUDED.body, owner = EXCLUDED.owner RETURNING seq",
                (response_id, created_at, body, self._owner.name),
            )
            assert row is not None
            seq = row[0]
            await conn.execute("DELETE FROM response_items WHERE response_seq = %s", (seq,))
            if rows:
                async with conn.cursor() as cur:
                    await cur.executemany(
                        "INSERT INTO response_items (response_seq, kind, position, item_id, body) "
                        "VALUES (%s, %s, %s, %s, %s)",
                        [(seq, *r) for r in rows],
                    )

        await self._store.write(run)

    async def get(self, response_id: str) -> tuple[Item, list[Item]] | None:
        if _nul(response_id):
            return None

        async def run(conn: Conn) -> tuple[Item, list[Item]] | None:
            # One statement (one snapshot, one round trip): the response and its input items.
            rows = await _all(
                conn,
                "SELECT r.body, i.body FROM responses r LEFT JOIN response_items i "
                "ON i.response_seq = r.seq AND i.kind = 'input' WHERE r.id = %s"
                + _mine(self._owner, "r.")[0]
                + " ORDER BY i.position",
                [response_id, *self._mine_args],
            )
            if not rows:
                return None
            return json.loads(rows[0][0]), [json.loads(r[1]) for r in rows if r[1] is not None]

        return await self._store.read(run)

    async def delete(self, response_id: str) -> bool:
        if _nul(response_id):
            return False

        async def run(conn: Conn) -> bool:
            cur = await conn.execute(
                "DELETE FROM responses WHERE id = %s" + self._mine,
                [response_id, *self._mine_args],
            )
            return bool(cur.rowcount > 0)

        return await self._store.write(run)

    async def list_input_items(
        self,
        response_id: str,
        *,
        after: str | None = None,
        before: str | None = None,
        limit: int = 20,
        order: Order = "desc",
    ) -> Page | None:
        if _nul(response_id):
            return None

        async def position(conn: Conn, seq: int, cursor: str | None, param: str) -> Any:
            if cursor is None:
                return None
            row = None
            if not _nul(cursor):
                row = await _one(
                    conn,
                    "SELECT min(position) FROM response_items "
                    "WHERE response_seq = %s AND kind = 'input' AND item_id = %s",
                    (seq, cursor),
                )
            if row is None or row[0] is None:
                raise CursorNotFoundError(cursor, param)
            return row[0]

        async def run(conn: Conn) -> Page | None:
            row = await _one(
                conn,
                "SELECT seq FROM responses WHERE id = %s" + self._mine,
                [response_id, *self._mine_args],
            )
            if row is None:
                return None
            seq = row[0]
            return await _page(
                conn,
                "SELECT body, position AS pos FROM response_items "
                "WHERE response_seq = %s AND kind = 'input'",
                [seq],
                after=await position(conn, seq, after, "after"),
                before=await position(conn, seq, before, "before"),
                limit=limit,
                order=order,
            )

        return await self._store.read(run)

    async def find_item(self, item_id: str) -> Item | None:
        if _nul(item_id):
            return None
        by_response, args = _mine(self._owner, "r.")
        by_conversation, _ = _mine(self._owner, "c.")

        async def run(conn: Conn) -> Item | None:
            found = await _one(
                conn,
                "SELECT body FROM ("
                " SELECT i.body AS body, r.created_at AS created_at, r.seq AS s, 1 AS src"
                " FROM response_items i JOIN responses r ON r.seq = i.response_seq"
                " WHERE i.item_id = %s" + by_response + " UNION ALL"
                " SELECT i.body, i.created_at, i.seq AS s, 0 AS src FROM conversation_items i"
                " JOIN conversations c ON c.seq = i.conversation_seq"
                " WHERE i.item_id = %s" + by_conversation + ""
                ") found ORDER BY created_at DESC, src DESC, s DESC LIMIT 1",
                [item_id, *args, item_id, *args],
            )
            return None if found is None else json.loads(found[0])

        return await self._store.read(run)


class PostgresConversations:
    """``ConversationStore`` on the ``conversations`` and ``conversation_items`` tables."""

    def __init__(self, store: PostgresStore, owner: Owner = ADMIN) -> None:
        self._store = store
        self._owner = owner
        self._mine, self._mine_args = _mine(owner)

    @staticmethod
    def _object(conv_id: str, created_at: int, metadata: str) -> Item:
        return {
            "id": conv_id,
            "object": "conversation",
            "created_at": int(created_at),
            "metadata": json.loads(metadata),
        }

    async def _seq(self, conn: Conn, conversation_id: str, *, lock: bool = False) -> int | None:
        if _nul(conversation_id):
            return None
        row = await _one(
            conn,
            "SELECT seq FROM conversations WHERE id = %s"
            + self._mine
            + (" FOR UPDATE" if lock else ""),
            [conversation_id, *self._mine_args],
        )
        return None if row is None else int(row[0])

    @staticmethod
    async def _insert_items(conn: Conn, seq: int, items: list[Item]) -> None:
        import psycopg

        now = int(time.time())
        for item in items:
            item_id = _item_id(item)
            try:
                async with conn.transaction():  # a savepoint: the duplicate's error is ours
                    await conn.execute(
                        "INSERT INTO conversation_items "
                        "(conversation_seq, item_id, created_at, body) VALUES (%s, %s, %s, %s)",
                        (seq, item_id, now, _dumps(item)),
                    )
            except psycopg.errors.UniqueViolation:
                raise DuplicateItemError(item_id) from None

    async def create(self, metadata: dict[str, str], items: list[Item]) -> Item:
        from egemma.store.postgres import CONVERSATION_LOCK

        conv_id = new_id("conv")
        created_at = int(time.time())
        meta = _dumps(metadata)

        async def run(conn: Conn) -> None:
            # Serialize creations so ``seq`` order is commit order for list_conversations.
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (CONVERSATION_LOCK,))
            row = await _one(
                conn,
                "INSERT INTO conversations (id, created_at, metadata, owner) "
                "VALUES (%s, %s, %s, %s) RETURNING seq",
                (conv_id, created_at, meta, self._owner.name),
            )
            assert row is not None
            await self._insert_items(conn, int(row[0]), items)

        await self._store.write(run)
        return self._object(conv_id, created_at, meta)

    async def get(self, conversation_id: str) -> Item | None:
        if _nul(conversation_id):
            return None

        async def run(conn: Conn) -> Item | None:
            row = await _one(
                conn,
                "SELECT id, created_at, metadata FROM conversations WHERE id = %s" + self._mine,
                [conversation_id, *self._mine_args],
            )
            return None if row is None else self._object(*row)

        return await self._store.read(run)

    async def update(self, conversation_id: str, metadata: dict[str, str]) -> Item | None:
        if _nul(conversation_id):
            return None

        async def run(conn: Conn) -> Item | None:
            row = await _one(
                conn,
                "UPDATE conversations SET metadata = %s WHERE id = %s"
                + self._mine
                + " RETURNING id, created_at, metadata",
                [_dumps(metadata), conversation_id, *self._mine_args],
            )
            return None if row is None else self._object(*row)

        return await self._store.write(run)

    async def delete(self, conversation_id: str) -> bool:
        if _nul(conversation_id):
            return False

        async def run(conn: Conn) -> bool:
            cur = await conn.execute(
                "DELETE FROM conversations WHERE id = %s" + self._mine,
                [conversation_id, *self._mine_args],
            )
            return bool(cur.rowcount > 0)

        return await self._store.write(run)

    async def add_items(self, conversation_id: str, items: list[Item]) -> list[Item] | None:
        async def run(conn: Conn) -> list[Item] | None:
            # The row lock orders appends from every replica: seq order is commit order.
            seq = await self._seq(conn, conversation_id, lock=True)
            if seq is None:
                return None
            await self._insert_items(conn, seq, items)
            return items

        return await self._store.write(run)

    async def all_items(self, conversation_id: str) -> list[Item] | None:
        async def run(conn: Conn) -> list[Item] | None:
            seq = await self._seq(conn, conversation_id)
            if seq is None:
                return None
            rows = await _all(
                conn,
                "SELECT body FROM conversation_items WHERE conversation_seq = %s ORDER BY seq",
                (seq,),
            )
            return [json.loads(r[0]) for r in rows]

        return await self._store.read(run)

    async def list_items(
        self,
        conversation_id: str,
        *,
        after: str | None = None,
        limit: int = 20,
        order: Order = "desc",
    ) -> Page | None:
        async def run(conn: Conn) -> Page | None:
            seq = await self._seq(conn, conversation_id)
            if seq is None:
                return None
            cursor = None
            if after is not None:
                row = None
                if not _nul(after):
                    row = await _one(
                        conn,
                        "SELECT seq FROM conversation_items "
                        "WHERE conversation_seq = %s AND item_id = %s",
                        (seq, after),
                    )
                if row is None:
                    raise CursorNotFoundError(after, "after")
                cursor = row[0]
            return await _page(
                conn,
                "SELECT body, seq AS pos FROM conversation_items WHERE conversation_seq = %s",
                [seq],
                after=cursor,
                before=None,
                limit=limit,
                order=order,
            )

        return await self._store.read(run)

    async def get_item(self, conversation_id: str, item_id: str) -> Item | None:
        if _nul(conversation_id, item_id):
            return None

        async def run(conn: Conn) -> Item | None:
            row = await _one(
                conn,
                "SELECT i.body FROM conversation_items i "
                "JOIN conversations c ON c.seq = i.conversation_seq "
                "WHERE c.id = %s AND i.item_id = %s" + _mine(self._owner, "c.")[0],
                [conversation_id, item_id, *self._mine_args],
            )
            return None if row is None else json.loads(row[0])

        return await self._store.read(run)

    async def delete_item(self, conversation_id: str, item_id: str) -> bool:
        if _nul(conversation_id, item_id):
            return False

        async def run(conn: Conn) -> bool:
            seq = await self._seq(conn, conversation_id)
            if seq is None:
                return False
            cur = await conn.execute(
                "DELETE FROM conversation_items WHERE conversation_seq = %s AND item_id = %s",
                (seq, item_id),
            )
            return bool(cur.rowcount > 0)

        return await self._store.write(run)

    async def list_conversations(self, *, limit: int = 20, after: str | None = None) -> Page:
        def decode(row: tuple[Any, ...]) -> Item:
            return {**self._object(row[0], row[1], row[2]), "item_count": int(row[3])}

        async def run(conn: Conn) -> Page:
            cursor = None
            if after is not None:
                cursor = await self._seq(conn, after)
                if cursor is None:
                    raise CursorNotFoundError(after, "after")
            return await _page(
                conn,
                "SELECT id, created_at, metadata, (SELECT count(*) FROM conversation_items i "
                "WHERE i.conversation_seq = c.seq) AS item_count, seq AS pos "
                "FROM conversations c WHERE true" + _mine(self._owner, "c.")[0],
                list(self._mine_args),
                after=cursor,
                before=None,
                limit=limit,
                order="desc",
                decode=decode,
            )

        return await self._store.read(run)
