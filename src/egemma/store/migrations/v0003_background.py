"""Background responses (issue 13): the run of each ``background: true`` response and its
event log, so any replica can poll it, resume its stream or cancel it.

``background_runs``: one row per background response; ``cancel_requested`` is set by
``POST /v1/responses/{id}/cancel`` on whichever replica, and read by the running task;
``heartbeat_at`` (unix seconds) is refreshed by the running task, so a run whose process died is
recognised as abandoned; ``done`` once its final state is stored.
``background_events``: its stream events by ``sequence_number``, for ``starting_after``.
"""

VERSION = 3

SQL = """
CREATE TABLE background_runs (
    response_id TEXT PRIMARY KEY,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    done INTEGER NOT NULL DEFAULT 0,
    heartbeat_at REAL NOT NULL
);

CREATE INDEX background_runs_live ON background_runs (done, heartbeat_at);

CREATE TABLE background_events (
    response_id TEXT NOT NULL,
    sequence_number INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (response_id, sequence_number)
) WITHOUT ROWID
"""

POSTGRES = """
CREATE TABLE background_runs (
    response_id TEXT PRIMARY KEY,
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
    done BOOLEAN NOT NULL DEFAULT FALSE,
    heartbeat_at DOUBLE PRECISION NOT NULL
);

CREATE INDEX background_runs_live ON background_runs (done, heartbeat_at);

CREATE TABLE background_events (
    response_id TEXT NOT NULL,
    sequence_number INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (response_id, sequence_number)
)
"""
