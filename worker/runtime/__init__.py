"""The running service: settings, wired services, the Celery app, intake, the rotation function,
the scheduler and the launch/follow helpers."""
