"""Credits: the ledger (allowances, periods, holds, settlements) and the admin policy over it."""
