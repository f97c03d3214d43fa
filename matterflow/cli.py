"""`matterflow`: the command line of the tooling package.

Look at a document before spending LLM money on it:

    matterflow confidence matters/lease.ocr.json          per-page OCR confidence, flagged pages
    matterflow confidence lease.ocr.json --json            the same as JSON (a documented interface)
    matterflow windows --pages 120 --window 8 --overlap 2  how a 120-page document would be cut
    matterflow windows lease.ocr.json                      the window plan of a real document

Every option can also come from the environment as MATTERFLOW_<COMMAND>_<OPTION>, e.g.
MATTERFLOW_CONFIDENCE_MIN_CONFIDENCE=0.9. Errors are one line on stderr and a non-zero exit (2 for bad input).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path

import click

from f.matter.documents import parse_ocr
from f.matter.errors import InputError, MatterflowError
from f.matter.ocr_confidence import DEFAULT_MIN_CONFIDENCE, score_document
from f.matter.windows import (
    DEFAULT_CONTEXT_TOKENS,
    DEFAULT_OVERLAP_PAGES,
    DEFAULT_SHARDS,
    DEFAULT_WINDOW_PAGES,
    estimate_tokens,
    plan,
    plan_document,
)

from . import tables
from .sim import FAULTS, SimConfig, serve

# ~350 words of legal prose a page, ~6 characters a word with the space: the page a `--pages N` plan assumes.
TYPICAL_PAGE_CHARS = 2_100


class _Group(click.Group):
    """Turns matterflow's own errors into one clear line and an exit code, instead of a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except InputError as exc:
            click.echo(f"matterflow: error: {exc}", err=True)
            sys.exit(2)
        except MatterflowError as exc:
            click.echo(f"matterflow: error: {exc}", err=True)
            sys.exit(1)


@click.group(cls=_Group, context_settings={"auto_envvar_prefix": "MATTERFLOW", "help_option_names": ["-h", "--help"]})
@click.version_option(package_name="matterflow")
def cli() -> None:
    """matterflow: OCR quality, page windows and parallel Llama 3 70B analysis of legal matters."""


def _read_document(path: Path):
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read the file: {exc.strerror}", where=str(path)) from None
    return parse_ocr(data, source=str(path))


@cli.command()
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--min-confidence",
    type=click.FloatRange(0.0, 1.0),
    default=DEFAULT_MIN_CONFIDENCE,
    show_default=True,
    help="Pages whose mean word confidence is below this are flagged for review.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def confidence(file: Path, min_confidence: float, as_json: bool) -> None:
    """OCR confidence of a local OCR result FILE, per page and for the document.

    FILE is an Azure Document Intelligence result (v4.0, v3.x, v2.1 or Read 3.2 JSON).

    \b
    Examples:
      matterflow confidence lease.ocr.json
      matterflow confidence lease.ocr.json --min-confidence 0.9 --json | jq .document.flagged_pages
    """
    document = _read_document(file)
    scored = score_document(document, min_confidence)
    if as_json:
        click.echo(json.dumps(tables.confidence_json(scored, document, str(file)), indent=2))
    else:
        click.echo(tables.confidence_table(scored, document, str(file)))


