"""The ``basecal`` command line: thin wrappers that parse, call the library and print.

Commands live in their own modules and are imported only when invoked, so ``basecal --help`` stays
fast and a missing optional dependency only affects the command that needs it.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

import click

from ..errors import BasecalError

#: command name -> "module:attribute" (relative to basecal.cli)
COMMANDS = {
    "fit": ("calibration:fit", "Fit a label-free calibrator (DACA) from base and chat scores."),
    "evaluate": ("calibration:evaluate", "Calibration metrics of a score file (needs labels)."),
    "apply": ("calibration:apply", "Apply a saved calibrator to a score file."),
    "demo": ("demo:demo", "Synthetic demo: vanilla / naive / DACA / labelled TS side by side."),
    "datasets": ("datasets:datasets", "List the built-in data sets with their sizes."),
    "score": ("score:score", "Score a model on a data set and write option logits."),
    "run": ("run:run", "The whole job: score both models, fit, evaluate, report."),
    "report": ("report:report", "(Re)build the report of an existing run folder."),
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


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="basecal")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.pass_context
def cli(ctx: click.Context, debug: bool, verbose: int) -> None:
    """basecal: calibrate chat LLMs without labels, using their base model (DACA)."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> int:
    """Entry point: typed errors become one line on stderr and a non-zero exit."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:]) or os.environ.get("BASECAL_DEBUG")
    try:
        rv = cli.main(args=argv, prog_name="basecal", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("basecal: interrupted; finished work is saved, run the same command again to resume", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("basecal: interrupted; finished work is saved, run the same command again to resume", err=True)
        return 130
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except BasecalError as e:
        if debug:
            raise
        click.echo(f"basecal: error: {e}", err=True)
        return e.exit_code
    except MemoryError:
        click.echo("basecal: error: out of memory; lower --batch-size or --limit", err=True)
        return 1
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
