"""The rotation core: plan -> create connection -> switch -> validate -> (retire).

Pure logic over small interfaces (``worker.core.ports``); imports neither Celery, boto3 nor
databend-driver. Adapters in ``worker/`` implement the ports; ``tasks/`` and the CLI call in here.
"""
