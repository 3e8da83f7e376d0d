"""The long chaos run, by hand (the CI test is ``test_chaos.py``, with the same code).

    .venv/bin/python tests/chaos/run_long.py --instances 300 --minutes 5

Starts its own Azurite and three workers, spreads the starts over most of the run, SIGKILLs
a random worker every ``--kill-interval`` seconds for ``--minutes``, restarts Azurite once
half-way, then waits for every instance to finish. Prints completions, stuck instances,
wrong outputs, lost events, history problems and duplicate activity executions; exits 1 if
anything but duplicate executions went wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

from tests.chaos.test_chaos import ChaosConfig, format_duplicates, run_chaos  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--minutes", type=float, default=5.0, help="how long the chaos lasts")
    parser.add_argument("--kill-interval", type=float, default=8.0, metavar="S")
    parser.add_argument("--no-azurite-restart", action="store_true")
    parser.add_argument("--completion-timeout", type=float, default=300.0, metavar="S")
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a temp dir")
    args = parser.parse_args()

    duration = args.minutes * 60.0
    config = ChaosConfig(
        instances=args.instances,
        kills=max(1, int(duration / args.kill_interval)),
        kill_interval=args.kill_interval,
        azurite_restart_at=None if args.no_azurite_restart else duration / 2,
        start_spread=duration * 0.8,
        event_delay=20.0,
        completion_timeout=args.completion_timeout,
        seed=args.seed,
    )
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="durable-chaos-"))
    print(f"chaos: {config}\nwork dir (worker output, activity log): {work_dir}", flush=True)
    result = asyncio.run(run_chaos(config, work_dir, verbose=True))
    print(f"\n{result.summary()}")
    print(f"completed: {result.completed} of {len(result.instances)}")
    print(f"stuck: {result.stuck}")
    print(f"lost events: {result.lost_events}")
    print(f"wrong results: {result.wrong}")
    print(f"history problems: {result.history_problems}")
    print(f"activity-log problems: {result.log_problems}")
    print(f"most repeated activities: {format_duplicates(result)}")
    if result.problems():
        print(result.diagnostics)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
