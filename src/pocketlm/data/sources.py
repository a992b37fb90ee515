"""Reading the user's files: finding them, checking them, and turning them into raw documents.

Record files (JSONL, JSON, CSV, TSV) are read by `read_records`, the one reader of records that
`prepare`, fine-tuning, evaluation and the bot share (see docs/data.md, "Records"); `Template` is the
one `{field}` template rule.

Every reader streams: a file is read in bounded pieces and documents longer than `MAX_DOC_CHARS`
are cut (at a blank line, else a newline, else a space), so a 1 GB single-line file never becomes
one giant string. Problems with the input are handed to a `Reporter`, which either warns and lets
the reader skip the file or record, or (strict mode) raises `UserError` with the same message.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import os
import re
import string
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from pocketlm.errors import UserError

SEPARATOR = "<|endoftext|>"
MAX_DOC_CHARS = 1_000_000
DOC_BOUNDARIES = ["auto", "file", "line", "blank", "separator"]

TEXT_SUFFIXES = {".txt", ".text", ".md", ".markdown", ".rst"}
KINDS = {
    **{s: "text" for s in TEXT_SUFFIXES},
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".html": "html",
    ".htm": "html",
}

_CHUNK = 1 << 20
_MAX_WARNINGS_PER_FILE = 10
_MAX_RECORDED_PROBLEMS = 1000
_SEP_LINE = re.compile(rb"(?m)^[ \t]*<\|endoftext\|>[ \t]*\r?$")
# Only raise the csv module's per-field limit (131072 characters by default): a cell may be a whole document.
csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))


@dataclass
class RawDoc:
    text: str
    source: str  # the file as the user named or reached it
    line: int  # 1-based line where the document starts (the item number for a .json array)


@dataclass
class InputFile:
    path: Path
    display: str
    kind: str
    size: int


# --------------------------------------------------------------------------------------------------
# Problems


class BadFile(Exception):
    """The whole file is unusable; `line` (if known) says where."""

    def __init__(self, reason: str, line: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.line = line


class BadRecord(Exception):
    """One record (JSONL line, CSV row, JSON item) is unusable."""


def location(display: str, line: int | None) -> str:
    return f"{display}:{line}" if line else display


class Reporter:
    """Collects input problems: warns and counts them, or raises `UserError` in strict mode."""

    def __init__(self, strict: bool = False, emit: Callable[[str], None] | None = None,
                 counted_in: str | None = "stats.json"):
        self.strict = strict
        self.emit = emit or (lambda msg: print(msg, file=sys.stderr))
        self.counted_in = counted_in  # where the problems not shown are counted (None: nowhere)
        self.skipped_files: list[dict] = []
        self.skipped_records = 0
        self.problems: list[str] = []  # the first messages, for stats.json
        self.ignored: Counter[str] = Counter()  # extension -> files not read from folders
        self._per_file: Counter[str] = Counter()

    def _record(self, message: str) -> None:
        if len(self.problems) < _MAX_RECORDED_PROBLEMS:
            self.problems.append(message)

    def bad_file(self, display: str, reason: str, line: int | None = None) -> None:
        message = f"{location(display, line)}: {reason}"
        if self.strict:
            raise UserError(message)
        self.skipped_files.append({"path": display, "reason": message})
        self._record(message)
        self.emit(f"warning: {message}; skipping the file")

    def bad_record(self, display: str, line: int | None, reason: str) -> None:
        message = f"{location(display, line)}: {reason}"
        if self.strict:
            raise UserError(message)
        self.skipped_records += 1
        self._record(message)
        self._per_file[display] += 1
        n = self._per_file[display]
        if n <= _MAX_WARNINGS_PER_FILE:
            self.emit(f"warning: {message}")
        if n == _MAX_WARNINGS_PER_FILE:
            where = f"are counted in {self.counted_in}, not shown" if self.counted_in else "are not shown"
            self.emit(f"warning: {display}: further problems in this file {where}")

    def bad(self, display: str, record: Record, reason: str) -> None:
        """A problem with one record from :func:`read_records` (its line, or its item of a .json array)."""
        if record.item:
            self.bad_record(display, None, f"item {record.line}: {reason}")
        else:
            self.bad_record(display, record.line, reason)

    def note(self, message: str) -> None:
        self.emit(f"note: {message}")


# --------------------------------------------------------------------------------------------------
# Finding files


def kind_of(path: Path) -> str | None:
    return KINDS.get(path.suffix.lower())


def find_files(inputs: list[str], reporter: Reporter, exclude: list[Path] = ()) -> list[InputFile]:
    """Expand files and folders (recursively, sorted, hidden entries skipped) into readable inputs.

    Files with unsupported extensions inside folders are counted in `reporter.ignored`; a file named
    explicitly is always read, as text if its extension is unknown. A path that does not exist is a
    `UserError`: it is a mistake on the command line, not in the data.
    """
    excluded = {p.resolve() for p in exclude}
    seen: set[Path] = set()
    files: list[InputFile] = []

    def add(path: Path, display: str, kind: str) -> None:
        real = path.resolve()
        if real in seen or real in excluded:
            return
        seen.add(real)
        try:
            size = path.stat().st_size
        except OSError as e:
            reporter.bad_file(display, f"cannot read ({e.strerror})")
            return
        files.append(InputFile(path, display, kind, size))

    for arg in inputs:
        path = Path(arg)
        if not path.exists():
            raise UserError(f"{arg}: no such file or directory")
        if path.is_dir():
            def unlistable(e: OSError, top: Path = path) -> None:
                reporter.bad_file(str(e.filename or top), f"cannot list the folder ({e.strerror})")

            for root, dirs, names in os.walk(path, onerror=unlistable):
                rootp = Path(root)
                dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (rootp / d).resolve() not in excluded)
                for name in sorted(names):
                    p = rootp / name
                    if name.startswith("."):
                        reporter.ignored["hidden"] += 1
                        continue
                    kind = kind_of(p)
                    if kind is None:
                        reporter.ignored[p.suffix.lower() or "(no extension)"] += 1
                        continue
                    add(p, str(p), kind)
        else:
            add(path, arg, kind_of(path) or "text")
    return files


# --------------------------------------------------------------------------------------------------
# Opening and checking files


class _Counting(io.RawIOBase):
    """A raw reader that reports the bytes it reads (for the progress bar)."""

    def __init__(self, raw: io.RawIOBase, on_read: Callable[[int], Any]):
        self.raw = raw
        self.on_read = on_read

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self.raw.readinto(b)
        if n:
            self.on_read(n)
        return n

    def close(self) -> None:
        self.raw.close()
        super().close()


def open_binary(path: Path, on_read: Callable[[int], Any] | None = None) -> io.BufferedReader:
    raw = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by the caller through the wrapper
    return io.BufferedReader(_Counting(raw, on_read) if on_read else raw, buffer_size=_CHUNK)


def open_text(path: Path, on_read: Callable[[int], Any] | None = None, newline: str | None = None) -> io.TextIOWrapper:
    """UTF-8 text (a leading BOM is dropped); newline=None turns \\r\\n and \\r into \\n."""
    return io.TextIOWrapper(open_binary(path, on_read), encoding="utf-8-sig", newline=newline)


@dataclass
class Scan:
    has_separator: bool = False


def scan(path: Path, want_separator: bool = False) -> Scan:
    """Check that a file is non-empty UTF-8 text without NUL bytes; raise `BadFile` naming the line."""
    result = Scan()
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    lines = 0  # newlines before the current chunk
    nonblank = False
    carry = b""  # the start of the current line, when short enough to be a separator line
    with open(path, "rb") as f:
        head = f.read(4)
        if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            raise BadFile("UTF-16 text; save it as UTF-8")
        f.seek(0)
        while chunk := f.read(_CHUNK):
            nul = chunk.find(b"\0")
            if nul >= 0:
                raise BadFile("binary file (contains NUL bytes); only UTF-8 text is read",
                              lines + chunk.count(b"\n", 0, nul) + 1)
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as e:
                line = lines + e.object.count(b"\n", 0, e.start) + 1
                raise BadFile(f"invalid UTF-8 (byte 0x{e.object[e.start]:02x}); convert the file to UTF-8",
                              line) from None
            if not nonblank and chunk.strip():
                nonblank = True
            if want_separator and not result.has_separator:
                buf = carry + chunk
                if _SEP_LINE.search(buf):
                    result.has_separator = True
                tail = buf[buf.rfind(b"\n") + 1:]
                carry = tail if len(tail) <= 64 else b"#"  # "#..." can never be a separator line
            lines += chunk.count(b"\n")
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise BadFile("invalid UTF-8 (the file ends inside a multi-byte character)", lines + 1) from None
    if not nonblank:
        raise BadFile("empty file" if path.stat().st_size == 0 else "empty file (only whitespace)")
    return result


# --------------------------------------------------------------------------------------------------
# Documents from text


class DocBuilder:
    """Accumulates pieces of one document; cuts it when it grows past `max_chars`."""

    def __init__(self, source: str, max_chars: int = MAX_DOC_CHARS):
        self.source = source
        self.max_chars = max_chars
        self.parts: list[str] = []
        self.size = 0
        self.line = 0
        self.cuts = 0  # how many times a long document was cut

    def add(self, piece: str, line: int) -> Iterator[RawDoc]:
        if not self.parts:
            self.line = line
        self.parts.append(piece)
        self.size += len(piece)
        if self.size > self.max_chars:
            yield from self._cut()

    def _cut(self) -> Iterator[RawDoc]:
        text = "".join(self.parts)
        while len(text) > self.max_chars:
            limit, half = self.max_chars, self.max_chars // 2
            cut = text.rfind("\n\n", half, limit) + 2
            if cut < 2:
                cut = text.rfind("\n", half, limit) + 1
            if cut < 1:
                cut = text.rfind(" ", half, limit) + 1
            if cut < 1:
                cut = limit
            self.cuts += 1
            yield RawDoc(text[:cut], self.source, self.line)
            self.line += text.count("\n", 0, cut)
            text = text[cut:]
        self.parts = [text]
        self.size = len(text)

    def flush(self) -> Iterator[RawDoc]:
        if self.parts:
            text = "".join(self.parts)
            self.parts, self.size = [], 0
            if text.strip():
                yield RawDoc(text, self.source, self.line)


def _lines(f: io.TextIOBase, limit: int) -> Iterator[tuple[int, str, bool]]:
    """(line number, text, complete) with lines longer than `limit` delivered in pieces."""
    lineno = 1
    while piece := f.readline(limit):
        complete = piece.endswith("\n")
        yield lineno, piece, complete
        if complete:
            lineno += 1


def read_text(f: io.TextIOBase, source: str, boundary: str, builder: DocBuilder) -> Iterator[RawDoc]:
    """Documents of a .txt/.md file; `boundary` is one of file, line, blank, separator (not auto)."""
    for lineno, piece, complete in _lines(f, builder.max_chars):
        if boundary == "line":
            if piece.strip():
                yield from builder.add(piece, lineno)
            if complete:
                yield from builder.flush()
        elif boundary == "blank" and complete and not piece.strip():
            yield from builder.flush()
        elif boundary == "separator" and piece.strip() == SEPARATOR:
            yield from builder.flush()
        else:
            yield from builder.add(piece, lineno)
    yield from builder.flush()


_BLOCK_PARAGRAPH = {
    "article", "aside", "blockquote", "details", "dl", "figure", "footer", "form", "h1", "h2", "h3", "h4",
    "h5", "h6", "header", "hr", "main", "nav", "ol", "p", "pre", "section", "table", "title", "ul",
}
_BLOCK_LINE = {
    "address", "body", "br", "caption", "dd", "dialog", "div", "dt", "fieldset", "figcaption", "head",
    "html", "legend", "li", "option", "summary", "tr",
}
_HTML_SKIP = {"script", "style", "noscript", "template", "svg"}
_WS = re.compile(r"[ \t\n\r\f]+")  # HTML whitespace; a no-break space is text


class HTMLText(HTMLParser):
    """Visible text of an HTML page: tags stripped, script/style dropped, blocks on their own lines."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip = 0  # inside <script>, <style>, ...
        self.pre = 0  # inside <pre>: whitespace is kept as is
        self.pending = 0  # newlines owed before the next text
        self.sep = ""  # a cell separator owed before the next text on the same line
        self.started = False
        self.line_start = True

    def _newlines(self, n: int) -> None:
        if self.started:
            self.pending = max(self.pending, n)

    def handle_starttag(self, tag, attrs):
        if tag in _HTML_SKIP:
            self.skip += 1
        elif tag in _BLOCK_PARAGRAPH:
            self._newlines(2)
        elif tag in _BLOCK_LINE:
            self._newlines(1)
        elif tag in ("td", "th") and not self.line_start:
            self.sep = "\t"
        if tag == "pre":
            self.pre += 1

    def handle_endtag(self, tag):
        if tag in _HTML_SKIP:
            self.skip = max(0, self.skip - 1)
        elif tag in _BLOCK_PARAGRAPH:
            self._newlines(2)
        elif tag in _BLOCK_LINE:
            self._newlines(1)
        if tag == "pre":
            self.pre = max(0, self.pre - 1)

    def handle_data(self, data):
        if self.skip:
            return
        if not self.pre:
            data = _WS.sub(" ", data)
            if self.line_start or self.pending or self.sep:
                data = data.lstrip(" ")
            if not data:
                return
        if self.pending:
            self.out.append("\n" * self.pending)
            self.line_start = True
        elif self.sep and not self.line_start:
            self.out.append(self.sep)
        self.pending, self.sep = 0, ""
        self.out.append(data)
        self.started = True
        self.line_start = data.endswith("\n")

    def take(self) -> str:
        text = "".join(self.out)
        self.out = []
        return text


