-- otad state, version 7: SCEP looks certificates up by transaction ID (a retried PKCSReq, a
-- CertPoll) on every request; without an index each lookup read the whole certificates table,
-- so a PKCSReq cost more the more certificates otad had issued.
CREATE INDEX certificates_transaction ON certificates (transaction_id, issued);
