"""`python -m zirelia_local.train CONFIG`: the whole job, every stage in order.

(The module is named for what the user wants, a trained persona; the training stage itself lives in
`zirelia_local.training`.)
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from zirelia_local.cli import add_skip_checks, configure_logging, run_guarded


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m zirelia_local.train",
        description="Run the whole pipeline for a persona config: dataset, curation, training, critic, report.",
    )
    parser.add_argument("config", type=Path, help="the run's TOML config, e.g. configs/sienna.toml")
    parser.add_argument(
        "--run-dir", type=Path, default=None, help="run directory (default: [run] dir or runs/<trigger_word>)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug logs")
    add_skip_checks(parser)
    args = parser.parse_args(argv)
    configure_logging(args.verbose)

    def action() -> int:
        from zirelia_local.common.config import load_config
        from zirelia_local.pipeline import PIPELINE_STAGES, run_checked, run_pipeline

        config = load_config(args.config, run_dir=args.run_dir)
        run_checked(
            config, PIPELINE_STAGES, run_pipeline, skip_checks=args.skip_checks, command="python -m zirelia_local.train"
        )
        return 0

    return run_guarded(action)


if __name__ == "__main__":
    raise SystemExit(main())