def read_html(f: io.TextIOBase, source: str, builder: DocBuilder) -> Iterator[RawDoc]:
    parser = HTMLText()
    while chunk := f.read(_CHUNK):
        parser.feed(chunk)
        text = parser.take()
        if text:
            yield from builder.add(text, 1)
    parser.close()
    text = parser.take()
    if text:
        yield from builder.add(text, 1)
    yield from builder.flush()


# --------------------------------------------------------------------------------------------------
# Records (JSONL, JSON, CSV, TSV): the one reader of record files
#
# `prepare` turns records into documents, fine-tuning and evaluation (data/sft.py) into conversations,
# the bot (retrieval/faq.py) into FAQ entries, `pocketlm split` into shuffled halves: all of them read
# through `read_records`, so a file means the same to each, and they fill templates with `Template`.

RECORD_KINDS = ("jsonl", "json", "csv", "tsv")


def _type_name(v: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(v), type(v).__name__)


def _names(keys, limit: int = 8) -> str:
    keys = [str(k) for k in keys]
    shown = ", ".join(keys[:limit]) + (", ..." if len(keys) > limit else "")
    return shown or "none"


@dataclass
class Record:
    """One record of a .jsonl, .json, .csv or .tsv file, as :func:`read_records` yields it."""

    value: Any  # the JSON value; for CSV/TSV a dict of column name -> cell text
    line: int  # 1-based line where the record starts; for an item of a .json array, its item number
    item: bool = False  # an item of a .json array (parsed whole, so it has no line of its own)

    def where(self, display: str) -> str:
        """`file:line`, or `file: item N` for an item of a .json array."""
        return f"{display}: item {self.line}" if self.item else f"{display}:{self.line}"


