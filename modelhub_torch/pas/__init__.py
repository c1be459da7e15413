"""Parameter Archival Store: pure tensor codecs and storage-plan logic (no repository I/O)."""
