"""Celery task modules: unpack ids, bind log context, call the core, map errors to retry/fail."""
