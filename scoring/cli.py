"""The ``scoring`` command line: load config, call the library, print.

Only ``ScoringError`` is caught: it prints ``Error: ...`` and exits with its code (2 for bad
usage, config, model or input; 1 for a failed job). ``SCORING_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from scoring import registry
from scoring.errors import ScoringError

F = TypeVar("F", bound=Callable[..., Any])
SET_HELP = "Override a config key, e.g. --set compute.batch_size=512 (repeatable)."


def _errors(fn: F) -> F:
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ScoringError as exc:
            if os.environ.get("SCORING_DEBUG") == "1":
                raise
            from scoring import redact

            click.echo(f"Error: {redact.text(str(exc))}", err=True)
            _exit(exc.exit_code)
        except KeyboardInterrupt:  # a second Ctrl-C: stopped without the summary
            if os.environ.get("SCORING_DEBUG") == "1":
                raise
            click.echo("interrupted; run again with --mode resume to finish", err=True)
            _exit(130)

    return wrapper  # type: ignore[return-value]


def _exit(code: int) -> None:
    """Exit with ``code`` without Python's finalisation: a worker thread may still be busy (a
    shard abandoned on a stalled store, or mid-run in ONNX Runtime) and Arrow's background
    threads may still be alive — finalising under either aborts the process ("terminate called
    without an active exception", apache/arrow#34314) after the job's outcome was decided.
    Everything is committed by now; the exit handlers (Ray's shutdown, logging) still run when
    no thread is busy."""
    import atexit

    from scoring import threads

    if not threads.busy():
        atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _load(config: str, sets: tuple[str, ...], mode: str | None = None) -> Any:
    from scoring.config_file import load_config

    overrides = list(sets) + ([f"output.mode={mode}"] if mode else [])
    return load_config(config, overrides=overrides)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="scoring")
def cli() -> None:
    """Score ONNX models over Parquet and image datasets on Ray."""


@cli.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option(
    "--address", default=None, help="Ray cluster to join (default: RAY_ADDRESS, else start Ray here)."
)
@click.option(
    "--mode",
    type=click.Choice(["resume", "overwrite", "error"]),
    default=None,
    help="What to do when the output already holds a job (overrides output.mode).",
)
@click.option(
    "--runner",
    type=click.Choice(list(registry.RUNNERS)),
    default=None,
    help="ray: Ray actors (default); local: threads in this process, no Ray (overrides compute.runner).",
)
@_errors
def run(
    config: str, sets: tuple[str, ...], address: str | None, mode: str | None, runner: str | None
) -> None:
    """Run a job with the driver in this process."""
    from scoring.job import interrupted_message, run_job
    from scoring.progress import console_progress
    from scoring.report import summary

    cfg = _load(config, sets + ((f"compute.runner={runner}",) if runner else ()), mode)
    result = run_job(cfg, address=address, echo=click.echo, progress=console_progress(click.echo))
    job = result.record
    click.echo(summary(job, result.records))
    if job.status == "interrupted":
        click.echo(interrupted_message(result), err=True)
        _exit(130)
    if not result.ok:
        from scoring.summary import resume_hint

        click.echo(f"Error: {job.error}", err=True)
        if job.totals.shards_complete < (job.totals.shards_planned or 0):
            click.echo(resume_hint(job), err=True)
        _exit(1)
    _exit(0)


@cli.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--address", required=True, help="Job API address of the cluster, e.g. http://HEAD:8265.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option(
    "--runtime-env",
    "runtime_env",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="A runtime env in Ray's format (YAML or JSON: pip:, conda:, env_vars: ...), merged with ours.",
)
@click.option(
    "--runtime-env-json", default=None, help="The same as a JSON string; its keys win over the file's."
)
@click.option("--no-wait", is_flag=True, help="Print the job id and return without following logs.")
@_errors
def submit(
    config: str,
    address: str,
    sets: tuple[str, ...],
    runtime_env: str | None,
    runtime_env_json: str | None,
    no_wait: bool,
) -> None:
    """Submit the job to a Ray cluster's Job API and follow it."""
    from scoring.submit import load_runtime_env, submit_job

    _load(config, sets)  # fail here, not on the cluster, for a bad config
    env = load_runtime_env(runtime_env, runtime_env_json)
    sys.exit(submit_job(config, address, sets, wait=not no_wait, runtime_env=env, echo=click.echo))


@cli.command()
@click.argument("model_uri")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@_errors
def inspect(model_uri: str, as_json: bool) -> None:
    """Show a model's inputs, outputs, opset, metadata, sha256 and the providers here."""
    from scoring.inspection import format_inspection, inspect_model

    data = inspect_model(model_uri)
    click.echo(json.dumps(data, indent=2) if as_json else format_inspection(data))


@cli.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@_errors
def validate(config: str, sets: tuple[str, ...]) -> None:
    """Check config, model and input as a run would, then score the first rows here; write nothing."""
    from scoring.validate import format_preview, validate

    click.echo(format_preview(validate(_load(config, sets))))


@cli.command()
@click.argument("output_uri")
@click.option(
    "--html",
    "html",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write an HTML page with per-shard timing charts.",
)
@_errors
def report(output_uri: str, html: str | None) -> None:
    """Summarise a finished or running job from its output folder."""
    from scoring.page import write_html
    from scoring.report import load_report, summary

    report = load_report(output_uri)
    click.echo(summary(report.job, report.records))
    if html:
        write_html(html, report)
        click.echo(f"wrote {html}")


@cli.command()
@click.option("--dir", "directory", default="demo", show_default=True, help="Where to put the demo files.")
@click.option(
    "--runner",
    type=click.Choice(list(registry.RUNNERS)),
    default="local",
    show_default=True,
    help="local: threads of this process; ray: a Ray started here.",
)
@_errors
def demo(directory: str, runner: str) -> None:
    """Make a small model and datasets, score them on this machine, print where everything is."""
    from scoring.demo import run_demo

    sys.exit(run_demo(directory, echo=click.echo, runner=runner))


def main() -> None:
    try:
        cli(prog_name="scoring")
    except SystemExit as exc:  # every command's exit, click's own included, skips finalisation
        if exc.code is None or isinstance(exc.code, int):
            _exit(exc.code or 0)
        click.echo(exc.code, err=True)
        _exit(1)