class Template:
    """A `str.format` template filled from a record's fields, e.g. "Q: {question}\\nA: {answer}".

    The one template rule of every stage that reads records (`prepare --template`, fine-tuning's and
    evaluation's `--prompt-template` / `--completion-template`): placeholders are named fields (`{0}` and
    `{}` are refused), `{{` and `}}` are literal braces, `{a.b}` / `{a[0]}` reach into a field, and a
    record whose field is missing or null is a bad record.
    """

    def __init__(self, template: str, option: str = "--template"):
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError as e:
            raise UserError(f"{option}: {e} in {template!r}") from None
        names = []
        for _, name, _, _ in parsed:
            if name is None:
                continue
            if name == "" or name.isdigit():
                raise UserError(f"{option}: use named fields like {{question}}, not {{{name}}}")
            base = re.split(r"[.\[]", name, maxsplit=1)[0]
            if base not in names:
                names.append(base)
        if not names:
            raise UserError(f"{option}: {template!r} has no {{field}} placeholders")
        self.template = template
        self.fields = names

    def fill(self, record: dict, what: str = "field") -> str:
        for name in self.fields:
            if name not in record:
                raise BadRecord(f"no {what} '{name}' for the template ({what}s: {_names(record)})")
            if record[name] is None:
                raise BadRecord(f"{what} '{name}' is empty (null)")
        try:
            return self.template.format_map(record)
        except (KeyError, IndexError, AttributeError, TypeError, ValueError) as e:
            raise BadRecord(f"cannot fill the template ({type(e).__name__}: {e})") from None