@cli.command()
@click.argument("file", required=False, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--pages", type=click.IntRange(1, 1_000_000), help="Plan for N typical pages instead of a FILE.")
@click.option("--window", "window_pages", type=click.IntRange(1, 200), default=DEFAULT_WINDOW_PAGES, show_default=True, help="Pages each window owns.")
@click.option("--overlap", "overlap_pages", type=click.IntRange(0, 50), default=DEFAULT_OVERLAP_PAGES, show_default=True, help="Context pages on each side.")
@click.option("--context-tokens", type=click.IntRange(1024), default=DEFAULT_CONTEXT_TOKENS, show_default=True, help="The model's context (Llama 3 70B: 8192; 3.1: 131072).")
@click.option("--shards", type=click.IntRange(1, 64), default=DEFAULT_SHARDS, show_default=True, help="Parallel LLM branches.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def windows(
    file: Path | None, pages: int | None, window_pages: int, overlap_pages: int, context_tokens: int, shards: int, as_json: bool
) -> None:
    """How a document is cut into windows: owned pages, context pages, tokens and shards.

    Give a local OCR result FILE, or --pages N for N typical pages (~350 words each).

    \b
    Examples:
      matterflow windows --pages 120 --window 8 --overlap 2
      matterflow windows lease.ocr.json --context-tokens 131072 --json
    """
    settings = {"window_pages": window_pages, "overlap_pages": overlap_pages, "context_tokens": context_tokens, "shards": shards}
    if (file is None) == (pages is None):
        raise click.UsageError("give either a FILE or --pages N")
    if file is not None:
        result = plan_document(_read_document(file), **settings)
    else:
        typical = estimate_tokens("x" * TYPICAL_PAGE_CHARS)
        result = plan([(number, typical) for number in range(1, pages + 1)], **settings)
    if as_json:
        click.echo(json.dumps(result.model_dump(mode="json"), indent=2))
    else:
        click.echo(tables.windows_table(result))


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0 picks a free port.")
@click.option("--model", default="llama-3-70b-sim", show_default=True)
@click.option("--latency-ms", type=click.FloatRange(0), default=200.0, show_default=True, help="Time to first token.")
@click.option("--tokens-per-s", type=click.FloatRange(1), default=400.0, show_default=True, help="Output speed.")
@click.option("--capacity", type=click.IntRange(1), default=64, show_default=True, help="Concurrent requests; more queue (vLLM max-num-seqs).")
@click.option("--fault-rate", type=click.FloatRange(0, 1), default=0.0, show_default=True, help="Share of requests that get a fault.")
@click.option("--faults", default=",".join(FAULTS), show_default=True, help="Faults to draw from.")
@click.option("--fault-script", default="", help="Faults for successive requests, e.g. 429,ok,500 ('ok' = no fault).")
@click.option("--retry-after", "retry_after_s", type=click.FloatRange(0), default=1.0, show_default=True, help="Seconds in 429 Retry-After.")
@click.option("--hang-s", type=click.FloatRange(0), default=600.0, show_default=True, help="How long a 'timeout' fault hangs.")
@click.option("--rpm", type=click.IntRange(1), default=None, help="Answer 429 beyond this many requests a minute.")
@click.option("--context-tokens", type=click.IntRange(1), default=None, help="Answer 400 context length above this.")
@click.option("--seed", type=int, default=0, show_default=True)
def sim(host: str, port: int, faults: str, fault_script: str, **settings) -> None:
    """An OpenAI-compatible Llama 3 70B simulator for tests, the demo and benchmarks.

    \b
    Examples:
      matterflow sim --port 8001 --latency-ms 2000 --capacity 64
      matterflow sim --port 8002 --fault-rate 0.2 --faults 429,503,malformed --seed 7
      curl localhost:8001/sim/stats
    """
    config = SimConfig(faults=_csv(faults), fault_script=_csv(fault_script), **settings)
    try:
        config.update({"faults": config.faults, "fault_script": config.fault_script})
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(config, host, port))


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


@cli.command("run")
@click.argument("flow_path", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--input", "flow_input", required=True, help="The flow input as JSON, or @file.json.")
@click.option(
    "--resources",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    default=None,
    help="Folder of resources: DIR/f/matter/storage.json is `$res:f/matter/storage`.",
)
def run_flow(flow_path: Path, flow_input: str, resources: Path | None) -> None:
    """Run a Windmill flow.yaml (or one workspace script, e.g. f/matter/sweep.py) locally, with Windmill's
    semantics: each step in its own process, Windmill's API served on loopback for the `wmill` client.

    \b
    Examples:
      matterflow run f/matter/process_document__flow/flow.yaml --resources resources \\
        --input '{"blob_path": "matters/M-1042/documents/lease.ocr.json",
                  "storage": "$res:f/matter/storage", "llm_pool": "$res:f/matter/llm_pool"}'
      matterflow run f/matter/sweep.py --resources resources \\
        --input '{"storage": "$res:f/matter/storage", "prefix": "matters/", "dry_run": true}'
    """
    from .progress import display_for
    from .runner import Runner

    text = Path(flow_input[1:]).read_text() if flow_input.startswith("@") else flow_input
    try:
        values = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"the flow input is not JSON: {exc}", where="--input") from None
    found = {}
    if resources is not None:
        for path in sorted(resources.rglob("*.json")):
            found[str(path.relative_to(resources).with_suffix(""))] = json.loads(path.read_text())
    display = display_for(sys.stderr, progress_of=lambda job_id: runner.progress(job_id))
    if flow_path.suffix == ".py":
        from .azurite import PROJECT_ROOT

        if not flow_path.resolve().is_relative_to(PROJECT_ROOT):
            raise InputError(f"{flow_path} is not a script of this workspace ({PROJECT_ROOT})", where="FLOW_PATH")
        script = str(flow_path.resolve().relative_to(PROJECT_ROOT).with_suffix(""))
        runner = Runner.for_script(script, list(values), resources=found, events=display)
    else:
        runner = Runner.from_file(flow_path, resources=found, events=display, path=_flow_path_of(flow_path))
    with display:
        result = runner.run(values)
    click.echo(json.dumps(result, indent=2, default=str))


