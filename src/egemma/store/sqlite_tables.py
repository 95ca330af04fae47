"""SQL for stored responses and conversations; each method is one short transaction.

Each table object acts for one ``Owner``: it writes rows under the owner's name and, unless the
owner is an admin, sees only those rows, so another key's id reads exactly like an unknown one.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import TYPE_CHECKING, Any

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
    from egemma.store.sqlite import SqliteStore


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _item_id(item: Item) -> str:
    item_id = item.get("id")
    if not isinstance(item_id, str) or not item_id:
        raise ValueError("stored items need an id (resolve item_reference first)")
    return item_id


def _mine(owner: Owner, alias: str = "") -> tuple[str, list[Any]]:
    """The SQL condition (to AND in) and its argument that limit a query to ``owner``'s rows."""
    if owner.admin:
        return "", []
    return f" AND {alias}owner = ?", [owner.name]


def _page(
    conn: sqlite3.Connection,
    sql: str,
    args: list[Any],
    *,
    after: int | None,
    before: int | None,
    limit: int,
    order: Order,
) -> Page:
    """Keyset pagination over a position column named ``pos`` in ``sql`` (a SELECT of bodies).

    ``after`` continues past a cursor in the list order; ``before`` alone returns the page just
    before a cursor (fetched backwards, then put back in list order).
    """
    asc = order == "asc"
    conds: list[str] = []
    if after is not None:
        conds.append("pos > ?" if asc else "pos < ?")
        args.append(after)
    if before is not None:
        conds.append("pos < ?" if asc else "pos > ?")
        args.append(before)
    backwards = before is not None and after is None
    direction = "ASC" if asc != backwards else "DESC"
    where = (" AND " + " AND ".join(conds)) if conds else ""
    rows = conn.execute(
        f"{sql}{where} ORDER BY pos {direction} LIMIT ?", [*args, limit + 1]
    ).fetchall()
    has_more = len(rows) > limit
    data = [json.loads(row[0]) for row in rows[:limit]]
    if backwards:
        data.reverse()
    return Page(data=data, has_more=has_more)


class SqliteResponses:
    """``ResponseStore`` on the ``responses`` and ``response_items`` tables."""

    def __init__(self, store: SqliteStore, owner: Owner = ADMIN) -> None:
        self._store = store
        self._owner = owner
        self._mine, self._mine_args = _mine(owner)

    async def save(self, response: Item, input_items: list[Item]) -> None:
        response_id = str(response["id"])
        created_at = int(response.get("created_at") or time.time())
        body = _dumps(response)
        rows = [("input", i, _item_id(it), _dumps(it)) for i, it in enumerate(input_items)]
        output = response.get("output") or []
        rows += [("output", i, _item_id(it), _dumps(it)) for i, it in enumerate(output)]

        def run(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM responses WHERE id = ?", (response_id,))
            cur = conn.execute(
                "INSERT INTO responses (id, created_at, body, owner) VALUES (?, ?, ?, ?)",
                (response_id, created_at, body, self._owner.name),
            )
            seq = cur.lastrowid
            conn.executemany(
                "INSERT INTO response_items (response_seq, kind, position, item_id, body) "
                "VALUES (?, ?, ?, ?, ?)",
                [(seq, *row) for row in rows],
            )

        await self._store.write(run)

    async def get(self, response_id: str) -> tuple[Item, list[Item]] | None:
        def run(conn: sqlite3.Connection) -> tuple[Item, list[Item]] | None:
            row = conn.execute(
                "SELECT seq, body FROM responses WHERE id = ?" + self._mine,
                [response_id, *self._mine_args],
            ).fetchone()
            if row is None:
                return None
            items = conn.execute(
                "SELECT body FROM response_items WHERE response_seq = ? AND kind = 'input' "
                "ORDER BY position",
                (row[0],),
            ).fetchall()
            return json.loads(row[1]), [json.loads(r[0]) for r in items]

        return await self._store.read(run)

    async def delete(self, response_id: str) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "DELETE FROM responses WHERE id = ?" + self._mine, [response_id, *self._mine_args]
            )
            return cur.rowcount > 0

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
        def position(conn: sqlite3.Connection, seq: int, cursor: str | None, param: str) -> Any:
            if cursor is None:
                return None
            row = conn.execute(
                "SELECT min(position) FROM response_items "
                "WHERE response_seq = ? AND kind = 'input' AND item_id = ?",
                (seq, cursor),
            ).fetchone()
            if row[0] is None:
                raise CursorNotFoundError(cursor, param)
            return row[0]

        def run(conn: sqlite3.Connection) -> Page | None:
            row = conn.execute(
                "SELECT seq FROM responses WHERE id = ?" + self._mine,
                [response_id, *self._mine_args],
            ).fetchone()
            if row is None:
                return None
            seq = row[0]
            return _page(
                conn,
                "SELECT body, position AS pos FROM response_items "
                "WHERE response_seq = ? AND kind = 'input'",
                [seq],
                after=position(conn, seq, after, "after"),
                before=position(conn, seq, before, "before"),
                limit=limit,
                order=order,
            )

        return await self._store.read(run)

    async def find_item(self, item_id: str) -> Item | None:
        by_response, args = _mine(self._owner, "r.")
        by_conversation, _ = _mine(self._owner, "c.")

        def run(conn: sqlite3.Connection) -> Item | None:
            found = conn.execute(
                "SELECT body, created_at FROM ("
                " SELECT i.body AS body, r.created_at AS created_at, r.seq AS s, 1 AS src"
                " FROM response_items i JOIN responses r ON r.seq = i.response_seq"
                " WHERE i.item_id = ?" + by_response + " UNION ALL"
                " SELECT i.body, i.created_at, i.seq AS s, 0 AS src FROM conversation_items i"
                " JOIN conversations c ON c.seq = i.conversation_seq"
                " WHERE i.item_id = ?" + by_conversation + ""
                ") ORDER BY created_at DESC, src DESC, s DESC LIMIT 1",
                [item_id, *args, item_id, *args],
            ).fetchone()
            return None if found is None else json.loads(found[0])

        return await self._store.read(run)