class _Malformed(Exception):
    """The csv module gave up on a row: the rest of the file cannot be trusted."""

    def __init__(self, line: int, reason: str):
        super().__init__(reason)
        self.line = line
        self.reason = reason


def _csv_rows(f: io.TextIOBase) -> Iterator[tuple[int, list[str]]]:
    """(start line, cells) of a CSV file: RFC 4180 quoting (csv's excel dialect)."""
    reader = csv.reader(f, dialect="excel", strict=False)
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise _Malformed(start, str(e)) from None
        yield start, row


class _Lines:
    """The lines of a text file for csv.reader, keeping the ones the current row took (to read them again)."""

    def __init__(self, f: io.TextIOBase):
        self.lines = iter(f)
        self.back: list[str] = []  # lines to give again, last first
        self.taken: list[str] = []

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = self.back.pop() if self.back else next(self.lines)
        self.taken.append(line)
        return line


def _tsv_rows(f: io.TextIOBase) -> Iterator[tuple[int, list[str]]]:
    """(start line, cells) of a TSV file.

    A TSV is read as spreadsheets and CSV writers (Excel, LibreOffice, pandas, csv's excel-tab dialect)
    write it: a cell that starts with a double quote is a quoted cell, which may hold tabs and line breaks
    and writes a quote inside as `""`; a quote anywhere else is an ordinary character. A line whose
    leading quote does not open a well-formed quoted cell (`"Hello," she said.`, as raw Tatoeba / Anki
    exports have it) is read as it is, quotes kept: split at its tabs, up to its end.
    """
    lines = _Lines(f)
    reader = csv.reader(lines, dialect="excel-tab", strict=True)
    start = 1
    while True:
        lines.taken = []
        try:
            row = next(reader)
            used = len(lines.taken)
        except StopIteration:
            return
        except csv.Error:  # not a well-formed quoted cell: this line, literally
            first, rest = lines.taken[0], lines.taken[1:]
            lines.back.extend(reversed(rest))
            row = first.rstrip("\r\n").split("\t")
            used = 1
        yield start, row
        start += used


