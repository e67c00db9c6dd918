-- otad state, version 2: devices, the certificates otad issues, and phase-3 deliveries.
CREATE TABLE devices (
    udid TEXT PRIMARY KEY,
    "user" TEXT,
    -- the device attributes of its newest phase-2 request, as JSON
    attributes TEXT NOT NULL,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL
);

CREATE TABLE certificates (
    -- lower-case hex, no leading zeros: random 64+ bit serials don't fit SQLite's INTEGER
    serial TEXT PRIMARY KEY,
    -- the device binding; no foreign key, because admin (static) challenges may bind a UDID
    -- that never enrolled over the air
    udid TEXT,
    subject TEXT NOT NULL,
    not_before REAL NOT NULL,
    not_after REAL NOT NULL,
    der BLOB NOT NULL,
    csr BLOB,
    -- the challenge that authorised it (kept as a plain number: challenges are purged)
    challenge_id INTEGER,
    transaction_id TEXT,
    issued REAL NOT NULL,
    revoked REAL,
    revocation_reason TEXT
);
CREATE INDEX certificates_udid ON certificates (udid);

CREATE TABLE deliveries (
    id INTEGER PRIMARY KEY,
    serial TEXT NOT NULL REFERENCES certificates (serial),
    udid TEXT NOT NULL,
    profile_identifier TEXT NOT NULL,
    template TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX deliveries_serial ON deliveries (serial);

-- SCEP requests held for an admin's decision ([scep] approval = manual).
CREATE TABLE scep_requests (
    transaction_id TEXT PRIMARY KEY,
    udid TEXT,
    subject TEXT NOT NULL,
    csr BLOB NOT NULL,
    challenge_id INTEGER,
    status TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'rejected', 'issued')),
    created REAL NOT NULL,
    decided REAL,
    serial TEXT
);
