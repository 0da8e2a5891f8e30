"""`backtrack-view`: watch a backtracking model write and erase, live in the terminal.

    backtrack-view "123+456=" --url http://127.0.0.1:8000 --max-new-tokens 16
    backtrack-view "123+456=" --do-sample --temperature 1.5 --seed 7 | less   # one line per event

On a terminal the text grows in place, each deleted token is struck through and then erased,
and a summary line gives tokens, backtracks and time. When output is not a terminal (a pipe, a
file) every event is printed on its own line instead. Exit status: 0 done, 1 server or
connection error, 130 interrupted (the connection is closed, which cancels the generation).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO, cast

from backtrack.params import describe
from clients.client import DEFAULT_URL, BacktrackClient, Parameters
from clients.errors import BacktrackClientError
from clients.events import DoneEvent
from clients.render import LineRenderer, Summary, TerminalRenderer

API_KEY_ENV = "BACKTRACK_API_KEY"

_JSON_TYPES: dict[str, type] = {"integer": int, "number": float, "string": str}


def add_parameter_flags(
    parser: argparse.ArgumentParser, parameters: list[dict[str, Any]] | None = None
) -> list[str]:
    """One flag per generation parameter of the vocabulary (`backtrack.params.describe`), named
    after the field (`--max-new-tokens`); returns the field names. Flags left out are not sent,
    so the server's defaults apply."""
    group = parser.add_argument_group("generation parameters (default: the server's)")
    names = []
    for parameter in describe() if parameters is None else parameters:
        name, kind = parameter["name"], parameter["type"]
        flag, text = f"--{name.replace('_', '-')}", _help(parameter)
        if kind == "boolean":
            group.add_argument(flag, action=argparse.BooleanOptionalAction, help=text)
        elif kind == "array":
            group.add_argument(flag, action="append", help=f"{text} (repeatable)")
        elif "choices" in parameter:
            group.add_argument(flag, choices=parameter["choices"], help=text)
        else:
            group.add_argument(flag, type=_JSON_TYPES[kind], help=text)
        names.append(name)
    return names


def _help(parameter: dict[str, Any]) -> str:
    return parameter["description"].replace("%", "%%")


@dataclass(frozen=True)
class ViewerOptions:
    prompt: str
    url: str
    api_key: str | None
    timeout: float
    parameters: Parameters
    strike_seconds: float
    plain: bool


def sampling_asked(given: dict[str, Any]) -> bool:
    """TGI's rule (`do_sample or has_warpers`): a temperature other than 1, top_k or top_p below
    1 means sampling, so `--temperature 1.5` alone samples rather than staying greedy."""
    return (
        given.get("temperature", 1.0) != 1.0
        or given.get("top_k") is not None
        or given.get("top_p", 1.0) < 1.0
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="backtrack-view", description="Stream a generation and watch its deletions live."
    )
    parser.add_argument("prompt", help="the prompt; '-' reads it from standard input")
    parser.add_argument(
        "--url", default=DEFAULT_URL, help=f"server address (default {DEFAULT_URL})"
    )
    parser.add_argument("--api-key", help=f"bearer key (default: ${API_KEY_ENV})")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait per chunk")
    parser.set_defaults(parameter_names=add_parameter_flags(parser))
    parser.add_argument(
        "--strike-seconds",
        type=float,
        default=0.3,
        help="how long a deleted token stays struck through before it is erased",
    )
    parser.add_argument(
        "--plain", action="store_true", help="one line per event even on a terminal"
    )
    return parser


def parse_options(argv: list[str] | None, stdin: TextIO) -> ViewerOptions:
    args = build_parser().parse_args(argv)
    names = args.parameter_names
    given = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    if "do_sample" not in given and sampling_asked(given):
        given["do_sample"] = True  # TGI's rule, which the server applies too
    return ViewerOptions(
        prompt=stdin.read() if args.prompt == "-" else args.prompt,
        url=args.url,
        api_key=args.api_key or os.environ.get(API_KEY_ENV),
        timeout=args.timeout,
        parameters=cast(Parameters, given),  # flags left out take the server's defaults
        strike_seconds=args.strike_seconds,
        plain=args.plain,
    )


def view(options: ViewerOptions, out: TextIO) -> DoneEvent:
    """Stream one generation onto `out`; returns its done event."""
    renderer: TerminalRenderer | LineRenderer
    if out.isatty() and not options.plain:
        width = shutil.get_terminal_size().columns
        renderer = TerminalRenderer(out, width, strike_seconds=options.strike_seconds)
    else:
        renderer = LineRenderer(out)
    started = time.perf_counter()
    with BacktrackClient(options.url, api_key=options.api_key, timeout=options.timeout) as client:
        renderer.start(options.prompt)
        for update in client.stream(options.prompt, **options.parameters):
            renderer.update(update)
            if isinstance(update.event, DoneEvent):
                renderer.finish(Summary.of(update.event, time.perf_counter() - started))
                return update.event
    raise AssertionError("stream() returns only after a done event")


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv, sys.stdin)
    try:
        view(options, sys.stdout)
    except BacktrackClientError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
