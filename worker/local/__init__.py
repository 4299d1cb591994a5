"""The local stack (``rotator demo``, ``up``, ``databend-local``): needs the ``local`` extra."""
