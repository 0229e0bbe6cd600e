"""The feedback store: ratings and candidates in SQLite, images content-addressed, export, training pairs."""