def _jsonl_records(f: io.BufferedReader, display: str, reporter: Reporter) -> Iterator[Record]:
    head = f.peek(8192)[:8192]
    if b"\0" in head:
        raise BadFile("binary file (contains NUL bytes); only UTF-8 text is read")
    nonblank = False
    for lineno, raw in enumerate(f, 1):
        if not raw.strip():
            continue
        nonblank = True
        try:
            line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError as e:
            reporter.bad_record(display, lineno, f"invalid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})")
            continue
        try:
            value = json.loads(line.rstrip("\r\n"))
        except json.JSONDecodeError as e:
            reporter.bad_record(display, lineno, f"not valid JSON ({e.msg}: line {e.lineno} column {e.colno})")
            continue
        except RecursionError:
            reporter.bad_record(display, lineno, "not valid JSON (nested too deeply)")
            continue
        yield Record(value, lineno)
    if not nonblank:
        raise BadFile("empty file")


def _json_records(f: io.TextIOBase) -> Iterator[Record]:
    """The items of a .json array. It is parsed whole: use JSONL for big data."""
    try:
        data = json.load(f)
    except json.JSONDecodeError as e:
        raise BadFile(f"not valid JSON ({e.msg}, column {e.colno})", e.lineno) from None
    except RecursionError:
        raise BadFile("not valid JSON (nested too deeply)") from None
    if not isinstance(data, list):
        raise BadFile(f"expected a JSON array of objects, got {_type_name(data)} (use .jsonl for one object per line)")
    if not data:
        raise BadFile("empty JSON array")
    for i, value in enumerate(data, 1):
        yield Record(value, i, item=True)


