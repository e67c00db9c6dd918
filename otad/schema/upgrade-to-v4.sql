-- otad state, version 4: failed logins at /enroll, counted per client address (user '') and per
-- user name from that address, in a window that starts with the first failure.
CREATE TABLE login_failures (
    address TEXT NOT NULL,
    "user" TEXT NOT NULL,
    failures INTEGER NOT NULL,
    since REAL NOT NULL,
    PRIMARY KEY (address, "user")
);
CREATE INDEX login_failures_since ON login_failures (since);
