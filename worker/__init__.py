"""databend-rotator: domain, flow, adapters, observe, runtime, cli and local (see README.md)."""