def _table_records(f: io.TextIOBase, kind: str, display: str, reporter: Reporter, columns: Sequence[str] | None,
                   check_header: Callable[[list[str]], None] | None) -> Iterator[Record]:
    rows = _tsv_rows(f) if kind == "tsv" else _csv_rows(f)
    if columns:
        header = [str(c).strip() for c in columns]
    else:
        try:
            _, header = next(rows)
        except StopIteration:
            raise BadFile("empty file") from None
        except _Malformed as e:
            raise BadFile(f"malformed header ({e.reason})", 1) from None
        header = [h.strip() for h in header]
    if check_header is not None:
        check_header(header)
    n = 0
    while True:
        try:
            start, row = next(rows)
        except StopIteration:
            break
        except _Malformed as e:
            reporter.bad_record(display, e.line, f"malformed {kind.upper()} ({e.reason}); the rest of the file is skipped")
            return
        if not any(cell.strip() for cell in row):
            continue
        n += 1
        if len(row) != len(header):
            expected = (f"the header has {len(header)}" if not columns
                        else f"expected {len(header)} ({', '.join(header)})")
            reporter.bad_record(display, start, f"row has {len(row)} columns, {expected}")
            continue
        yield Record(dict(zip(header, row, strict=True)), start)
    if n == 0:
        raise BadFile("no rows after the header" if not columns else "no rows")


def read_records(path: Path, kind: str, display: str, reporter: Reporter, *,
                 columns: Sequence[str] | None = None,
                 check_header: Callable[[list[str]], None] | None = None,
                 on_read: Callable[[int], Any] | None = None) -> Iterator[Record]:
    """Every record of a record file, in order; `kind` is one of `RECORD_KINDS`.

    - jsonl: one JSON value per line (blank lines ignored; a bad line is a bad record);
    - json: an array, parsed whole; its items are the records;
    - csv, tsv: a header row (names stripped of surrounding spaces), unless `columns` names the columns
      of a file without one, then one dict per row; rows of blank cells are skipped. CSV has RFC 4180
      quoting; TSV the spreadsheet rule of `_tsv_rows`. `check_header(names)` may raise `BadFile` for a
      header the caller cannot use.

    All UTF-8 (a leading byte-order mark is dropped). A problem with the whole file raises `BadFile`
    before its first record is yielded (except "no rows", which has none to yield); a bad record goes to
    `reporter` (a warning naming the file and line, the record skipped; a `UserError` in strict mode).
    """
    if kind == "jsonl":
        if path.stat().st_size == 0:
            raise BadFile("empty file")
        with open_binary(path, on_read) as f:
            yield from _jsonl_records(f, display, reporter)
        return
    if kind not in RECORD_KINDS:
        raise AssertionError(kind)
    scan(path)
    with open_text(path, on_read, newline="" if kind in ("csv", "tsv") else None) as f:
        if kind == "json":
            yield from _json_records(f)
        else:
            yield from _table_records(f, kind, display, reporter, columns, check_header)


# --------------------------------------------------------------------------------------------------
# Documents from records


