"""Chaos scenarios over the core (issue 10), as many as asked for.

Each scenario is a seeded schedule (tests/chaos.py): new secret versions and their events,
duplicate and late events, late redeliveries of tasks, key rotations, aborts and resumes at random
points (some while a batch runs), runs' objects switched in batches of 1 to several, a Redis flush
now and then, worker crashes at step boundaries (between two objects of a batch, too) and 20 %
transient Databend / S3 / IAM faults; in 2 scenarios of 5 the operator also migrates objects to
a connection of its own, pauses, resumes and rolls migrations back. The invariants are checked
after every step: no table on a deleted key; no key deleted or deactivated while in use; no
object moved onto a key of the secret that is inactive or deleted as the move commits; nothing
moved behind the version AWSCURRENT held when the newest run started (nor, by a rollback, onto a
key no live version holds); every run final or flagged within its bound; no migration shown
rolled back in full with an object still switched by it.

    python benchmarks/chaos.py --scenarios 1000 --seed 0
    python benchmarks/chaos.py --scenarios 1 --seed 17 --trace      # replay one seed in full

Prints the scenarios run, the faults injected, the violations per invariant and, for the first
failure of each kind, its seed and the trace up to it. Exits 1 on any violation.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", type=int, default=300, help="how many (default 300)")
    parser.add_argument("--seed", type=int, default=0, help="the first seed (default 0)")
    parser.add_argument("--mask", choices=("legacy", "current"), default="legacy")
    parser.add_argument("--fault-rate", type=float, default=0.2)
    parser.add_argument("--steps", type=int, default=50, help="random actions per scenario")
    parser.add_argument(
        "--migrations",
        choices=("drawn", "always", "never"),
        default="drawn",
        help="the operator migrates too: in 2 scenarios of 5 (drawn, the default), in every one, "
        "or in none",
    )
    parser.add_argument("--trace", action="store_true", help="print every scenario's whole trace")
    parser.add_argument("--quiet", action="store_true", help="no traces of failures")
    args = parser.parse_args()

    logging.getLogger("rotator").setLevel(logging.ERROR)  # one retry log line per injected fault
    from tests.chaos_schedule import ChaosSettings, Summary, run_scenario

    migrations = {"drawn": None, "always": True, "never": False}[args.migrations]
    settings = ChaosSettings(
        steps=args.steps, fault_rate=args.fault_rate, mask=args.mask, migrations=migrations
    )
    summary = Summary()
    started = time.perf_counter()
    for seed in range(args.seed, args.seed + args.scenarios):
        result = run_scenario(seed, settings)
        summary.add(result)
        if args.trace:
            print("\n".join(result.trace + [str(v) for v in result.violations] + result.unexpected))
            print()
    elapsed = time.perf_counter() - started
    print(
        f"seeds {args.seed}..{args.seed + args.scenarios - 1}, mask {args.mask}, "
        f"fault rate {args.fault_rate:.0%}, {args.steps} steps + drain per scenario, "
        f"migrations {args.migrations}"
    )
    print(summary.report(traces=not (args.quiet or args.trace)))
    print(f"time: {elapsed:.1f} s ({1000 * elapsed / max(1, args.scenarios):.1f} ms per scenario)")
    return 1 if summary.violations or summary.unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