def _flow_path_of(flow_file: Path) -> str | None:
    """`f/matter/process_document__flow/flow.yaml` is the flow `f/matter/process_document` (nonDottedPaths)."""
    folder = flow_file.resolve().parent
    if not folder.name.endswith("__flow") or "f" not in folder.parts:
        return None
    parts = folder.parts[len(folder.parts) - folder.parts[::-1].index("f") - 1 :]
    return "/".join(parts).removesuffix("__flow")


@cli.command()
@click.option("--pages", type=click.IntRange(1, 5000), default=None, help="Generate a document of N pages instead of the bundled 60-page sample.")
@click.option("--fault-rate", type=click.FloatRange(0, 0.9), default=0.0, show_default=True, help="Share of simulated LLM requests that fail (429, 5xx, resets, bad JSON).")
@click.option("--window-pages", type=click.IntRange(1, 200), default=None, help="Pages each LLM window owns [default: the flow's].")
@click.option("--llm-pool", "llm_pool", envvar="MATTERFLOW_LLM_POOL", default=None, help="Real endpoints: llm_pool JSON or @file (env MATTERFLOW_LLM_POOL). Default: three simulators.")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=None, help="Where to copy result.json and report.html [default: out/].")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON (with the paths and the simulators' call counts).")
def demo(pages: int | None, fault_rate: float, window_pages: int | None, llm_pool: str | None, out: Path | None, as_json: bool) -> None:
    """Run the pipeline on embedded defaults: Azurite, three simulated Llama 3 70B endpoints, the sample matter.

    Needs only `make setup`. Starts Azurite (in memory) and the simulators on free loopback ports, runs
    f/matter/process_document with the local runner, copies result.json and report.html to out/, and stops
    everything it started.

    \b
    Examples:
      matterflow demo
      matterflow demo --pages 300 --fault-rate 0.2
      matterflow demo --llm-pool @pool.json --json
    """
    from .demo import OUT, DemoOptions, describe, load_pool, run_demo
    from .progress import display_for

    pool = None
    if llm_pool:
        try:
            pool = load_pool(llm_pool)
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"cannot read the llm_pool: {exc}", where="--llm-pool") from None
    extra = {"window_pages": window_pages} if window_pages else {}
    options = DemoOptions(pages=pages, fault_rate=fault_rate, llm_pool=pool, out=out or OUT, flow_input=extra)
    echo = (lambda line: click.echo(line, err=True)) if as_json else click.echo
    display = display_for(sys.stderr if as_json else sys.stdout)
    with display:
        summary = run_demo(options, events=display, echo=echo)
    click.echo(json.dumps(summary, indent=2) if as_json else "\n" + describe(summary))


@cli.command()
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=None, help="Folder to write into (default: samples/).")
def samples(out: Path | None) -> None:
    """Regenerate the bundled sample matter (synthetic Document Intelligence v4.0 results)."""
    from .demo import SAMPLES, write_samples

    for path in write_samples(out or SAMPLES):
        click.echo(f"wrote {path}")


@cli.command()
@click.option("--check", is_flag=True, help="Fail, writing nothing, when a file is stale.")
def metadata(check: bool) -> None:
    """Regenerate every f/**/<name>.script.yaml and .script.lock (Windmill's parser, pinned versions).

    \b
    Examples:
      matterflow metadata           # after changing a main() signature or a dependency
      matterflow metadata --check   # in CI: fails when anything is stale
    """
    from . import metadata as workspace_metadata

    if check:
        stale = workspace_metadata.stale()
        if stale:
            raise click.ClickException("stale Windmill metadata, run `matterflow metadata`: " + ", ".join(str(p.relative_to(workspace_metadata.ROOT)) for p in stale))
        click.echo("Windmill metadata is up to date")
        return
    for path in workspace_metadata.write():
        click.echo(f"wrote {path.relative_to(workspace_metadata.ROOT)}")


