"""The `memotune` command line: run, plan, tune, cache, bench.

Bad input (config field, data file, store URL) ends in one line on stderr that
names it and exit code 2, before anything is written to the store.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from flows.home import memotune_home

if TYPE_CHECKING:
    from flows.run_records import StageRun, StudyResult

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Memoization-aware tuning of multi-stage fine-tuning pipelines.")
cache_app = typer.Typer(no_args_is_help=True, help="Inspect and clean the artifact store.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks that print tables.")
app.add_typer(cache_app, name="cache")
app.add_typer(bench_app, name="bench")
server_app = typer.Typer(no_args_is_help=True, help="The local Prefect server memotune starts on first use.")
app.add_typer(server_app, name="server")

out = Console()
err = Console(stderr=True)

DEFAULT_STORE = memotune_home() / "store"
ConfigArg = Annotated[str | None, typer.Argument(help="Pipeline YAML (default: the built-in offline example).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override: stage.param=value (repeatable).")]
StoreOpt = Annotated[str | None, typer.Option("--store", help="Store URL (file://, s3://, memory://); default $MEMOTUNE_STORE or ~/.memotune/store.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
LocksOpt = Annotated[str | None, typer.Option("--locks", help="Stage locks: 'file' (one host) or redis://host:port/db (several hosts); default $MEMOTUNE_LOCKS or file.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="On failure, show full tracebacks (Prefect's and memotune's).")]


def store_url(store: str | None) -> str:
    return store or os.environ.get("MEMOTUNE_STORE") or str(DEFAULT_STORE)


def fail(message: str) -> NoReturn:
    """One line on stderr, exit 2."""
    fail_line(message)
    raise typer.Exit(2)


def fail_line(message: str) -> None:
    """'error: <message>' on one line of stderr. Plain text: never read as rich markup
    (a URL or a value may hold "[...]"), line breaks and control characters escaped."""
    from flows.validation import one_line

    err.print(Text.assemble(("error:", "bold red"), " ", one_line(message)),
              highlight=False, soft_wrap=True)


def _user_errors() -> tuple[type[BaseException], ...]:
    from cache.keys import DataSourceError
    from cache.store import StoreError
    from flows.config import ConfigError

    return (ConfigError, StoreError, DataSourceError)


def _prepare(config: str | None, overrides: list[str] | None, store: str | None,
             check: Callable[[Any], None] | None = None):
    """Validate config (and `check` it), data sources and store, in that order; raises
    user errors. The store is opened (and a local one created) only once the rest is valid.
    """
    from cache.store import ArtifactStore
    from flows.config import load_config
    from flows.plan import plan, stage_keys
    from flows.validation import check_sources

    cfg = load_config(config, overrides or [])
    if check is not None:
        check(cfg)
    check_sources(cfg)  # data files are files; model/tokenizer/dataset names resolve
    keys = stage_keys(cfg)  # fingerprints data files
    st = ArtifactStore.open(store_url(store))
    return cfg, st, plan(cfg, st, keys)


def _locks(locks: str | None) -> str:
    """The lock setting (--locks, else $MEMOTUNE_LOCKS, else file), checked."""
    from cache.lock_setting import check_lock_setting

    try:
        return check_lock_setting(locks or os.environ.get("MEMOTUNE_LOCKS") or "file")
    except ValueError as e:
        fail(str(e))


def fail_run(exc: BaseException, debug: bool) -> NoReturn:
    """A failure during a run: one line naming the stage and the cause, exit 1."""
    if debug:
        raise exc
    from flows.console import failure_line

    err.print(Text.assemble(("error:", "bold red"), " ", failure_line(exc)),
              highlight=False, soft_wrap=True)
    raise typer.Exit(1)


@app.command()
def run(config: ConfigArg = None, set_: SetOpt = None, store: StoreOpt = None,
        as_json: JsonOpt = False, locks: LocksOpt = None, debug: DebugOpt = False) -> None:
    """Run the pipeline once, reusing every cached stage."""
    lock_setting = _locks(locks)
    try:
        cfg, st, _ = _prepare(config, set_, store)
    except _user_errors() as e:
        fail(str(e))
    _connect_prefect()
    from flows.pipeline import pipeline_flow
    from flows.run_records import RunSummary

    bars = _console_for_run(as_json, debug)
    try:
        summary = pipeline_flow(cfg.model_dump(mode="json"), st.url, progress=bars,
                                locks=lock_setting)
    except Exception as e:
        fail_run(e, debug)
    if as_json:
        sys.stdout.write(json.dumps(RunSummary.model_validate(summary).model_dump(
            mode="json", include={"objective", "metrics", "stages"})) + "\n")
        return
    done = RunSummary.model_validate(summary)
    _stage_table(done.stages, f"run of {cfg.name}")
    out.print(f"[bold]objective[/] ({cfg.objective}): {done.objective:.4f}   "
              f"metrics: " + ", ".join(f"{k}={v:.4f}" for k, v in done.metrics.items()))


@app.command()
def plan(config: ConfigArg = None, set_: SetOpt = None, store: StoreOpt = None,
         as_json: JsonOpt = False) -> None:
    """Show each stage's key, whether it is cached and its recorded cost; runs nothing."""
    try:
        _, _, plans = _prepare(config, set_, store)
    except _user_errors() as e:
        fail(str(e))
    if as_json:
        sys.stdout.write(json.dumps({"stages": [
            {"name": p.name, "key": p.key, "cached": p.cached, "compute_s": p.compute_s,
             "resume_epoch": p.resume_epoch, "remaining_s": p.remaining_s}
            for p in plans]}) + "\n")
        return
    table = Table(title="plan")
    for col in ("stage", "key", "cached", "recorded compute s", "size"):
        table.add_column(col)
    for p in plans:
        cached = "yes" if p.cached else "no"
        cost = f"{p.compute_s:.2f}" if p.compute_s is not None else "-"
        if p.resume_epoch is not None and p.remaining_s is not None:
            cached = f"partly: epochs 1-{p.resume_epoch} of {p.epochs}"
            cost = f"~{p.remaining_s:.2f} left"
        table.add_row(p.name, p.key[:16], cached, cost,
                      _human(p.size_bytes) if p.size_bytes is not None else "-")
    out.print(table)


