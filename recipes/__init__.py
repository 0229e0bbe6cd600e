"""How shipped models were built: scripts only those builds use."""
