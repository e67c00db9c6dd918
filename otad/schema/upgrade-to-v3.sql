-- otad state, version 3: an admin can revoke a challenge before it is used up or expires.
ALTER TABLE challenges ADD COLUMN revoked REAL;
