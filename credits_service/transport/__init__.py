"""Transport: how callers reach the ledger (gRPC today)."""
