"""Sections → chunks: recursive characters (separators that know Chinese punctuation), token
counts with the embedding model's own tokenizer, or heading-aware. Chunks never cross a page,
slide or sheet boundary, so their metadata stays true; heading-aware chunks never cross a heading
either, while the other two merge short neighbouring sections (metadata: the first section's).
Markdown tables (kb.tables) are kept whole when they fit; a larger one is cut between rows, each
piece under the table's header and delimiter rows. The text around them is split as before."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from langchain_text_splitters import RecursiveCharacterTextSplitter

from core.domain_errors import DomainError
from kb.models import Splitter
from kb.parsing import Section
from kb.tables import MarkdownTable, text_and_tables

# Paragraphs, lines, then sentence ends in Chinese and English, then clauses, then words.
SEPARATORS = ["\n\n", "\n", "。", "！", "？", "；", ". ", "! ", "? ", "; ", "，", "、", ", ", " ", ""]


class SplitterUnavailable(DomainError):
    code = "splitter_unavailable"


@dataclass(frozen=True)
class ChunkDraft:
    text: str
    metadata: dict[str, Any]


def split_sections(
    sections: list[Section],
    *,
    splitter: str,
    chunk_size: int,
    chunk_overlap: int,
    tokenizer_path: Path | None = None,
    headers: bool = False,
) -> list[ChunkDraft]:
    """`headers`: every chunk starts with its section's heading path (the heading-aware splitter
    always does so)."""
    length = token_counter(tokenizer_path) if splitter == Splitter.TOKENS else len
    text_splitter = RecursiveCharacterTextSplitter(
        separators=SEPARATORS,
        keep_separator="end",
        chunk_size=chunk_size,
        chunk_overlap=min(chunk_overlap, chunk_size // 2),
        length_function=length,
        strip_whitespace=True,
    )
    units = sections if splitter == Splitter.HEADINGS else merge_small_sections(sections, chunk_size, length)
    drafts = []
    for section in units:
        prefix = heading_prefix(section) if headers or splitter == Splitter.HEADINGS else ""
        for piece in split_text(section.text, text_splitter, chunk_size, length):
            drafts.append(ChunkDraft(prefix + piece, dict(section.metadata)))
    return drafts


def split_text(
    text: str, text_splitter: RecursiveCharacterTextSplitter, chunk_size: int, length: Callable[[str], int]
) -> list[str]:
    """A section's text as chunks: the splitter's own for text without tables or that fits;
    otherwise each table in pieces of whole rows and the text between split as before, and
    neighbouring pieces of a table and the text beside it share a chunk when they fit together
    (pieces of one run of text never do: the splitter made them, with their overlap)."""
    segments = text_and_tables(text) if "|" in text else []
    if not any(isinstance(segment, MarkdownTable) for segment in segments) or length(text) <= chunk_size:
        return text_splitter.split_text(text)
    chunks: list[str] = []
    last_segment = -1
    for index, segment in enumerate(segments):
        if isinstance(segment, MarkdownTable):
            pieces = table_pieces(segment, chunk_size, length)
        else:
            pieces = text_splitter.split_text(segment)
        for piece in pieces:
            joined = f"{chunks[-1]}\n\n{piece}" if chunks and index != last_segment else ""
            if joined and length(joined) <= chunk_size:
                chunks[-1] = joined
            else:
                chunks.append(piece)
            last_segment = index
    return chunks


def table_pieces(table: MarkdownTable, chunk_size: int, length: Callable[[str], int]) -> list[str]:
    """The table whole when it fits, else pieces of as many whole rows as fit under its header
    and delimiter rows (counted row by row). A row is never cut: one too long for a chunk with
    the header is a piece of its own, longer than the chunk size."""
    whole = table.text
    if length(whole) <= chunk_size or not table.rows:
        return [whole]
    budget = chunk_size - length(table.head)
    pieces: list[str] = []
    rows: list[str] = []
    used = 0
    for row in table.rows:
        size = length(f"\n{row}")
        if rows and used + size > budget:
            pieces.append("\n".join([table.head, *rows]))
            rows, used = [], 0
        rows.append(row)
        used += size
    pieces.append("\n".join([table.head, *rows]))
    return pieces


def heading_prefix(section: Section) -> str:
    path = section.metadata.get("heading_path") or []
    return (" > ".join(path) + "\n\n") if path else ""


def merge_small_sections(sections: list[Section], chunk_size: int, length: Callable[[str], int]) -> list[Section]:
    """Adjacent short sections of the same page or sheet become one, so a document of many tiny
    paragraphs does not turn into many tiny chunks; metadata is the first section's."""
    merged: list[Section] = []
    for section in sections:
        previous = merged[-1] if merged else None
        if (
            previous is not None
            and _same_place(previous.metadata, section.metadata)
            and length(previous.text) + length(section.text) < chunk_size
        ):
            previous.text = f"{previous.text}\n\n{section.text}"
        else:
            merged.append(Section(section.text, dict(section.metadata)))
    return merged


def _same_place(first: dict[str, Any], second: dict[str, Any]) -> bool:
    keys = ("page", "slide", "sheet", "chapter", "line", "record")
    return all(first.get(key) == second.get(key) for key in keys)


def tokenizer_path_for(custom_spec: dict[str, Any] | None) -> Path | None:
    """A local tokenizer.json for the embedding model, when its spec points at local files."""
    for spec in (custom_spec or {}).get("model_specs", []):
        uri = spec.get("model_uri") or ""
        if uri.startswith("file://"):
            candidate = Path(urlparse(uri).path) / "tokenizer.json"
            if candidate.exists():
                return candidate
    return None


@functools.lru_cache(maxsize=8)
def _tokenizer(path: Path) -> Any:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    # Model folders ship tokenizers set up to pad and truncate to the model's input size: counting
    # needs neither.
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def token_counter(tokenizer_path: Path | None) -> Callable[[str], int]:
    if tokenizer_path is None:
        raise SplitterUnavailable(
            "the token splitter needs the embedding model's tokenizer.json on this machine, and the model's "
            "registration names none: choose the recursive or heading-aware splitter"
        )
    tokenizer = _tokenizer(tokenizer_path)
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids)
