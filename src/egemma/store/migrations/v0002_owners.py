"""Owners: every stored response and conversation belongs to the API key that made it (issue 18,
item 16). Rows from before keys were named belong to the primary key, ``admin``; conversation
and response items follow their parent row.
"""

VERSION = 2

SQL = """
ALTER TABLE responses ADD COLUMN owner TEXT NOT NULL DEFAULT 'admin';

ALTER TABLE conversations ADD COLUMN owner TEXT NOT NULL DEFAULT 'admin';

CREATE INDEX responses_by_owner ON responses (owner, seq);

CREATE INDEX conversations_by_owner ON conversations (owner, seq)
"""

POSTGRES = """
ALTER TABLE responses ADD COLUMN owner TEXT NOT NULL DEFAULT 'admin';

ALTER TABLE conversations ADD COLUMN owner TEXT NOT NULL DEFAULT 'admin';

CREATE INDEX responses_by_owner ON responses (owner, seq);

CREATE INDEX conversations_by_owner ON conversations (owner, seq)
"""
