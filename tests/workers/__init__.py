"""Worker processes the crash and multi-process tests start (and kill)."""
