"""``centerctl``: the command line of the controller.

Every failure a person can cause (a bad site file, a bad setting) ends with a
readable message and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from controller.clock import SystemClock
from controller.logs import setup_logging
from controller.service import ConfigurationError, ControllerService
from controller.settings import Settings
from controller.site import SiteError
from controller.site_profiles import SiteWithProfiles, load_site_with_profiles
from controller.site_summary import summarize

EXIT_INVALID = 1
EXIT_CONFIG = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_CONFIG
    if args.command == "check":
        return _check(args.file)
    if args.command == "run":
        return _run(args.site)
    parser.error(f"unknown command {args.command}")
    return EXIT_CONFIG


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="centerctl", description="Controller for a community service center."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    check = commands.add_parser("check", help="validate a site file and describe it")
    check.add_argument("file", type=Path, help="site file (TOML)")
    run = commands.add_parser("run", help="run the controller daemon")
    run.add_argument("--site", type=Path, required=True, help="site file (TOML)")
    return parser


def _check(path: Path) -> int:
    try:
        loaded = load_site_with_profiles(path)
    except SiteError as error:
        print(error, file=sys.stderr)
        return EXIT_INVALID
    print(summarize(loaded.site))
    return 0


def _load(site_path: Path) -> tuple[Settings, SiteWithProfiles] | int:
    try:
        settings = Settings()
    except ValidationError as error:
        # Never echo the offending value: it may be a password or a token.
        print("invalid settings:", file=sys.stderr)
        for detail in error.errors(include_url=False, include_input=False):
            # Only the setting's name: deeper path parts can be API tokens (dict keys).
            name = "CENTER_" + str(detail["loc"][0]).upper() if detail["loc"] else "settings"
            message = detail["msg"].removeprefix("Value error, ")
            print(f"  {name}: {message}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        loaded = load_site_with_profiles(site_path)
    except SiteError as error:
        print(error, file=sys.stderr)
        return EXIT_INVALID
    return settings, loaded


def _run(site_path: Path) -> int:
    loaded = _load(site_path)
    if isinstance(loaded, int):
        return loaded
    settings, center = loaded
    site = center.site
    setup_logging(settings.log_format, settings.log_level)
    try:
        service = ControllerService(
            settings, site, SystemClock(site.site.zone), profiles=center.profiles
        )
    except ConfigurationError as error:
        print(f"centerctl run: {error}", file=sys.stderr)
        return EXIT_CONFIG
    return asyncio.run(_serve(service, settings.shutdown_timeout))


async def _serve(service: ControllerService, shutdown_timeout: float) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    logger = logging.getLogger("controller")
    try:
        await service.run(stop)
    except OSError as error:
        logger.error("cannot start: %s", error)
        return EXIT_CONFIG
    logger.info("stopped")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