def _stage_table(rows: list[StageRun], title: str) -> None:
    table = Table(title=title, show_footer=True)
    for col, foot in (("stage", "total"), ("key", ""),
                      ("status", f"{sum(s.cached for s in rows)}/{len(rows)} cached"),
                      ("compute s", f"{sum(s.compute_s for s in rows):.2f}"),
                      ("load s", f"{sum(s.load_s for s in rows):.2f}"),
                      ("saved s", f"{sum(s.saved_s for s in rows):.2f}")):
        table.add_column(col, footer=foot)
    for s in rows:
        color = "green" if s.cached else "yellow"
        table.add_row(s.name, s.key[:16], f"[{color}]{s.status}[/]",
                      f"{s.compute_s:.2f}", f"{s.load_s:.2f}", f"{s.saved_s:.2f}")
    out.print(table)


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _connect_prefect() -> None:
    """Reuse (or start once) a local Prefect server; see flows/server.py."""
    from flows.server import ensure_server

    url = ensure_server()
    if url is not None:
        err.print(f"[dim]Prefect UI: {url.removesuffix('/api')}[/]", highlight=False)


@server_app.command("status")
def server_status() -> None:
    """Show which Prefect API memotune uses."""
    from flows.server import api_url, configured_api, healthy

    url = configured_api() or api_url()
    state = "up" if healthy(url) else "not running (started by the next run)"
    out.print(f"Prefect API {url}: {state}", highlight=False)


@server_app.command("stop")
def server_stop() -> None:
    """Stop the local Prefect server memotune started."""
    from flows.server import stop_server

    out.print("stopped" if stop_server() else "no server started by memotune is running")


def _console_for_run(as_json: bool, debug: bool) -> bool:
    """Set up the console for a run; True when progress bars are wanted.

    Prefect logs to stderr (and to its API) and never to stdout, so under --json
    stdout carries the JSON object alone while stderr still shows the run's
    progress: a log line per epoch, bars only when stderr is a terminal, and no
    progress bars of `datasets`. Tracebacks stay off the console unless --debug
    (one line at the end says what failed).
    """
    from flows.console import quiet_tracebacks

    if not debug:
        quiet_tracebacks()
    if not as_json:
        return True
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    return sys.stderr.isatty()


