-- otad state, version 6: otad's own keys and certificates (the files of certs/), for several
-- otad instances on one PostgreSQL database: the first to start writes them, every instance
-- writes them into its own certs/, a renewal bumps the generation and reaches the others.
-- The table stays empty on SQLite, where certs/ beside the database is the only copy.
CREATE TABLE ca_files (
    name TEXT PRIMARY KEY,
    content BLOB NOT NULL,
    -- the generation that last wrote this file: MAX(generation) changes when any file does
    generation INTEGER NOT NULL,
    updated REAL NOT NULL
);
