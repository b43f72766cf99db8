"""Observability: progress of long stages (:mod:`.progress`), run loggers (:mod:`.loggers`)."""