@app.command()
def tune(config: ConfigArg = None, set_: SetOpt = None, store: StoreOpt = None,
         tuner: Annotated[str, typer.Option(help="eeipu, ei, eips, carbo, ms_carbo, random, tpe; multi-fidelity (rungs over a training stage's epochs, see --fidelity): eeipu-mf, asha, tpe-hyperband, one-epoch-topk")] = "eeipu",
         fidelity: Annotated[str | None, typer.Option(help="Multi-fidelity tuners: the tuned training stage whose epochs are the rungs (default: the last tuned stage), e.g. intermediate_finetune.")] = None,
         budget: Annotated[float, typer.Option(help="Seconds of stage time to spend (compute + cache loads).")] = 900.0,
         warmup: Annotated[int, typer.Option(help="Random configurations before the model takes over.")] = 5,
         seed: Annotated[int, typer.Option()] = 0,
         study: Annotated[str | None, typer.Option(help="Name of a new study (default: config-tuner-time).")] = None,
         resume: Annotated[str | None, typer.Option(help="Resume this study from the store.")] = None,
         max_trials: Annotated[int | None, typer.Option(help="Stop after this many trials in total.")] = None,
         plot: Annotated[Path | None, typer.Option(help="PNG of best objective vs budget (default: ./<study>.png).")] = None,
         deployment: Annotated[str | None, typer.Option(help="Run trials as flow runs of this pipeline deployment (e.g. memotune-pipeline/offline-default) on its work pool's workers.")] = None,
         parallel: Annotated[int, typer.Option(help="Trials in flight at once (needs --deployment).")] = 1,
         as_json: JsonOpt = False, locks: LocksOpt = None, debug: DebugOpt = False,
         init_search: Annotated[bool, typer.Option("--init-search", help="Print a starting `search:` section for the config's stages and exit.")] = False) -> None:
    """Tune the pipeline's `search:` space, reusing cached prefixes (a Prefect flow)."""
    from tuners import available_tuners

    if init_search:
        _print_starting_search(config, set_)
        return
    lock_setting = _locks(locks)
    if tuner not in available_tuners():
        fail(f"--tuner: unknown tuner {tuner!r} (choose from {', '.join(available_tuners())})")
    if budget <= 0:
        fail("--budget must be positive")
    from flows.validation import ConfigError, check_dispatch

    try:
        check_dispatch(parallel, deployment)
    except ConfigError as e:
        fail(str(e))
    def has_search(cfg: Any) -> None:
        if not cfg.search and resume is None:
            fail(f"{config}: no `search:` section, so nothing to tune: add one "
                 f"(`memotune tune {config} --init-search` prints a starting one for its "
                 "stages; see the config reference)")

    try:
        cfg, st, _ = _prepare(config, set_, store, check=has_search)
        from flows.study import StudyError, new_study_name, study_doc_name

        name = resume or study or new_study_name(cfg, tuner)
        study_doc_name(name)
        if resume is None:  # before any server starts: can this tuner search this space?
            from flows.fidelity import study_space

            study_space(cfg, tuner, fidelity)
    except (*_user_errors(), ValueError) as e:
        fail(str(e))
    _connect_prefect()
    from flows.run_records import StudyResult
    from flows.tune import check_deployment, plot_progress, tune_flow

    bars = _console_for_run(as_json, debug)
    try:
        if deployment is not None:
            check_deployment(deployment)
        result = tune_flow(st.url, name, config=cfg.model_dump(mode="json"), tuner=tuner,
                           budget=budget, warmup=warmup, seed=seed, resume=resume is not None,
                           progress=bars, max_trials=max_trials,
                           deployment=deployment, parallel=parallel, locks=lock_setting,
                           fidelity=fidelity)
    except StudyError as e:
        fail(str(e))
    except Exception as e:
        fail_run(e, debug)
    study = StudyResult.model_validate(result)
    png = plot_progress(study, plot or Path(f"{name}.png"))
    if as_json:
        sys.stdout.write(json.dumps({**study.model_dump(mode="json"), "plot": str(png)}) + "\n")
        return
    _trials_table(study)
    best = study.best
    if best is not None and best.objective is not None:
        out.print(f"[bold]best[/] trial {best.id}: objective {best.objective:.4f}  " +
                  "  ".join(f"{s}: {p}" for s, p in zip(study.stage_names, best.shown_params,
                                                       strict=True)), highlight=False)
    out.print(f"spent {study.spent:.0f}s of {study.budget:.0f}s; plot: {png}; "
              f"resume with: memotune tune --resume {name}")


