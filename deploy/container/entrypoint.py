#!/usr/bin/env python3
"""Container entry point: `tl2edge serve`, with every flag also settable from the environment.

    tl2edge-entrypoint [FLAG ...]        tl2edge serve <flags from TL2EDGE_*> FLAG ...
    tl2edge-entrypoint --healthcheck     tl2edge health on this container's port (HEALTHCHECK)
    tl2edge-entrypoint predict ...       any other tl2edge command runs unchanged

A flag `--max-batch-size` is read from `TL2EDGE_MAX_BATCH_SIZE`, and so on for every option
`tl2edge serve --help` lists (the names come from its parser, so new flags need no change
here). Flags on the command line win over the environment; an empty variable counts as
unset. On/off flags take 1/true/yes or 0/false/no; repeated or multi-value flags take a
space-separated list. The image sets TL2EDGE_REPOSITORY=/models, TL2EDGE_HOST=0.0.0.0,
TL2EDGE_PORT=8500 and TL2EDGE_METRICS_PORT=9090.

It runs the server in this process (no extra shell or exec), so SIGTERM from the container
runtime reaches the server's own handler and drains it.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from tl2edge.cli import COMMANDS, build_parser, main

PREFIX = "TL2EDGE_"
TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off"}
# Never taken from the environment: they only print and exit.
SKIP = {"help", "version"}


def env_name(option: str) -> str:
    return PREFIX + option.lstrip("-").upper().replace("-", "_")


def _subparser(command: str) -> argparse.ArgumentParser:
    parser = build_parser(command)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[command]
    raise RuntimeError(f"tl2edge has no {command!r} command")


def _given(action: argparse.Action, argv: list[str]) -> bool:
    return any(a == o or a.startswith(o + "=") for o in action.option_strings for a in argv)


def _bool(name: str, value: str) -> bool:
    if value.lower() in TRUE:
        return True
    if value.lower() in FALSE:
        return False
    raise SystemExit(f"error: {name}={value!r}: expected one of 1/true/yes or 0/false/no")


def flags_from_env(
    parser: argparse.ArgumentParser, argv: list[str], environ: dict[str, str]
) -> list[str]:
    """Command-line flags for every option set in `environ` and not already in `argv`."""
    # An option in a mutually exclusive group is skipped when a partner is on the command
    # line: `--model x.onnx` given by hand must beat the image's TL2EDGE_REPOSITORY.
    blocked: set[argparse.Action] = set()
    for group in parser._mutually_exclusive_groups:
        if any(_given(a, argv) for a in group._group_actions):
            blocked.update(group._group_actions)
    out: list[str] = []
    for action in parser._actions:
        longs = [o for o in action.option_strings if o.startswith("--")]
        if not longs or action in blocked or _given(action, argv):
            continue
        option = longs[0]
        if option.startswith("--no-"):  # BooleanOptionalAction lists --x first anyway
            continue
        name = env_name(option)
        if name.removeprefix(PREFIX).lower() in SKIP:
            continue
        value = environ.get(name, "").strip()
        if not value:
            continue
        if isinstance(action, argparse.BooleanOptionalAction):
            out.append(option if _bool(name, value) else "--no-" + option[2:])
        elif action.nargs == 0:  # store_true / store_false / store_const / count
            if _bool(name, value):
                out.append(option)
        elif isinstance(action, argparse._AppendAction):
            for item in shlex.split(value):
                out += [option, item]
        elif action.nargs in ("+", "*") or isinstance(action.nargs, int):
            out += [option, *shlex.split(value)]
        else:
            out += [option, value]
    return out


def healthcheck(environ: dict[str, str]) -> int:
    """`tl2edge health` against this container's own gRPC port.

    TL2EDGE_HEALTH_SERVER overrides the address (default 127.0.0.1:$TL2EDGE_PORT) and
    TL2EDGE_HEALTH_ARGS adds flags, e.g. the CA when the server speaks TLS.
    """
    server = (
        environ.get("TL2EDGE_HEALTH_SERVER") or f"127.0.0.1:{environ.get('TL2EDGE_PORT') or 8500}"
    )
    extra = shlex.split(environ.get("TL2EDGE_HEALTH_ARGS", ""))
    return main(["health", "--server", server, *extra])


def run(argv: list[str], environ: dict[str, str]) -> int:
    if argv[:1] == ["--healthcheck"]:
        return healthcheck(environ)
    if argv and not argv[0].startswith("-") and argv[0] != "serve":
        return main(argv)  # another command: `docker run IMAGE predict --server ...`
    if argv[:1] == ["serve"]:
        argv = argv[1:]
    flags = flags_from_env(_subparser("serve"), argv, environ)
    if flags:
        print(f"tl2edge-entrypoint: from the environment: {shlex.join(flags)}", file=sys.stderr)
    return main(["serve", *flags, *argv])


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:], dict(os.environ)))


__all__ = ["COMMANDS", "env_name", "flags_from_env", "run"]
