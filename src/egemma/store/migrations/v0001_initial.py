"""Responses with their input/output items; conversations with their ordered items.

Bodies are the official JSON shapes; the columns beside them exist for lookups and ordering.
``seq`` columns give a stable insertion order (ids are random).
"""

VERSION = 1

SQL = """
CREATE TABLE responses (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    body TEXT NOT NULL
);

CREATE TABLE response_items (
    response_seq INTEGER NOT NULL REFERENCES responses(seq) ON DELETE CASCADE,
    kind TEXT NOT NULL CHECK (kind IN ('input', 'output')),
    position INTEGER NOT NULL,
    item_id TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (response_seq, kind, position)
) WITHOUT ROWID;

CREATE INDEX response_items_by_item ON response_items (item_id);

CREATE TABLE conversations (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    metadata TEXT NOT NULL
);

CREATE TABLE conversation_items (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_seq INTEGER NOT NULL REFERENCES conversations(seq) ON DELETE CASCADE,
    item_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    body TEXT NOT NULL,
    UNIQUE (conversation_seq, item_id)
);

CREATE INDEX conversation_items_by_item ON conversation_items (item_id);
"""

# The same schema on PostgreSQL (``store/postgres.py``): identity columns for the insertion order,
# bodies kept as the exact JSON text written (key order and all).
POSTGRES = """
CREATE TABLE responses (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    body TEXT NOT NULL
);

CREATE TABLE response_items (
    response_seq BIGINT NOT NULL REFERENCES responses(seq) ON DELETE CASCADE,
    kind TEXT NOT NULL CHECK (kind IN ('input', 'output')),
    position INTEGER NOT NULL,
    item_id TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (response_seq, kind, position)
);

CREATE INDEX response_items_by_item ON response_items (item_id);

CREATE TABLE conversations (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    metadata TEXT NOT NULL
);

CREATE TABLE conversation_items (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    conversation_seq BIGINT NOT NULL REFERENCES conversations(seq) ON DELETE CASCADE,
    item_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    body TEXT NOT NULL,
    UNIQUE (conversation_seq, item_id)
);

CREATE INDEX conversation_items_by_item ON conversation_items (item_id)
"""