def _print_starting_search(config: str | None, overrides: list[str] | None) -> None:
    import yaml

    from flows.config import load_config, starting_search

    try:
        cfg = load_config(config, overrides or [])
    except _user_errors() as e:
        fail(str(e))
    sys.stdout.write("# a starting point: narrow or widen the ranges, add params "
                     "(dotted names reach nested ones)\n")
    sys.stdout.write(yaml.safe_dump({"search": starting_search(cfg)}, sort_keys=False))


def _trials_table(result: StudyResult) -> None:
    trials = result.trials
    table = Table(title=f"study {result.study} ({result.tuner})", show_footer=True)
    n_reused, n_stages = sum(x.n_reused for x in trials), sum(len(x.stages) for x in trials)
    for col, foot in (("trial", "total"), ("params", ""), ("objective", ""),
                      ("cached stages", f"{n_reused}/{n_stages}"),
                      ("cost s", f"{sum(x.cost_s for x in trials):.1f}"),
                      ("saved s", f"{sum(x.saved_s for x in trials):.1f}"),
                      ("spent s", f"{result.spent:.0f}")):
        table.add_column(col, footer=foot)
    rungs = any(x.rung is not None for x in trials)  # multi-fidelity: configuration, rung
    if rungs:
        table.add_column("config/rung", footer=f"{len({x.config_id for x in trials})} configs")
    for x in trials:
        params = "; ".join(", ".join(f"{k}={_short(v)}" for k, v in p.items()) for p in x.shown_params)
        obj = f"{x.objective:.4f}" if x.objective is not None else "failed"
        table.add_row(str(x.id), params, obj, f"{x.n_reused}/{len(x.stages)}",
                      f"{x.cost_s:.1f}", f"{x.saved_s:.1f}", f"{x.spent:.0f}",
                      *([f"{x.config_id}/{x.rung}"] if rungs else []))
    out.print(table)


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


@bench_app.command("tuners")
def bench_tuners(seeds: Annotated[int, typer.Option(help="Seeds per pipeline.")] = 5,
                 budget: Annotated[float, typer.Option(help="Budget in cost units.")] = 8000.0,
                 tuner: Annotated[list[str] | None, typer.Option(help="Tuners to compare (repeatable).")] = None,
                 pipeline: Annotated[list[str] | None, typer.Option(help="Synthetic pipelines (repeatable).")] = None) -> None:
    """Every tuner on the synthetic pipeline suite: evaluations, objective, ratios."""
    from tuners.bench import main as bench_main

    raise typer.Exit(bench_main(seeds=seeds, budget=budget, tuners=tuner, pipelines=pipeline))


@cache_app.command("ls")
def cache_ls(store: StoreOpt = None, as_json: JsonOpt = False) -> None:
    """List committed entries: stage, key, size, compute seconds, created."""
    from datetime import datetime

    from cache.store import ArtifactStore, StoreError

    try:
        entries = ArtifactStore.open(store_url(store), create=False).ls()
    except StoreError as e:
        fail(str(e))
    if as_json:
        sys.stdout.write(json.dumps([{"stage": m.stage, "key": m.key, "bytes": m.total_bytes,
                                      "compute_s": m.compute_s, "created": m.created}
                                     for m in entries]) + "\n")
        return
    table = Table(title=f"{len(entries)} entries", show_footer=True)
    for col, foot in (("stage", "total"), ("key", f"{len(entries)} entries"),
                      ("size", _human(sum(m.total_bytes for m in entries))),
                      ("compute s", f"{sum(m.compute_s for m in entries):.2f}"), ("created", "")):
        table.add_column(col, footer=foot)
    for m in entries:
        table.add_row(m.stage, m.key[:16], _human(m.total_bytes), f"{m.compute_s:.2f}",
                      datetime.fromtimestamp(m.created).strftime("%Y-%m-%d %H:%M:%S"))
    out.print(table)


@app.command()
def dashboard(store: StoreOpt = None,
              port: Annotated[int, typer.Option(help="Port to serve on.")] = 8765,
              host: Annotated[str, typer.Option(help="Address to bind (0.0.0.0: every interface).")] = "127.0.0.1") -> None:
    """The reuse dashboard in the browser: studies, trials, reuse tree, cache (read-only)."""
    from dashboard.app import serve

    try:
        serve(store_url(store), host=host, port=port)
    except _user_errors() as e:
        fail(str(e))


