"""Every retry budget of databend-rotator, one layer each, in one place (the README repeats them).

A statement is tried at most STEP_ATTEMPTS times inside one step (tenacity, transient errors
only); a task whose step gave up on a transient error is run again at most TASK_RETRIES more
times (Celery, declared once on the base task); then the object is recorded failed. A batch
task counts its retries since it last recorded an object: one that finished some of its objects
before the error starts its budget again (so a batch of many objects is not failed by errors
that each cost it one retry; it ends, since each such retry recorded an object). So one
statement is sent at most ``worst_case_statement_attempts()`` = 4 x 6 = 24 times per object,
and each of those is bounded in time by ROTATOR_STATEMENT_TIMEOUT (the driver's own re-sends of
a timed-out request happen inside that bound, not on top of it). A single AWS API call is tried
ROTATOR_AWS_MAX_ATTEMPTS times by botocore's standard mode and is not retried by a step.

A wait for another run's lock is not an error budget: LockBusy carries its own delay and count.
"""

from __future__ import annotations

# Inside a step (tenacity; worker/flow/rotation.py RetryPolicy): attempts per statement and the
# exponential wait with jitter between them, in seconds.
STEP_ATTEMPTS = 4
STEP_INITIAL_WAIT = 0.2
STEP_MAX_WAIT = 5.0

# A whole task (Celery; worker/runtime/celery_app.py RotatorTask): retries after the first run,
# and the backoff 2 s, 4 s, 8 s ... capped at 60 s, with full jitter.
TASK_RETRIES = 5
TASK_BACKOFF = 2
TASK_BACKOFF_MAX = 60

# Waiting for the secret's lock (LockBusy): every 2 s for about half an hour.
LOCK_WAIT_SECONDS = 2.0
LOCK_WAIT_RETRIES = 900

# A notification (tasks/service.py): 5 s doubling to 300 s, 10 retries, about half an hour.
DELIVERY_RETRIES = 10
DELIVERY_BACKOFF = 5
DELIVERY_BACKOFF_MAX = 300


def worst_case_statement_attempts() -> int:
    """How many times one statement of one object can be sent before the object is failed."""
    return STEP_ATTEMPTS * (TASK_RETRIES + 1)