class RecordText:
    """Turns a record (dict) into document text: one field, or a template."""

    def __init__(self, field_name: str, template: Template | None, what: str, allow_strings: bool = False):
        self.field = field_name
        self.template = template
        self.what = what
        self.allow_strings = allow_strings  # a bare string is a document (items of a .json array)
        self.missing = 0  # records that lacked the field (or a template field)

    def hint(self, source: str) -> str:
        """A note for a file where every record lacked the field."""
        if self.template is not None:
            return f"{source}: no record has all the template's fields ({', '.join(self.template.fields)})"
        option = "--text-field" if self.what == "field" else "--text-column"
        return f"{source}: no record has the {self.what} '{self.field}'; name another with {option} or use --template"

    def check_header(self, header: list[str]) -> None:
        """A CSV/TSV header without the column (or a template's column) skips the whole file."""
        what = self.what
        if self.template is not None:
            missing = [n for n in self.template.fields if n not in header]
            if missing:
                raise BadFile(f"no {what} '{missing[0]}' for the template ({what}s: {_names(header)})", 1)
        elif self.field not in header:
            raise BadFile(f"no {what} '{self.field}' ({what}s: {_names(header)})", 1)

    def __call__(self, record: Any) -> str:
        if self.template is not None:
            if not isinstance(record, dict):
                raise BadRecord(f"expected a JSON object, got {_type_name(record)}")
            if not all(name in record for name in self.template.fields):
                self.missing += 1
            return self.template.fill(record, self.what)
        if isinstance(record, str) and self.allow_strings:
            return record
        if not isinstance(record, dict):
            raise BadRecord(f"expected a JSON object, got {_type_name(record)}")
        if self.field not in record:
            self.missing += 1
            raise BadRecord(f"no {self.what} '{self.field}' ({self.what}s: {_names(record)})")
        value = record[self.field]
        if not isinstance(value, str):
            raise BadRecord(f"{self.what} '{self.field}' is {_type_name(value)}, not a string")
        return value


def read_record_docs(item: InputFile, opts: ReadOptions, reporter: Reporter, builder: DocBuilder,
                     on_read: Callable[[int], Any] | None = None) -> Iterator[RawDoc]:
    """The documents of a .jsonl, .json, .csv or .tsv file: one per record."""
    table = item.kind in ("csv", "tsv")
    extract = RecordText(opts.text_column if table else opts.text_field, opts.template,
                         "column" if table else "field", allow_strings=item.kind == "json")
    records = docs = 0
    for record in read_records(item.path, item.kind, item.display, reporter, on_read=on_read,
                               check_header=extract.check_header if table else None):
        records += 1
        try:
            text = extract(record.value)
        except BadRecord as e:
            reporter.bad(item.display, record, str(e))
            continue
        docs += 1
        yield from builder.add(text, record.line)
        yield from builder.flush()
    if records and not docs and extract.missing == records:
        reporter.note(extract.hint(item.display))


# --------------------------------------------------------------------------------------------------
# One entry point


@dataclass
class ReadOptions:
    doc_boundary: str = "auto"
    text_field: str = "text"
    text_column: str = "text"
    template: Template | None = None
    max_doc_chars: int = MAX_DOC_CHARS
    cuts: int = 0  # long documents cut, summed over files


def read_file(item: InputFile, opts: ReadOptions, reporter: Reporter,
              on_read: Callable[[int], Any] | None = None) -> Iterator[RawDoc]:
    """Yield the raw documents of one file. Problems go to `reporter`; an unusable file yields nothing.

    File-level problems are found before the first document is yielded, so a skipped file never
    contributes part of its content.
    """
    src = item.display
    builder = DocBuilder(src, opts.max_doc_chars)
    try:
        if item.kind in RECORD_KINDS:
            yield from read_record_docs(item, opts, reporter, builder, on_read)
        elif item.kind in ("text", "html"):
            info = scan(item.path, want_separator=item.kind == "text" and opts.doc_boundary == "auto")
            with open_text(item.path, on_read) as f:
                if item.kind == "html":
                    yield from read_html(f, src, builder)
                else:
                    boundary = opts.doc_boundary
                    if boundary == "auto":
                        boundary = "separator" if info.has_separator else "file"
                    yield from read_text(f, src, boundary, builder)
        else:
            raise AssertionError(item.kind)
    except BadFile as e:
        reporter.bad_file(src, e.reason, e.line)
    except OSError as e:
        reporter.bad_file(src, f"cannot read ({e.strerror or e})")
    except UnicodeDecodeError:
        reporter.bad_file(src, "invalid UTF-8 (the file changed while it was read)")
    finally:
        opts.cuts += builder.cuts
