"""The ``mmassist`` command: one entry point, a sub-command per job.

A user's mistake (an :class:`core.MMAssistError`) is printed as one line on stderr and the
command exits with status 2, without a traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Callable, Sequence

EXIT_USER_ERROR = 2


def set_offline_defaults() -> None:
    """The project's entry points never reach a model hub or send analytics, unless the user says so."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def cmd_plugins(args: argparse.Namespace) -> int:
    """List the encoders every loaded plugin registered, and the plugins that failed."""
    import core

    host = core.Host()
    rows = host.describe()
    failed = [dataclasses.asdict(f) for f in host.failed_plugins]
    if args.json:
        print(json.dumps({"encoders": rows, "failed_plugins": failed}, indent=2))
        return 0
    cols = ("name", "modality", "mime_types", "config", "distribution", "version")
    print(format_table([{c: r[c] for c in cols} for r in rows], cols))
    if host.failed_plugins:
        print(f"\n{len(host.failed_plugins)} plugin(s) failed to load:")
        for f in host.failed_plugins:
            print(f"  {f}")
    return 0


def format_table(rows: list[dict[str, str]], cols: Sequence[str]) -> str:
    """A plain-text table with a header line, columns as wide as their widest cell."""
    widths = {c: max([len(c)] + [len(str(r[c])) for r in rows]) for c in cols}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in cols).rstrip()]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in cols).rstrip() for r in rows]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmassist", description="mmassist: a multimodal, plugin-based assistant SDK")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("plugins", help="list the loaded encoders and any plugin that failed to load")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_plugins)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    set_offline_defaults()
    args = build_parser().parse_args(argv)
    from core.errors import MMAssistError

    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except MMAssistError as e:
        print(f"mmassist {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"mmassist {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
