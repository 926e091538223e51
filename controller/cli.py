"""``centerctl``: the command line of the controller.

Every failure a person can cause (a bad site file, a bad setting) ends with a
readable message and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sqlite3
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from pydantic import ValidationError

from controller.clock import SystemClock
from controller.database import DATABASE_FILE
from controller.demo import EXAMPLE_SITE, SimulationOptions, demo, parse_start, simulate
from controller.logs import setup_logging
from controller.report_period import PeriodError, parse_period
from controller.report_sources import read_only_bookings
from controller.reports import Reports
from controller.service import ConfigurationError, ControllerService
from controller.settings import Settings
from controller.site import Site, SiteError
from controller.site_profiles import SiteWithProfiles, load_site_with_profiles
from controller.site_summary import summarize
from controller.timeseries.embedded import TIMESERIES_FILE, HistoryReader
from simulators.faults import FaultPlan
from simulators.scenarios import scenario_choices

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
    if args.command == "simulate":
        return _simulate(args)
    if args.command == "demo":
        return _demo(args)
    if args.command == "report":
        return _report_utilization(args)
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
    simulate = commands.add_parser(
        "simulate",
        help="simulate every device of a site (broker from CENTER_MQTT_URL, "
        "Modbus ports from the site file)",
    )
    simulate.add_argument("--site", type=Path, required=True, help="site file (TOML)")
    _simulation_arguments(simulate)
    demo = commands.add_parser(
        "demo",
        help="the whole center on this machine: embedded broker, simulated devices, "
        "controller and API",
    )
    demo.add_argument(
        "--site", type=Path, default=EXAMPLE_SITE, help="site file (default: the Changbai example)"
    )
    demo.add_argument("--http-port", type=int, help="HTTP port (default CENTER_HTTP_PORT or 8080)")
    demo.add_argument(
        "--http-host", help="HTTP address to listen on (default 127.0.0.1 for the demo)"
    )
    _simulation_arguments(demo)
    report = commands.add_parser(
        "report",
        help="print a report from the data directory (CENTER_DATA_DIR), "
        "whether or not the daemon runs",
    )
    reports = report.add_subparsers(dest="report", metavar="REPORT", required=True)
    utilization = reports.add_parser(
        "utilization", help="room utilization per room for a period of days"
    )
    utilization.add_argument("--site", type=Path, required=True, help="site file (TOML)")
    utilization.add_argument(
        "--from",
        dest="first",
        metavar="DATE",
        required=True,
        help="first day, YYYY-MM-DD in the site's zone",
    )
    utilization.add_argument(
        "--to",
        dest="last",
        metavar="DATE",
        required=True,
        help="last day (inclusive), at most 366 days",
    )
    utilization.add_argument("--csv", action="store_true", help="CSV instead of a table")
    return parser


def _simulation_arguments(parser: argparse.ArgumentParser) -> None:
    names = ", ".join(["auto", *scenario_choices()])
    parser.add_argument(
        "--scenario", default="auto", help=f"one of {names} (default auto: by weekday)"
    )
    parser.add_argument(
        "--speed", type=float, default=1.0, help="simulated seconds per real second (default 1)"
    )
    parser.add_argument("--start", help="simulated time of day to start at, e.g. 08:00")
    parser.add_argument(
        "--faults",
        default="",
        help="e.g. drop=0.05,garbage=0.01,dead=ac-love-room,slow=cabinet-1,"
        "reset=counter-entrance@10m,jam=lock-gym",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def _check(path: Path) -> int:
    try:
        loaded = load_site_with_profiles(path)
    except SiteError as error:
        print(error, file=sys.stderr)
        return EXIT_INVALID
    print(summarize(loaded.site))
    return 0


def _simulation_options(args: argparse.Namespace, site: Site) -> SimulationOptions | str:
    """The options, or the reason they cannot work for ``site``."""
    if args.scenario != "auto" and args.scenario not in scenario_choices():
        names = ", ".join(["auto", *scenario_choices()])
        return f"unknown scenario {args.scenario!r}; choose one of {names}"
    if not args.speed > 0:
        return "--speed must be greater than 0"
    try:
        start = parse_start(args.start) if args.start else None
        faults = FaultPlan.parse(args.faults)
    except ValueError as error:
        return str(error)
    problems = faults.problems(site)
    if problems:
        return "; ".join(problems)
    return SimulationOptions(args.scenario, args.speed, start, faults, args.seed)


def _load_simulation(
    args: argparse.Namespace,
) -> tuple[Settings, SiteWithProfiles, SimulationOptions] | int:
    """Settings, site and options for ``simulate`` and ``demo``, or the exit code."""
    loaded = _load(args.site)
    if isinstance(loaded, int):
        return loaded
    settings, center = loaded
    options = _simulation_options(args, center.site)
    if isinstance(options, str):
        print(f"centerctl {args.command}: {options}", file=sys.stderr)
        return EXIT_CONFIG
    return settings, center, options


def _simulate(args: argparse.Namespace) -> int:
    loaded = _load_simulation(args)
    if isinstance(loaded, int):
        return loaded
    settings, center, options = loaded
    endpoint = settings.mqtt_endpoint()
    if endpoint is None:
        print(
            "centerctl simulate: CENTER_MQTT_URL is not set; point it at the broker "
            "the controller uses, e.g. mqtt://127.0.0.1:1883",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    setup_logging(settings.log_format, settings.log_level)
    prefix = settings.topic_prefix(center.site.site.id)

    async def main(stop: asyncio.Event) -> None:
        await simulate(
            center, endpoint, options, stop, prefix=prefix, ca_file=settings.mqtt_ca_file
        )

    return asyncio.run(_until_signal(main))


def _demo(args: argparse.Namespace) -> int:
    loaded = _load_simulation(args)
    if isinstance(loaded, int):
        return loaded
    settings, center, options = loaded
    overrides: dict[str, object] = {}
    if args.http_port is not None:
        overrides["http_port"] = args.http_port
    if args.http_host is not None:
        overrides["http_host"] = args.http_host
    elif "http_host" not in settings.model_fields_set:
        overrides["http_host"] = "127.0.0.1"  # the demo prints a token: keep it local
    settings = settings.model_copy(update=overrides)
    setup_logging(settings.log_format, settings.log_level)

    async def main(stop: asyncio.Event) -> None:
        await demo(center, settings, options, stop)

    return asyncio.run(_until_signal(main))


async def _until_signal(main: Callable[[asyncio.Event], Awaitable[None]]) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    logger = logging.getLogger("controller")
    try:
        await main(stop)
    except OSError as error:
        logger.error("cannot start: %s", error)
        return EXIT_CONFIG
    logger.info("stopped")
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
    return asyncio.run(_until_signal(service.run))


def _report_utilization(args: argparse.Namespace) -> int:
    loaded = _load(args.site)
    if isinstance(loaded, int):
        return loaded
    settings, center = loaded
    site = center.site
    clock = SystemClock(site.site.zone)
    try:
        first, last = parse_period(
            args.first, args.last, clock.now().date(), names=("--from", "--to")
        )
    except PeriodError as error:
        print(f"centerctl report: {error}", file=sys.stderr)
        return EXIT_INVALID
    data_dir = settings.data_dir
    if not data_dir.is_dir():
        print(
            f"centerctl report: no data directory {data_dir} "
            "(set CENTER_DATA_DIR to the controller's)",
            file=sys.stderr,
        )
        return EXIT_INVALID
    for name in (DATABASE_FILE, TIMESERIES_FILE):
        if not (data_dir / name).exists():
            print(f"centerctl report: {data_dir / name} does not exist yet", file=sys.stderr)
    try:
        with read_only_bookings(data_dir / DATABASE_FILE) as bookings:
            reports = Reports(site, clock, bookings, HistoryReader(data_dir / TIMESERIES_FILE))
            report = reports.utilization_blocking(first, last, clock.now())
    except sqlite3.Error as error:
        print(f"centerctl report: cannot read {data_dir}: {error}", file=sys.stderr)
        return EXIT_INVALID
    text = report.to_csv() if args.csv else report.to_table()
    sys.stdout.buffer.write(text.encode("utf-8"))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
