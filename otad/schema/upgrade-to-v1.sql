-- otad state, version 1: one-time challenges and the event log.
CREATE TABLE challenges (
    id INTEGER PRIMARY KEY,
    -- SHA-256 of the token: the token itself is never stored.
    digest BLOB NOT NULL UNIQUE,
    -- enroll: minted by /enroll, bound to a user; scep: minted in phase 2, bound to a UDID;
    -- static: created by an admin for non-OTA SCEP clients.
    kind TEXT NOT NULL CHECK (kind IN ('enroll', 'scep', 'static')),
    bound_to TEXT,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    uses_left INTEGER NOT NULL CHECK (uses_left >= 0),
    last_used REAL
);
CREATE INDEX challenges_expires ON challenges (expires);

CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    outcome TEXT NOT NULL,
    "user" TEXT,
    udid TEXT,
    serial TEXT,
    reason TEXT
);
CREATE INDEX events_at ON events (at);
