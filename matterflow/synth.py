"""Synthetic Azure Document Intelligence v4.0 results: long legal documents for the demo, tests and benchmarks.

The real fixtures in shared/fixtures are one page each; matters are hundreds of pages. These documents have the
exact v4.0 layout shape (operation envelope, `content`, pages with `spans`, words with polygon, confidence and
span, lines) and read like legal text with parties, dates and amounts, so the simulator's answers and the merged
results can be checked. Everything is derived from the seed: the same arguments give the same bytes.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

import msgspec

ORGANISATIONS = [
    "Northwind Holdings LLC", "Contoso Pharmaceuticals Inc", "Fabrikam Logistics Ltd", "Tailspin Realty Trust",
    "Litware Insurance Company", "Adventure Works Bank", "Woodgrove Capital Partners", "Proseware Systems Corp",
]
PEOPLE = [
    "Maria Alvarez", "James Whitfield", "Priya Raman", "Thomas Okafor", "Elena Petrova", "David Chen",
    "Sarah Lindqvist", "Robert Mensah", "Aiko Tanaka", "Michael O'Brien",
]
MONTHS = [
    "January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November",
    "December",
]
ISSUES = [
    "breach of contract", "failure to pay rent", "wrongful termination", "indemnification",
    "force majeure", "negligent misrepresentation", "late delivery penalties", "confidentiality obligations",
]
TEMPLATES = [
    "This Agreement is entered into on {date} by and between {org} (the Landlord) and {person} (the Tenant).",
    "The Tenant shall pay a monthly rent of {amount} no later than the fifth day of each calendar month.",
    "Notice of termination must be delivered in writing no later than {date} to the address set out in Section {section}.",
    "{person} alleges {issue} against {org} under Section {section} of the Agreement.",
    "A security deposit of {amount} was received by {org} on {date} and is held in a separate account.",
    "The parties agree that any dispute concerning {issue} shall be resolved by arbitration in accordance with Section {section}.",
    "On {date} {person} notified {org} of the claim and requested payment of {amount} in damages.",
    "{org} shall indemnify and hold harmless {person} against all losses arising from {issue}.",
    "The court scheduled a hearing for {date} to consider the motion filed by {person}.",
    "Except as otherwise provided herein, the obligations of each party shall survive the expiration of this Agreement.",
    "Time is of the essence with respect to every payment obligation under this Agreement.",
    "Each party represents that it has the full power and authority to enter into and perform this Agreement.",
    "No waiver of any provision shall be effective unless made in writing and signed by the party against whom it is sought.",
    "The Tenant shall maintain the premises in good repair and shall not make alterations without prior written consent.",
]
WORDS_PER_LINE = 12


def legal_sentence(rng: random.Random) -> str:
    template = rng.choice(TEMPLATES)
    return template.format(
        date=f"{rng.choice(MONTHS)} {rng.randint(1, 28)}, {rng.randint(2019, 2026)}",
        org=rng.choice(ORGANISATIONS),
        person=rng.choice(PEOPLE),
        amount=f"${rng.randint(1, 900) * 250:,}.00",
        issue=rng.choice(ISSUES),
        section=f"{rng.randint(1, 24)}.{rng.randint(1, 9)}",
    )


def synthetic_layout_result(
    pages: int,
    *,
    words_per_page: int = 350,
    seed: int = 0,
    low_confidence_pages: Iterable[int] = (),
    blank_pages: Iterable[int] = (),
) -> dict:
    """A Document Intelligence v4.0 prebuilt-layout result of `pages` pages, as the REST API returns it."""
    rng = random.Random(seed)
    low, blank = set(low_confidence_pages), set(blank_pages)
    content_parts: list[str] = []
    offset = 0
    result_pages = []
    for number in range(1, pages + 1):
        words: list[str] = []
        if number not in blank:
            while len(words) < words_per_page:
                words.extend(legal_sentence(rng).split())
            words = words[:words_per_page]
        page_start = offset
        page_words, page_lines = [], []
        quality = (0.35, 0.85) if number in low else (0.90, 1.0)
        for line_start in range(0, len(words), WORDS_PER_LINE):
            line_words = words[line_start : line_start + WORDS_PER_LINE]
            y = 1.0 + 0.25 * (line_start // WORDS_PER_LINE)
            line_offset, x = offset, 1.0
            for word in line_words:
                width = 0.08 * len(word)
                page_words.append(
                    {
                        "content": word,
                        "polygon": [x, y, x + width, y, x + width, y + 0.17, x, y + 0.17],
                        "confidence": round(rng.uniform(*quality), 3),
                        "span": {"offset": offset, "length": len(word)},
                    }
                )
                content_parts.append(word)
                offset += len(word)
                content_parts.append(" ")
                offset += 1
                x += width + 0.06
            content_parts[-1] = "\n"
            text = " ".join(line_words)
            page_lines.append(
                {
                    "content": text,
                    "polygon": [1.0, y, x, y, x, y + 0.17, 1.0, y + 0.17],
                    "spans": [{"offset": line_offset, "length": len(text)}],
                }
            )
        result_pages.append(
            {
                "pageNumber": number,
                "angle": 0,
                "width": 8.5,
                "height": 11,
                "unit": "inch",
                "words": page_words,
                "lines": page_lines,
                "spans": [{"offset": page_start, "length": offset - page_start}],
            }
        )
    return {
        "status": "succeeded",
        "createdDateTime": "2026-11-02T09:14:03Z",
        "lastUpdatedDateTime": "2026-11-02T09:14:41Z",
        "analyzeResult": {
            "apiVersion": "2024-11-30",
            "modelId": "prebuilt-layout",
            "stringIndexType": "textElements",
            "content": "".join(content_parts),
            "pages": result_pages,
            "contentFormat": "text",
        },
    }


def synthetic_layout_bytes(pages: int, **kwargs: object) -> bytes:
    return msgspec.json.encode(synthetic_layout_result(pages, **kwargs))