@cli.group()
def bench() -> None:
    """Benchmarks: figures measured side by side in one run (see bench/RESULTS.md)."""


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in _csv(text)]
    except ValueError:
        raise click.BadParameter(f"expected numbers separated by commas, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise click.BadParameter("give at least one size, each at least 1")
    return sizes


def _show(module, report: dict, as_json: bool) -> None:
    from .bench.common import dumps, goals_md

    if as_json:
        click.echo(dumps(report))
        return
    click.echo(module.table(report))
    if report.get("goals"):
        click.echo("\n" + goals_md(report))


@bench.command("fanout")
@click.option("--windows", type=click.IntRange(1), default=None, help="Windows to send [default: 1000; 300 with --throttled].")
@click.option("--latency-ms", type=click.FloatRange(1), default=2000.0, show_default=True, help="Seconds per simulated call x 1000.")
@click.option("--throttled", is_flag=True, help="One endpoint limited to --rpm requests a minute instead (default 300 windows).")
@click.option("--rpm", type=click.IntRange(1), default=600, show_default=True)
@click.option("--no-peers", is_flag=True, help="Measure matterflow only.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report.")
def bench_fanout(windows: int | None, latency_ms: float, throttled: bool, rpm: int, no_peers: bool, as_json: bool) -> None:
    """The fan-out vs gather, semaphore, LangChain and raw aiohttp on the same simulators.

    \b
    Examples:
      matterflow bench fanout                          # 1,000 windows, 2 s per call
      matterflow bench fanout --latency-ms 200 --json  # client CPU per request
      matterflow bench fanout --throttled --windows 300
    """
    from .bench import fanout

    if throttled:
        report = fanout.throttled(windows=windows or 300, rpm=rpm)
    else:
        report = fanout.fanout(windows=windows or 1000, latency_ms=latency_ms, peers=not no_peers)
    _show(fanout, report, as_json)


@bench.command("parse")
@click.option("--pages", default="100,500,2000,5000", show_default=True, help="Document sizes in pages, comma-separated.")
@click.option("--rounds", type=click.IntRange(1), default=None, help="Measurements per contender [default: 3; 2 above 2,000 pages].")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report (ratio_to_orjson, peak_extra_mb, ...).")
def bench_parse(pages: str, rounds: int | None, as_json: bool) -> None:
    """Parse + normalize + confidence vs orjson.loads and json + a loop: time and peak memory, fresh process each.

    \b
    Examples:
      matterflow bench parse --pages 2000 --json   # ratio_to_orjson, peak_extra_mb (the largest size's)
      matterflow bench parse --pages 100,500,2000,5000
    """
    from .bench import parse

    _show(parse, parse.run(_sizes(pages), rounds), as_json)


@bench.command("blob")
@click.option("--mb", type=click.IntRange(1, 1024), default=50, show_default=True, help="MiB to stage and read.")
@click.option("--rounds", type=click.IntRange(1), default=5, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report.")
def bench_blob(mb: int, rounds: int, as_json: bool) -> None:
    """BlobStore write_bytes / read_bytes vs the raw azure-storage-blob SDK's best configuration, on one Azurite."""
    from .bench import blob

    _show(blob, blob.run(mb, rounds), as_json)


@bench.command("e2e")
@click.option("--pages", default="10,100,500", show_default=True, help="Document sizes in pages, comma-separated.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report.")
def bench_e2e(pages: str, as_json: bool) -> None:
    """`matterflow run` on generated documents against 3 realistic simulators: wall time split by step."""
    from .bench import e2e

    _show(e2e, e2e.run(_sizes(pages)), as_json)


@bench.command("cost")
@click.option("--pages", type=click.IntRange(3), default=200, show_default=True, help="Pages of the generated matter.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report.")
def bench_cost(pages: int, as_json: bool) -> None:
    """Tokens per page by window and overlap, $ per 1,000 pages vs Claude 3.5 Sonnet; estimate vs simulator usage."""
    from .bench import cost

    _show(cost, cost.run(pages), as_json)


@bench.command("many-docs")
@click.option("--docs", type=click.IntRange(1), default=50, show_default=True)
@click.option("--pages", type=click.IntRange(1), default=20, show_default=True, help="Pages per document.")
@click.option("--workers", type=click.IntRange(1), default=25, show_default=True, help="Runner processes at a time.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report.")
def bench_many_docs(docs: int, pages: int, workers: int, as_json: bool) -> None:
    """Many documents through the local runner at once: pages per second vs the simulators' capacity."""
    from .bench import many_docs

    _show(many_docs, many_docs.run(docs, pages, workers=workers), as_json)


@bench.command("all")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=Path("bench"), show_default=True)
@click.option("--only", default="", help="Run only these scenarios (comma-separated names); RESULTS.md keeps the others' last reports.")
def bench_all(out: Path, only: str) -> None:
    """Run every benchmark scenario and rewrite OUT/RESULTS.md (what `make bench` runs)."""
    from . import bench as benchmarks

    names = _csv(only)
    unknown = set(names) - set(benchmarks.SCENARIOS)
    if unknown:
        raise click.BadParameter(f"unknown scenarios {sorted(unknown)}; known: {', '.join(benchmarks.SCENARIOS)}", param_hint="--only")
    click.echo(f"wrote {benchmarks.run_all(out, names or None, echo=click.echo)}")


def main() -> None:
    cli(prog_name="matterflow")


if __name__ == "__main__":
    main()
