"""Worker entry points and the one place Temporal clients and workers are configured."""
