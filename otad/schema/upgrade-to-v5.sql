-- otad state, version 5: the CRLs otad has signed, newest by number; each records how many
-- revocations it lists and the newest revocation time, so a changed list can be noticed.
CREATE TABLE crls (
    number INTEGER PRIMARY KEY,
    this_update REAL NOT NULL,
    next_update REAL NOT NULL,
    revocations INTEGER NOT NULL,
    newest_revocation REAL,
    der BLOB NOT NULL
);
CREATE INDEX certificates_revoked ON certificates (revoked);
