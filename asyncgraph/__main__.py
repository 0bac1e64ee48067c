"""The ``asyncgraph`` command (also ``python -m asyncgraph``).

The parser lives here; the subcommands live in ``_cli`` (``demo`` in ``_demo``) and are
imported when they run, so ``import asyncgraph`` and ``asyncgraph --help`` stay cheap.
Exit statuses: 0 all done, 1 a run left tasks not done, 2 bad input (argparse's own
convention for usage errors), 130 Ctrl-C, 143 SIGTERM (128 + the signal, as a shell
reports a process the signal ended). See ``docs/cli.md``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    from ._demo import main as demo_main

    if args.store is not None and os.path.exists(args.store):
        print(
            f"asyncgraph demo: error: {args.store!r} exists; the demo starts from a new "
            "store: give a path that does not exist yet",
            file=sys.stderr,
        )
        return 2
    return demo_main(store=args.store, progress=not args.no_progress)


def _command(name: str) -> object:
    """The handler ``_cli.<name>``, imported only when that subcommand runs."""

    def handler(args: argparse.Namespace) -> int:
        from . import _cli

        code: int = _cli.guarded(getattr(_cli, name))(args)
        return code

    return handler


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _backend(text: str) -> str:
    """``--backend``'s value, checked by name (the backend is made when the run starts)."""
    name, _, address = text.partition("=")
    if (
        name not in ("dask", "processes", "inline")
        or (address and name != "dask")
        or (name == "dask" and "=" in text and not address)
    ):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a backend: use dask, dask=ADDRESS (such as "
            "dask=tcp://scheduler:8786), processes or inline"
        )
    return text


def _graph_options(sub: argparse.ArgumentParser, *, verb: str, store_help: str) -> None:
    """The options plan and run share: what to run, where, and the rewrites before it."""
    sub.add_argument(
        "target",
        metavar="MODULE:GRAPH",
        nargs="?",  # required; checked in _settle, which also finds it after --reset a b
        help="MODULE is a module name or a .py file; GRAPH an asyncgraph.Graph in it, or a "
        "function without arguments that returns one (e.g. jobs/nightly.py:graph)",
    )
    sub.add_argument("--store", required=True, metavar="STORE", help=store_help)
    sub.add_argument(
        "--force",
        action="store_true",
        help="go on although the store holds tasks this graph lacks (renamed or removed "
        "tasks, or a subgraph)",
    )
    sub.add_argument(
        "--reset-failed",
        action="store_true",
        help=f"{verb} failed, skipped and cancelled tasks and their descendants again",
    )
    sub.add_argument(
        "--reset",
        nargs="+",
        action="extend",
        default=[],
        metavar="NAME",
        help=f"{verb} these tasks and their descendants again, even if done",
    )
    sub.add_argument(
        "--mark-done",
        nargs="+",
        action="extend",
        default=[],
        metavar="NAME[=JSON]",
        help="take these tasks as done, with the result they have, or the JSON value "
        "given (NAME=null passes None); a task marked with no result fails the tasks that "
        "take it (MissingResultError)",
    )


def _store_argument(sub: argparse.ArgumentParser) -> None:
    """STORE for the commands that read only a store: positional, or ``--store`` as in
    ``plan`` and ``run`` (a user who has just typed ``run --store s.db`` types it again)."""
    sub.add_argument("store", metavar="STORE", nargs="?", help="a store file a run wrote")
    sub.add_argument(
        "--store", dest="store_option", metavar="STORE", help="the same, given as an option"
    )
    # ``status --store s.db jobs.py:graph``: a graph given out of habit, named in the error.
    sub.add_argument("extra", nargs="*", help=argparse.SUPPRESS)


#: What a MODULE:GRAPH looks like: a module name or path, a colon, a dotted attribute.
_TARGET = re.compile(r"[^=\s]+:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")


