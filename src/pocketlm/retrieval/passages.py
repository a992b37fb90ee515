"""Documents -> passages that keep their structure: every passage carries its page title and heading
path, which retrieval sees and answers cite ("install.md > Installing > On Linux").

Markdown headings (`#`), HTML headings (`<h1>`-`<h6>`) and the page `<title>` open sections; a section's
paragraphs, list items and code blocks are gathered into passages of at most `max_chars`, never cutting a
block in the middle unless the block alone is longer than that. Plain text files have no headings: the
file name is the title and blank lines separate blocks.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

from pocketlm.errors import UserError
from pocketlm.retrieval.index import Passage

DOC_SUFFIXES = {".md", ".markdown", ".txt", ".text", ".rst", ".html", ".htm"}
MAX_CHARS = 1200

Block = tuple[list[str], str]  # (heading path, block text)


def find_documents(paths: list[str | Path]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in DOC_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            raise UserError(f"{p}: no such file or folder")
    return files


def _markdown_blocks(text: str) -> tuple[str | None, list[Block]]:
    blocks: list[Block] = []
    path: list[str] = []
    title = None
    para: list[str] = []
    fence = None

    def flush():
        if para and "".join(para).strip():
            blocks.append((list(path), "\n".join(para).strip()))
        para.clear()

    for line in text.splitlines():
        if fence is not None:
            para.append(line)
            if line.strip().startswith(fence):
                fence = None
                flush()
            continue
        stripped = line.strip()
        if stripped.startswith(("```", "~~~")):
            flush()
            fence = stripped[:3]
            para.append(line)
            continue
        m = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if m:
            flush()
            level, name = len(m.group(1)), m.group(2).strip()
            if level == 1 and title is None:
                title = name
                path = []
                continue
            path = path[: level - 2] + [name] if level > 1 else [name]
            continue
        if not stripped:
            flush()
        else:
            para.append(line)
    flush()
    return title, blocks


class _HtmlBlocks(HTMLParser):
    BLOCK = {"p", "li", "dd", "dt", "pre", "tr", "blockquote", "div", "section", "article", "table", "br"}
    SKIP = {"script", "style", "nav", "header", "footer", "noscript", "template", "aside"}
    CONTAINERS = {"div", "ul", "ol", "section", "table", "form"}  # never a link: a heading's own anchor stays
    # navigation by class, id or role: sidebars, tables of contents, breadcrumbs (Sphinx's "sphinxsidebar" and
    # "related" bars list every page and section, and would match every question)
    NAV = re.compile(r"\b(nav\w*|navigation|sidebar|sphinxsidebar\w*|related|toc\w*|menu\w*|breadcrumbs?|footer|header)\b",
                     re.IGNORECASE)

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.title: str | None = None
        self.blocks: list[Block] = []
        self.path: list[str] = []
        self._buf: list[str] = []
        self._heading: int | None = None
        self._heading_text: list[str] = []
        self._in_title = False
        self._skip = 0
        self._skip_tag: str | None = None  # the element being skipped as navigation, and its nesting depth
        self._skip_depth = 0
        self._pre = 0

    def _flush(self):
        text = "".join(self._buf)
        text = text.strip("\n") if self._pre else " ".join(text.split())
        if text.strip():
            self.blocks.append((list(self.path), text))
        self._buf = []

    def handle_starttag(self, tag, attrs):
        if self._skip_tag is not None:
            self._skip_depth += tag == self._skip_tag
            return
        marks = " ".join(v or "" for k, v in attrs if k in ("class", "id", "role"))
        if marks and tag in self.CONTAINERS and self.NAV.search(marks):
            self._flush()
            self._skip_tag, self._skip_depth = tag, 1
            return
        if tag in self.SKIP:
            self._skip += 1
        elif tag == "title":
            self._in_title = True
        elif re.fullmatch(r"h[1-6]", tag):
            self._flush()
            self._heading, self._heading_text = int(tag[1]), []
        elif tag == "pre":
            self._flush()
            self._pre += 1
        elif tag in self.BLOCK and not self._pre:
            self._flush()

    def handle_endtag(self, tag):
        if self._skip_tag is not None:
            self._skip_depth -= tag == self._skip_tag
            if self._skip_depth <= 0:
                self._skip_tag = None
            return
        if tag in self.SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag == "title":
            self._in_title = False
        elif self._heading is not None and tag == f"h{self._heading}":
            name = " ".join("".join(self._heading_text).split()).rstrip("¶").strip()
            if self._heading == 1 and not self.path and name:
                self.title = self.title or name
                self.path = []
            elif name:
                self.path = self.path[: self._heading - 2] + [name]
            self._heading = None
        elif tag == "pre":
            self._flush()
            self._pre = max(0, self._pre - 1)
        elif tag in self.BLOCK and not self._pre:
            self._flush()

    def handle_data(self, data):
        if self._skip or self._skip_tag is not None:
            return
        if self._in_title:
            self.title = (self.title or "") + data.strip() if self.title is None else self.title
        elif self._heading is not None:
            self._heading_text.append(data)
        else:
            self._buf.append(data)


def _html_blocks(text: str) -> tuple[str | None, list[Block]]:
    parser = _HtmlBlocks()
    parser.feed(text)
    parser.close()
    parser._flush()
    return parser.title, parser.blocks


def _text_blocks(text: str) -> tuple[str | None, list[Block]]:
    return None, [([], b.strip()) for b in re.split(r"\n\s*\n", text) if b.strip()]


def _split_long(text: str, max_chars: int) -> list[str]:
    """A block longer than `max_chars`, cut at line ends, else sentence ends, else spaces."""
    pieces, rest = [], text
    while len(rest) > max_chars:
        cut = max(rest.rfind("\n", 0, max_chars), rest.rfind(". ", 0, max_chars) + 1, rest.rfind(" ", 0, max_chars))
        cut = cut if cut > max_chars // 3 else max_chars
        pieces.append(rest[:cut].strip())
        rest = rest[cut:]
    if rest.strip():
        pieces.append(rest.strip())
    return pieces


def chunk(blocks: list[Block], max_chars: int = MAX_CHARS) -> list[tuple[list[str], str]]:
    """Consecutive blocks of one section gathered into passages of at most `max_chars`."""
    out: list[tuple[list[str], str]] = []
    cur_path: list[str] | None = None
    cur: list[str] = []
    size = 0
    for path, text in blocks:
        for piece in _split_long(text, max_chars) if len(text) > max_chars else [text]:
            if cur and (path != cur_path or size + len(piece) + 2 > max_chars):
                out.append((cur_path or [], "\n\n".join(cur)))
                cur, size = [], 0
            cur_path = path
            cur.append(piece)
            size += len(piece) + 2
    if cur:
        out.append((cur_path or [], "\n\n".join(cur)))
    return out


def read_document(path: Path, root: Path | None = None, max_chars: int = MAX_CHARS) -> list[Passage]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    suffix = path.suffix.lower()
    if suffix in (".html", ".htm"):
        title, blocks = _html_blocks(text)
    elif suffix in (".md", ".markdown"):
        title, blocks = _markdown_blocks(text)
    else:
        title, blocks = _text_blocks(text)
    name = str(path.relative_to(root)) if root is not None and path.is_relative_to(root) else path.name
    title = (title or path.stem.replace("_", " ").replace("-", " ")).strip()
    out = []
    for n, (heading, body) in enumerate(chunk(blocks, max_chars)):
        section = " > ".join(heading)
        out.append(Passage(f"{name}#{n + 1}", " > ".join([title, *heading]), body,
                           f"{name}{' > ' + section if section else ''}", "doc"))
    return out


def read_documents(paths: list[str | Path], max_chars: int = MAX_CHARS) -> list[Passage]:
    out: list[Passage] = []
    for p in map(Path, paths):
        root = p if p.is_dir() else p.parent
        for f in find_documents([p]):
            out += read_document(f, root, max_chars)
    return out
