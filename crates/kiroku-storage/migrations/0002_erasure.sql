-- Tenant erasure destroys the tenant's wrapped data key (crypto-shredding).
GRANT DELETE ON data_keys TO kiroku_storage;