@cache_app.command("verify")
def cache_verify(store: StoreOpt = None) -> None:
    """Check every entry against its manifest (sizes and sha256) and every Prefect record.

    Exit 1 on damage: a damaged file or manifest, a damaged, orphaned or stray
    object under prefect/. Uncommitted files of killed runs are not entries:
    they are listed for `memotune cache gc` and do not fail the check.
    """
    from cache.store import GARBAGE, UNFINISHED, ArtifactStore, StoreError

    try:
        problems = ArtifactStore.open(store_url(store), create=False).verify_all()
    except StoreError as e:
        fail(str(e))
    leftovers = {k for k, v in problems.items() if v and set(v) <= {GARBAGE, UNFINISHED}}
    bad = {k: v for k, v in problems.items() if v and k not in leftovers}
    for key, issues in bad.items():
        for issue in issues:
            out.print(f"[red]{key[:16]}[/] {issue}", highlight=False)
    for key in sorted(leftovers):
        out.print(f"[dim]{key[:16]} {'; '.join(problems[key])} (gc removes it)[/]", highlight=False)
    entries = len(problems) - len(leftovers)
    out.print(f"{entries} entries checked, {len(bad)} damaged, {len(leftovers)} leftovers")
    raise typer.Exit(1 if bad else 0)


@cache_app.command("gc")
def cache_gc(store: StoreOpt = None,
             max_size: Annotated[str | None, typer.Option(help="Keep at most this much, e.g. 500MB, 2GB.")] = None,
             older_than: Annotated[str | None, typer.Option(help="Remove entries older than e.g. 12h, 7d.")] = None,
             grace: Annotated[str, typer.Option(help="Leave uncommitted files younger than this (in-flight runs).")] = "1h",
             dry_run: Annotated[bool, typer.Option("--dry-run")] = False) -> None:
    """Remove uncommitted garbage and, with a bound, old entries (with their Prefect records)."""
    from cache.store import ArtifactStore, StoreError

    try:
        max_bytes = _parse_size(max_size) if max_size else None
        older = _parse_age(older_than) if older_than else None
        grace_s = _parse_age(grace)
        report = ArtifactStore.open(store_url(store), create=False).gc(
            max_bytes=max_bytes, older_than_s=older, grace_s=grace_s, dry_run=dry_run)
    except (StoreError, ValueError) as e:
        fail(str(e))
    verb = "would remove" if dry_run else "removed"
    out.print(f"{verb} {len(report.removed_garbage)} uncommitted, "
              f"{len(report.removed_entries)} entries, {len(report.removed_records)} stray or "
              f"damaged Prefect records, {len(report.removed_strays)} files no manifest lists, "
              f"{_human(report.freed_bytes)}"
              + (f"; kept {len(report.kept_leased)} in use by running pipelines"
                 if report.kept_leased else ""))


def _parse_size(text: str) -> int:
    units = {"kb": 1024, "mb": 1024**2, "gb": 1024**3, "tb": 1024**4, "b": 1}
    t = text.strip().lower()
    for unit, mult in units.items():
        if t.endswith(unit):
            try:
                return int(float(t[: -len(unit)]) * mult)
            except ValueError:
                break
    raise ValueError(f"--max-size: cannot read {text!r} (e.g. 500MB, 2GB)")


def _parse_age(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip().lower()
    if t and t[-1] in units:
        try:
            return float(t[:-1]) * units[t[-1]]
        except ValueError:
            pass
    raise ValueError(f"cannot read age {text!r} (e.g. 30m, 12h, 7d)")


def main() -> None:
    """The `memotune` command. A usage error (an unknown option, a missing value) is
    one plain line and exit 2, like every other bad input; Typer would draw a panel."""
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        err.print("aborted", highlight=False)
        sys.exit(1)
    except typer.TyperException as e:  # Click's usage errors, as Typer vendors them
        ctx = getattr(e, "ctx", None)
        if type(e).__name__ == "NoArgsIsHelpError" or not hasattr(e, "format_message"):
            e.show()  # a bare `memotune` (or a group): its help
            sys.exit(getattr(e, "exit_code", 2))
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        fail_line(e.format_message() + hint)
        sys.exit(getattr(e, "exit_code", 2))
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()
