"""Build the held-out FAQs from real FAQs that Debian packages install, for final scoring only.

    python benchmarks/heldout_faqs.py [--out runs/heldout]

Writes <out>/<name>/faq.jsonl, one {"id", "question", "answer", "source"} per FAQ section:

    debian  the Debian GNU/Linux FAQ, HTML in /usr/share/doc/debian/FAQ/   (apt-get install debian-faq)
    zsh     the Z-shell FAQ, plain text in /usr/share/doc/zsh-common/FAQ.gz (apt-get install zsh-common)

Answers are kept whole: every paragraph of the section, footnotes included, HTML markup stripped,
paragraphs separated by blank lines. The question sets that go with them are in
benchmarks/questions/heldout_<name>.jsonl; see benchmarks/questions/HELDOUT.md. Standard library only.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEBIAN_DIR = Path("/usr/share/doc/debian/FAQ")
ZSH_FILE = Path("/usr/share/doc/zsh-common/FAQ.gz")


# --- the Debian FAQ: DocBook HTML, one file per chapter, one <h2>/<h3> per question ---------------

BLOCK_TAGS = {"p", "li", "pre", "div", "dt", "dd", "ul", "ol", "dl", "table", "tr", "br", "blockquote"}
SKIP_DIVS = {"navheader", "navfooter", "toc"}


class ChapterParser(HTMLParser):
    """Splits one chapter page into sections: (level, title, paragraphs, footnote ids), plus footnotes."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.sections: list[dict] = []   # {"level", "title", "blocks", "notes"}
        self.footnotes: dict[str, list[str]] = {}
        self.divs: list[str] = []        # what each open <div> is: "skip", "note:<id>" or ""
        self.heading: list[str] | None = None
        self.heading_level = 0
        self.buf: list[str] = []
        self.in_pre = 0
        self.bullet = False

    # where flushed text goes: a footnote being read, the current section, or nowhere
    def _target(self) -> list[str] | None:
        if "skip" in self.divs:
            return None
        for d in reversed(self.divs):
            if d.startswith("note:"):
                return self.footnotes.setdefault(d[5:], [])
        return self.sections[-1]["blocks"] if self.sections else None

    def _flush(self):
        text = "".join(self.buf)
        self.buf = []
        if not text.strip():
            return
        if self.in_pre:
            text = "\n".join(line.rstrip() for line in text.strip("\n").split("\n"))
        else:
            text = re.sub(r"\s+", " ", text).strip()
        if self.bullet:
            text, self.bullet = "- " + text, False
        target = self._target()
        if target is not None:
            target.append(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        cls = a.get("class") or ""
        if tag in ("h1", "h2", "h3", "h4"):
            self._flush()
            self.heading, self.heading_level = [], int(tag[1])
            return
        if tag in BLOCK_TAGS:
            self._flush()
        if tag == "div":
            if cls in SKIP_DIVS:
                self.divs.append("skip")
            elif cls == "footnote" and a.get("id", "").startswith("ftn."):
                self.divs.append("note:" + a["id"][4:])
            else:
                self.divs.append("")
        elif tag == "pre":
            self.in_pre += 1
        elif tag == "li":
            self.bullet = True
        elif tag == "a" and cls == "footnote" and self.sections and "note:" not in "".join(self.divs):
            self.sections[-1]["notes"].append(a.get("href", "").removeprefix("#ftn."))

    def handle_endtag(self, tag):
        if tag in ("h1", "h2", "h3", "h4") and self.heading is not None:
            title = re.sub(r"\s+", " ", "".join(self.heading)).strip()
            self.heading = None
            if "skip" not in self.divs:
                self.sections.append({"level": self.heading_level, "title": title, "blocks": [], "notes": []})
            return
        if tag in BLOCK_TAGS:
            self._flush()
        if tag == "div" and self.divs:
            self.divs.pop()
        elif tag == "pre":
            self.in_pre -= 1

    def handle_data(self, data):
        if self.heading is not None:
            self.heading.append(data)
        elif "skip" not in self.divs:
            self.buf.append(data)


def debian_entries() -> list[dict]:
    index = (DEBIAN_DIR / "index.en.html").read_text(encoding="utf-8")
    chapters = [c for c in dict.fromkeys(re.findall(r'href="([a-z-]+)\.en\.html', index)) if c != "index"]
    entries = []
    for chapter in chapters:
        path = DEBIAN_DIR / f"{chapter}.en.html"
        p = ChapterParser()
        p.feed(path.read_text(encoding="utf-8"))
        p.close()
        titles: dict[int, str] = {}   # the open heading at each level: chapter (1), section (2), ...
        for s in p.sections:
            number, _, title = s["title"].partition(" ")
            if s["level"] == 1:
                number, _, title = title.partition(" ")   # "Chapter 8. Managing Debian packages"
            titles = {lvl: t for lvl, t in titles.items() if lvl < s["level"]} | {s["level"]: title}
            if s["level"] == 1 or not re.fullmatch(r"[\d.]+", number):
                continue
            number = number.rstrip(".")
            # a heading that is not a question ("Feedback", "dpkg") is asked within the topic of the
            # nearest enclosing question, or else of its chapter
            question = title
            if "?" not in title:
                above = [titles[lvl] for lvl in sorted(titles) if lvl < s["level"]]
                context = next((t for t in reversed(above) if "?" in t), above[0] if above else "")
                question = f"{context.rstrip('?.')}: {title}"
            blocks = s["blocks"] + [" ".join(p.footnotes.get(n, [])) for n in s["notes"]]
            answer = "\n\n".join(b for b in blocks if b.strip())
            if answer:
                entries.append({"id": f"debian-{number}", "question": question, "answer": answer,
                                "source": f"{path} § {number}. {title}"})
    return entries


# --- the zsh FAQ: plain text, "N.M: Title" headings, continuation lines indented two spaces -----

def zsh_paragraph(lines: list[str]) -> str:
    """Joins a prose paragraph into one line; keeps code, lists and tables line by line."""
    lines = [line.expandtabs().rstrip() for line in lines]
    indents = [len(line) - len(line.lstrip()) for line in lines]
    listy = re.match(r"\s*(o |\d+\. \)|\*|-{4,})", lines[0])
    if max(indents) <= 2 and not listy:
        return " ".join(line.strip() for line in lines)
    return "\n".join(re.sub(r"^ {1,2}", "", line) for line in lines)


def zsh_entries() -> list[dict]:
    text = gzip.open(ZSH_FILE, "rt", encoding="utf-8").read()
    body = text.split("--- End of Contents ---", 1)[1]
    parts = re.split(r"^(\d+\.\d+): (.*)$", body, flags=re.M)
    entries = []
    for number, title, chunk in zip(parts[1::3], parts[2::3], parts[3::3], strict=True):
        # the text of the last question ends where the next chapter or the acknowledgments begin
        chunk = re.split(r"^(?:Chapter \d+:|Acknowledgments:)", chunk, flags=re.M)[0]
        paragraphs = [zsh_paragraph(p.split("\n")) for p in re.split(r"\n\s*\n", chunk) if p.strip()]
        title = re.sub(r"\s+", " ", title).strip()
        entries.append({"id": f"zsh-{number}", "question": title, "answer": "\n\n".join(paragraphs),
                        "source": f"{ZSH_FILE} § {number}: {title}"})
    return entries


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def check_questions(path: Path, entries: list[dict]) -> list[str]:
    """The question set's own check: each answerable key must occur (case and runs of whitespace
    ignored) in the answer of the entry it names; the other kinds have no key, answer or entry."""
    answers = {e["id"]: normalise(e["answer"]) for e in entries}
    rows = [json.loads(line) for line in path.open(encoding="utf-8") if line.strip()]
    problems, kinds, used = [], {}, set()
    for n, r in enumerate(rows, 1):
        kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
        if r["kind"] == "answerable":
            used.add(r["entry"])
            if r["entry"] not in answers:
                problems.append(f"{path.name}:{n}: no entry {r['entry']!r}")
            elif not r["key"] or normalise(r["key"]) not in answers[r["entry"]]:
                problems.append(f"{path.name}:{n}: key {r['key']!r} not in the answer of {r['entry']}")
        elif r["key"] or r["answer"] or r["entry"]:
            problems.append(f"{path.name}:{n}: a {r['kind']} question has a key, answer or entry")
    counts = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
    print(f"  {path.relative_to(REPO)}: {counts}; answerable over {len(used)} entries; "
          f"{'keys checked' if not problems else f'{len(problems)} problems'}")
    return problems


FAQS = {
    "debian": (DEBIAN_DIR / "index.en.html", "debian-faq", debian_entries),
    "zsh": (ZSH_FILE, "zsh-common", zsh_entries),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "heldout")
    args = ap.parse_args()
    failures = 0   # missing FAQ files and question-set problems
    for name, (needed, package, extract) in FAQS.items():
        if not needed.exists():
            print(f"{name}: missing {needed}: install it with `apt-get install {package}`", file=sys.stderr)
            failures += 1
            continue
        entries = extract()
        out = args.out / name / "faq.jsonl"
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", encoding="utf-8") as f:
            for e in entries:
                f.write(json.dumps(e, ensure_ascii=False) + "\n")
        chars = sum(len(e["answer"]) for e in entries) / len(entries)
        words = sum(len(e["answer"].split()) for e in entries) / len(entries)
        print(f"{name}: {len(entries)} entries, mean answer {chars:.0f} chars ({words:.0f} words) "
              f"from package {package} -> {out}")
        questions = REPO / "benchmarks" / "questions" / f"heldout_{name}.jsonl"
        if questions.exists():
            for problem in check_questions(questions, entries):
                print("  " + problem, file=sys.stderr)
                failures += 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