class SqliteConversations:
    """``ConversationStore`` on the ``conversations`` and ``conversation_items`` tables."""

    def __init__(self, store: SqliteStore, owner: Owner = ADMIN) -> None:
        self._store = store
        self._owner = owner
        self._mine, self._mine_args = _mine(owner)

    @staticmethod
    def _object(conv_id: str, created_at: int, metadata: str) -> Item:
        return {
            "id": conv_id,
            "object": "conversation",
            "created_at": created_at,
            "metadata": json.loads(metadata),
        }

    def _seq(self, conn: sqlite3.Connection, conversation_id: str) -> int | None:
        row = conn.execute(
            "SELECT seq FROM conversations WHERE id = ?" + self._mine,
            [conversation_id, *self._mine_args],
        ).fetchone()
        return None if row is None else int(row[0])

    @staticmethod
    def _insert_items(conn: sqlite3.Connection, seq: int, items: list[Item]) -> None:
        now = int(time.time())
        for item in items:
            try:
                conn.execute(
                    "INSERT INTO conversation_items (conversation_seq, item_id, created_at, body) "
                    "VALUES (?, ?, ?, ?)",
                    (seq, _item_id(item), now, _dumps(item)),
                )
            except sqlite3.IntegrityError:
                raise DuplicateItemError(_item_id(item)) from None

    async def create(self, metadata: dict[str, str], items: list[Item]) -> Item:
        conv_id = new_id("conv")
        created_at = int(time.time())
        meta = _dumps(metadata)

        def run(conn: sqlite3.Connection) -> None:
            cur = conn.execute(
                "INSERT INTO conversations (id, created_at, metadata, owner) VALUES (?, ?, ?, ?)",
                (conv_id, created_at, meta, self._owner.name),
            )
            self._insert_items(conn, int(cur.lastrowid or 0), items)

        await self._store.write(run)
        return self._object(conv_id, created_at, meta)

    async def get(self, conversation_id: str) -> Item | None:
        def run(conn: sqlite3.Connection) -> Item | None:
            row = conn.execute(
                "SELECT id, created_at, metadata FROM conversations WHERE id = ?" + self._mine,
                [conversation_id, *self._mine_args],
            ).fetchone()
            return None if row is None else self._object(*row)

        return await self._store.read(run)

    async def update(self, conversation_id: str, metadata: dict[str, str]) -> Item | None:
        def run(conn: sqlite3.Connection) -> Item | None:
            conn.execute(
                "UPDATE conversations SET metadata = ? WHERE id = ?" + self._mine,
                [_dumps(metadata), conversation_id, *self._mine_args],
            )
            row = conn.execute(
                "SELECT id, created_at, metadata FROM conversations WHERE id = ?" + self._mine,
                [conversation_id, *self._mine_args],
            ).fetchone()
            return None if row is None else self._object(*row)

        return await self._store.write(run)

    async def delete(self, conversation_id: str) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "DELETE FROM conversations WHERE id = ?" + self._mine,
                [conversation_id, *self._mine_args],
            )
            return cur.rowcount > 0

        return await self._store.write(run)

    async def add_items(self, conversation_id: str, items: list[Item]) -> list[Item] | None:
        def run(conn: sqlite3.Connection) -> list[Item] | None:
            seq = self._seq(conn, conversation_id)
            if seq is None:
                return None
            self._insert_items(conn, seq, items)
            return items

        return await self._store.write(run)

    async def all_items(self, conversation_id: str) -> list[Item] | None:
        def run(conn: sqlite3.Connection) -> list[Item] | None:
            seq = self._seq(conn, conversation_id)
            if seq is None:
                return None
            rows = conn.execute(
                "SELECT body FROM conversation_items WHERE conversation_seq = ? ORDER BY seq",
                (seq,),
            ).fetchall()
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
        def run(conn: sqlite3.Connection) -> Page | None:
            seq = self._seq(conn, conversation_id)
            if seq is None:
                return None
            cursor = None
            if after is not None:
                row = conn.execute(
                    "SELECT seq FROM conversation_items WHERE conversation_seq = ? AND item_id = ?",
                    (seq, after),
                ).fetchone()
                if row is None:
                    raise CursorNotFoundError(after, "after")
                cursor = row[0]
            return _page(
                conn,
                "SELECT body, seq AS pos FROM conversation_items WHERE conversation_seq = ?",
                [seq],
                after=cursor,
                before=None,
                limit=limit,
                order=order,
            )

        return await self._store.read(run)

    async def get_item(self, conversation_id: str, item_id: str) -> Item | None:
        def run(conn: sqlite3.Connection) -> Item | None:
            row = conn.execute(
                "SELECT i.body FROM conversation_items i "
                "JOIN conversations c ON c.seq = i.conversation_seq "
                "WHERE c.id = ? AND i.item_id = ?" + _mine(self._owner, "c.")[0],
                [conversation_id, item_id, *self._mine_args],
            ).fetchone()
            return None if row is None else json.loads(row[0])

        return await self._store.read(run)

    async def delete_item(self, conversation_id: str, item_id: str) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            seq = self._seq(conn, conversation_id)
            if seq is None:
                return False
            cur = conn.execute(
                "DELETE FROM conversation_items WHERE conversation_seq = ? AND item_id = ?",
                (seq, item_id),
            )
            return cur.rowcount > 0

        return await self._store.write(run)

    async def list_conversations(self, *, limit: int = 20, after: str | None = None) -> Page:
        def run(conn: sqlite3.Connection) -> Page:
            cursor = None
            if after is not None:
                cursor = self._seq(conn, after)
                if cursor is None:
                    raise CursorNotFoundError(after, "after")
            return _page(
                conn,
                "SELECT json_set(json_object('id', id, 'object', 'conversation', "
                "'created_at', created_at, 'metadata', json(metadata)), '$.item_count', "
                "(SELECT count(*) FROM conversation_items i WHERE i.conversation_seq = c.seq)) "
                ", seq AS pos FROM conversations c WHERE 1 = 1" + _mine(self._owner, "c.")[0],
                list(self._mine_args),
                after=cursor,
                before=None,
                limit=limit,
                order="desc",
            )

        return await self._store.read(run)
