"""The ``refcal`` command line: thin wrappers that parse, call the library and print.

Commands live in their own modules and are imported only when invoked, so ``refcal --help`` stays
fast and a missing optional dependency only affects the command that needs it.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import warnings

import click

from .. import __version__
from ..errors import RefcalError, exit_code_of

#: command name -> "module:attribute" (relative to refcal.cli)
COMMANDS = {
    "fit": ("calibration:fit", "Fit a label-free calibrator (DACA) from base and chat scores."),
    "evaluate": ("calibration:evaluate", "Calibration metrics of a score file (needs labels)."),
    "apply": ("calibration:apply", "Apply a saved calibrator to a score file."),
    "demo": ("demo:demo", "Synthetic demo: vanilla / naive / DACA / labelled TS side by side."),
    "datasets": ("datasets:datasets", "List the built-in data sets with their sizes."),
    "score": ("score:score", "Score a model on a data set and write option logits."),
    "run": ("run:run", "The whole job: score both models, fit, evaluate, report."),
    "report": ("report:report", "(Re)build the report of an existing run folder."),
    "serve": ("serve:serve", "OpenAI-compatible proxy adding calibrated confidence to a chat model's answers."),
    "monitor": ("monitor:monitor", "Label-free drift of a served calibrator from the proxy's monitoring log."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        target, _ = COMMANDS[name]
        mod_name, attr = target.split(":")
        mod = importlib.import_module(f"{__name__}.{mod_name}")
        return getattr(mod, attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_) for name, (_, help_) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


#: shown at the end of ``refcal --help``; :func:`main` implements exactly these
EXIT_CODES = ("Exit codes (every command): 0 success; 2 bad input or usage: an option, a file's content or a path "
              "that does not exist (the one-line message says what to fix); 1 the operating system refused "
              "(permission denied, read-only file system, disk full) or an internal error; 130 interrupted "
              "(Ctrl-C: finished work is kept, rerun the same command to resume).")


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES)
@click.version_option(version=__version__, prog_name="refcal")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.pass_context
def cli(ctx: click.Context, debug: bool, verbose: int) -> None:
    """refcal: calibrate chat LLMs without labels, using their base model (DACA)."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # library warnings (e.g. a temperature at its bound) become one log line, not file:line + source
    warnings.showwarning = _warning_to_log


def _warning_to_log(message, category, filename, lineno, file=None, line=None) -> None:
    logging.getLogger("refcal").warning("%s: %s", category.__name__, str(message).replace("\n", " "))


def main(argv: list[str] | None = None) -> int:
    """Entry point: every failure becomes one line on stderr and a non-zero exit, never a traceback.

    Exit codes (:func:`refcal.errors.exit_code_of`): 0 success, 2 bad input or usage (:class:`RefcalError`,
    click usage errors), 1 the operating system refused (permission denied, disk full: also when a typed
    error wraps it) or an internal error, 130 interrupted (Ctrl-C).
    ``--debug`` (or ``REFCAL_DEBUG=1``) re-raises instead, to show the traceback.
    """
    debug = "--debug" in (argv if argv is not None else sys.argv[1:]) or os.environ.get("REFCAL_DEBUG")
    try:
        rv = cli.main(args=argv, prog_name="refcal", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        # click turns Ctrl-C into Abort in non-standalone mode; a bare KeyboardInterrupt can still
        # arrive before click's own handler is entered
        _error("interrupted; finished work is saved, run the same command again to resume", prefix="refcal")
        return 130
    except click.exceptions.NoArgsIsHelpError as e:
        e.show()  # plain `refcal`: the help text is the useful answer
        return e.exit_code
    except click.UsageError as e:
        path = e.ctx.command_path if e.ctx is not None else "refcal"
        _error(f"{e.format_message().rstrip('.')}; see `{path} --help`", prefix=f"{path}: error")
        return e.exit_code
    except click.ClickException as e:
        _error(e.format_message())
        return e.exit_code
    except RefcalError as e:
        if debug:
            raise
        _error(str(e))
        return exit_code_of(e)
    except MemoryError:
        _error("out of memory; use less data at once (--limit, --batch-size, or fewer questions)")
        return 1
    except OSError as e:
        if debug:
            raise
        where = f"{e.filename}: " if e.filename else ""
        _error(f"{where}{e.strerror or e}; check the path, its permissions and the free disk space")
        return exit_code_of(e)
    except Exception as e:
        if debug:
            raise
        _error(f"internal error ({type(e).__name__}: {e}); rerun with --debug for the traceback and "
               "please report it", prefix="refcal")
        return 1
    return rv if isinstance(rv, int) else 0


def _error(message: str, *, prefix: str = "refcal: error") -> None:
    """Print ``prefix: message`` as exactly one line on stderr (embedded newlines are folded)."""
    click.echo(f"{prefix}: {' '.join(str(message).split())}", err=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
