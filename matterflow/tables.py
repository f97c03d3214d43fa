"""Terminal output of the CLI: readable tables, and the documented JSON of `matterflow confidence --json`."""

from __future__ import annotations

from f.matter.models import ConfidenceReport, Document, WindowPlan


def confidence_json(report: ConfidenceReport, document: Document, source: str) -> dict:
    """`{"source", "source_format", "api_version", "document": {...}, "pages": [...]}`; see docs/confidence.md."""
    return {
        "source": source,
        "source_format": document.source_format,
        "api_version": document.api_version,
        **report.model_dump(mode="json"),
    }


def _number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def confidence_table(report: ConfidenceReport, document: Document, source: str) -> str:
    summary = report.document
    lines = [
        f"{source}: {document.source_format}" + (f" ({document.api_version})" if document.api_version else ""),
        "",
        f"{'page':>6} {'words':>7} {'mean':>6} {f'<{summary.min_confidence:.2f}':>7}  review",
    ]
    for page in report.pages:
        note = "FLAGGED" if page.flagged else ("no words" if page.words == 0 else "")
        lines.append(
            f"{page.page:>6} {page.words:>7} {_number(page.mean_word_confidence):>6} {page.below_threshold:>7}  {note}".rstrip()
        )
    flagged = summary.flagged_pages
    lines += [
        "",
        f"document: {summary.pages} pages, {summary.words} words",
        f"  mean word confidence {_number(summary.mean_word_confidence)} (word-weighted), "
        f"{_number(summary.page_weighted_mean)} (page-weighted)",
        f"  min {_number(summary.min)}  p10 {_number(summary.p10)}  p50 {_number(summary.p50)}  p90 {_number(summary.p90)}",
        f"  flagged for review (mean < {summary.min_confidence:.2f}): "
        + (", ".join(map(str, flagged)) if flagged else "none"),
    ]
    if summary.pages_without_words:
        lines.append("  pages without words: " + ", ".join(map(str, summary.pages_without_words)))
    return "\n".join(lines)


def windows_table(plan: WindowPlan) -> str:
    settings = plan.settings
    lines = [
        f"window {settings.window_pages} pages, overlap {settings.overlap_pages}, "
        f"token budget {settings.token_budget} per window",
        "",
        f"{'window':>6}  {'owns':>11}  {'reads':>11}  {'tokens':>7}  {'shard':>5}",
    ]
    shard_of = {index: shard for shard, indexes in enumerate(plan.shards) for index in indexes}
    for window in plan.windows:
        owns = f"{window.owned_first}-{window.owned_last}"
        reads = f"{window.first}-{window.last}"
        note = "  OVER BUDGET (one page larger than the budget)" if window.over_budget else ""
        lines.append(
            f"{window.index:>6}  {owns:>11}  {reads:>11}  {window.estimated_tokens:>7}  {shard_of[window.index]:>5}{note}"
        )
    total = sum(window.estimated_tokens for window in plan.windows)
    lines += [
        "",
        f"{len(plan.windows)} windows, {total} estimated prompt tokens of page text; "
        f"shards: " + ", ".join(f"{len(ix)} windows / {tokens} tokens" for ix, tokens in zip(plan.shards, plan.shard_tokens, strict=True)),
    ]
    return "\n".join(lines)