def _settle(args: argparse.Namespace, argv: list[str]) -> None:
    """The checks argparse cannot make: where STORE and MODULE:GRAPH went.

    ``--reset`` and ``--mark-done`` take every name that follows them, so ``run --store
    s.db --reset db jobs.py:graph`` would leave MODULE:GRAPH empty with the graph read as
    a task name: when the last word of the command line is such a name and looks like
    MODULE:GRAPH, it is the graph.
    """
    sub: argparse.ArgumentParser | None = getattr(args, "parser", None)
    if sub is None:  # demo
        return
    if hasattr(args, "store_option"):
        if args.store is not None and args.store_option is not None:
            if _TARGET.fullmatch(args.store) and not os.path.exists(args.store):
                args.extra.insert(0, args.store)
            elif args.store != args.store_option:
                sub.error(
                    f"two stores given, {args.store!r} and --store {args.store_option!r}: give one"
                )
            args.store = args.store_option
        elif args.store is None:
            args.store = args.store_option
        if args.store is None:
            sub.error(f"the store is missing: asyncgraph {args.command} STORE")
        if args.extra:
            words = " ".join(args.extra)
            if all(_TARGET.fullmatch(w) for w in args.extra):
                sub.error(f"{args.command} reads only the store and takes no graph: drop {words}")
            sub.error(f"unrecognized arguments: {words}")
        return
    if not hasattr(args, "target") or args.target is not None:
        return
    last = argv[-1] if argv else None
    for names in (args.mark_done, args.reset):
        if last is not None and names and names[-1] == last and _TARGET.fullmatch(last):
            args.target = names.pop()
            if not names:
                option = "--reset" if names is args.reset else "--mark-done"
                sub.error(f"{option} needs at least one task name before MODULE:GRAPH")
            return
    sub.error(
        "MODULE:GRAPH is missing (such as jobs/nightly.py:graph); --reset and --mark-done "
        "take every name that follows them, so give MODULE:GRAPH first or last"
    )


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="asyncgraph",
        description="Run dependency graphs of functions and coroutines, and inspect, "
        "repair and resume their runs recorded in a store.",
        epilog="exit status: 0 all done, 1 a run left tasks failed, skipped or cancelled, "
        "2 bad input (the store is left as it was), 130 interrupted, 143 terminated (SIGTERM). "
        "See docs/cli.md.",
    )
    parser.add_argument("--version", action="version", version=f"asyncgraph {__version__}")
    commands = parser.add_subparsers(title="commands", dest="command", required=True)

    status = commands.add_parser(
        "status",
        help="each task's latest state in a store, the last run's marked",
        description="Show every task's latest record in STORE (status, attempts, duration, "
        "the run that wrote it, the error), marking the tasks the last run wrote. Reads "
        "the store only; the graph's code is not needed.",
    )
    _store_argument(status)
    status.add_argument(
        "--failed", action="store_true", help="only failed tasks, with their tracebacks"
    )
    status.add_argument("--json", action="store_true", help="print a JSON object instead")
    status.set_defaults(handler=_command("status"), parser=status)

    plan = commands.add_parser(
        "plan",
        help="what a run would do with each task, and why",
        description="Show, for each task, what `asyncgraph run` with the same options would "
        "do (run, reuse a stored result, or keep a failure) and why. Writes nothing.",
    )
    _graph_options(
        plan, verb="plan to run", store_help="the store file (a missing one reads as empty)"
    )
    plan.add_argument("--json", action="store_true", help="print a JSON object instead")
    plan.set_defaults(handler=_command("plan"), parser=plan)

    run = commands.add_parser(
        "run",
        help="run a graph on a store, reusing what is done there",
        description="Load MODULE:GRAPH's state from STORE, apply --reset-failed, --reset "
        "and --mark-done in that order, run what is pending and print a summary. Failed "
        "tasks stay failed unless --reset-failed (or --reset) says to run them again.",
        epilog="exit status: 0 every task done, 1 a task failed, was skipped or cancelled, "
        "2 bad input (the store is left as it was), 130 interrupted, 143 terminated by SIGTERM "
        "(running tasks are recorded as cancelled either way).",
    )
    _graph_options(run, verb="run", store_help="the store file (created if missing)")
    run.add_argument(
        "--cpu-workers", type=_positive, metavar="N", help="worker processes (default: CPUs)"
    )
    run.add_argument(
        "--max-io", type=_positive, metavar="N", help="IO tasks at once (default: no cap)"
    )
    run.add_argument("--progress", action="store_true", help="show progress while running")
    run.add_argument(
        "--backend",
        type=_backend,
        metavar="dask[=ADDRESS]|processes|inline",
        help="where CPU tasks run: a Dask cluster (a local one, or the scheduler at "
        "ADDRESS), a process pool started for the command, or the calling thread "
        "(default: worker processes of the run's own)",
    )
    run.add_argument(
        "--dask-eager",
        action="store_true",
        help="with --backend dask: send a CPU task whose inputs are CPU tasks to the cluster "
        "with their futures before they finish (DaskBackend(eager=True)); a run with a store, "
        "as every command's is, sends nothing ahead, so this changes nothing here yet",
    )
    run.add_argument(
        "--dask-capacity",
        type=_positive,
        metavar="N",
        help="with --backend dask: CPU tasks of the run in flight on the cluster at most "
        "(DaskBackend(capacity=N); default: 32 per worker thread on a local cluster, no "
        "cap at an ADDRESS)",
    )
    run.set_defaults(handler=_command("run"), parser=run)

    history = commands.add_parser(
        "history",
        help="every run recorded in a store",
        description="List every run in STORE, oldest first: start, duration, how it "
        "ended and its task counts.",
    )
    _store_argument(history)
    history.add_argument("--json", action="store_true", help="print a JSON object instead")
    history.set_defaults(handler=_command("history"), parser=history)

    demo = commands.add_parser(
        "demo",
        help="a night and a morning: a mixed IO/CPU graph fails, then is recovered",
        description=(
            "Run a graph of IO coroutines, a thread and CPU tasks in 2 worker processes, "
            "with a store. One task fails (its database is down) and its descendants are "
            "skipped, while an independent branch finishes. Then the database comes back: "
            "the stored state is loaded, the plan printed, and only the failed task and "
            "what it skipped run again. Exits 0: the failure is the point of the demo."
        ),
    )
    demo.add_argument(
        "--store",
        metavar="STORE",
        help="keep the store in this file (default: a temporary file, removed at the end); "
        "the file must not exist yet",
    )
    demo.add_argument("--no-progress", action="store_true", help="draw no progress bar")
    demo.set_defaults(handler=_demo)
    for sub in (plan, run):  # MODULE:GRAPH is required although argparse takes it as "?"
        usage = sub.format_usage().removeprefix("usage: ").rstrip()
        sub.usage = usage.replace("[MODULE:GRAPH]", "MODULE:GRAPH").replace(sub.prog, "%(prog)s")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``asyncgraph`` and ``python -m asyncgraph``; returns the exit code."""
    from ._exceptions import Terminated

    words = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(words)
    _settle(args, words)
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        # run_sync has already recorded the running tasks as cancelled.
        print(f"asyncgraph {args.command}: interrupted", file=sys.stderr)
        return 130
    except Terminated as exc:
        # SIGTERM (docker stop, systemd) during run_sync: cancelled and cleaned up as
        # for Ctrl-C; 143 is what a supervisor expects of a process SIGTERM stopped.
        print(
            f"asyncgraph {args.command}: terminated by SIGTERM; running tasks were "
            "recorded as cancelled",
            file=sys.stderr,
        )
        return int(exc.code) if isinstance(exc.code, int) else 143
    except BrokenPipeError:
        # `asyncgraph status s.db --json | head`: the reader left; say nothing more.
        # (Python's recipe: point stdout at devnull so the flush at exit cannot fail.)
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return code


if __name__ == "__main__":
    raise SystemExit(main())
