"""``report.html``: the sweep's ``report.md`` as one self-contained web page, and the escaping of data in both.

Safety rule: every string from data (class names, paths, data names, the cells of ``results.csv``) enters
``report.md`` through :func:`md_text`, :func:`md_code`, :func:`md_inline` or :func:`md_row`, escaped for
Markdown and HTML, so it shows as text and cannot move a table's cells; the one raw HTML block, the gallery
of mistakes (:func:`gallery_html`), escapes its strings for HTML and carries only PNG thumbnails it was
handed as bytes, as ``data:`` URIs. The page (Python-Markdown, tables extension) has no script, and its
Content-Security-Policy forbids scripts and any request outside it (images: ``data:`` only). Only the
pictures the caller names (:data:`transferlab.pipeline.plots.PICTURES`) are embedded from files, each a PNG
file in the report's own folder (a link is not followed): the file opens alone, offline.

Integrity rule: rendered in memory and written whole and atomically (:func:`transferlab.util.atomic_write`)
after ``report.md`` and the pictures; a crash leaves the previous page, which the next run or
``finetune --append-to`` replaces. A picture missing on disk is left as its file name (shown as
its alt text), never a broken half-page.
"""
from __future__ import annotations

import base64
import hashlib
import html
import os
import re
import stat
from pathlib import Path

from transferlab.util import atomic_write

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1, h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: left; }
th { background: #f3f3f3; }
tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; height: auto; display: block; margin: 1em 0; }
code { background: #f3f3f3; padding: 0 3px; border-radius: 3px; }
.gallery { display: flex; flex-wrap: wrap; gap: 10px; margin: 1em 0; }
.gallery figure { margin: 0; width: 132px; font-size: 0.75em; line-height: 1.3; overflow-wrap: anywhere; }
.gallery img { margin: 0 0 3px 0; image-rendering: pixelated; border: 1px solid #ccc; }
.gallery .missing { color: #a00; }
"""


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# backslash-escaped in Markdown text (the rest of Python-Markdown's and GFM's inline syntax needs one of these)
_MD_ESCAPE = re.compile(r"([\\`*_\[\]|])")


def md_text(value) -> str:
    """``value`` as Markdown text that shows exactly it: one line, inline syntax and HTML escaped."""
    return html.escape(_MD_ESCAPE.sub(r"\\\1", " ".join(str(value).splitlines())), quote=False)


def md_code(value) -> str:
    """``value`` as a Markdown code span (fenced by more backticks than it holds; one line)."""
    text = " ".join(str(value).splitlines())
    fence = "`" * (max((len(r) for r in re.findall(r"`+", text)), default=0) + 1)
    return f"{fence} {text} {fence}" if text.startswith("`") or text.endswith("`") or not text else \
        f"{fence}{text}{fence}"


def md_inline(message: str) -> str:
    """One of our own messages with data inside, its backtick-quoted spans code: each part escaped as what it is."""
    return "".join(md_code(part) if i % 2 else md_text(part) for i, part in enumerate(str(message).split("`")))


def md_row(*cells) -> str:
    """A Markdown table row of ``cells``, each escaped as text (a ``|`` or a newline stays in its cell)."""
    return "| " + " | ".join(md_text(c) for c in cells) + " |"


# Markdown's inline syntax as HTML character references: text in the raw HTML block that no renderer reads as Markdown
_MD_ENTITIES = str.maketrans({c: f"&#{ord(c)};" for c in "\\`*_[]|!"})


def _one_line(value) -> str:
    """``value`` as HTML text or attribute value: one line, HTML escaped, Markdown's syntax as character references."""
    return html.escape(" ".join(str(value).splitlines()), quote=True).translate(_MD_ENTITIES)


def gallery_html(items) -> str:
    """The gallery of mistakes as one raw HTML block for ``report.md``: per item (``{"png": bytes or None,
    "true", "predicted", "score", "file"}``) a thumbnail (a ``data:`` URI of the PNG bytes; a PNG signature
    is required) and its caption, every string escaped for HTML."""
    figures = []
    for it in items:
        png = it.get("png")
        alt = _one_line(f"true {it['true']}, predicted {it['predicted']}")
        if png is not None and png.startswith(PNG_SIGNATURE):
            img = f'<img class="thumb" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}" alt="{alt}">'
        else:
            img = '<span class="missing">(image unreadable)</span>'
        file = f"<br>{_one_line(it['file'])}" if it.get("file") else ""
        figures.append(f"<figure>{img}<figcaption>true: {_one_line(it['true'])}<br>predicted: "
                       f"{_one_line(it['predicted'])}<br>{_one_line(it['score'])}{file}</figcaption></figure>")
    return '<div class="gallery">\n' + "\n".join(figures) + "\n</div>"


def _picture(path: Path) -> bytes | None:
    """The bytes of the PNG file ``path`` itself (a link, a folder, a pipe or any other file: None)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        data = fh.read() if stat.S_ISREG(os.fstat(fd).st_mode) else b""
    return data if data.startswith(PNG_SIGNATURE) else None


def _embed(body: str, folder: Path, pictures) -> str:
    def repl(m):
        name = html.unescape(m.group(2))
        data = _picture(folder / name) if name in pictures else None
        if data is None:
            return m.group(0)
        return f'{m.group(1)}data:image/png;base64,{base64.b64encode(data).decode("ascii")}{m.group(3)}'

    return re.sub(r'(<img[^>]*?src=")([^"]+)(")', repl, body)


def render_html(markdown_text: str, folder: "str | Path", title: str = "TransferLab sweep", pictures=()) -> str:
    """The page for ``markdown_text``, the pictures named in ``pictures`` embedded from ``folder``."""
    import markdown

    body = markdown.markdown(markdown_text, extensions=["tables"], output_format="html")
    style = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode("ascii")
    policy = f"default-src 'none'; img-src data:; style-src 'sha256-{style}'; base-uri 'none'; form-action 'none'"
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta http-equiv="Content-Security-Policy" content="{policy}">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            f"{_embed(body, Path(folder), frozenset(pictures))}\n</body>\n</html>\n")


def write_html(markdown_path: "str | Path", pictures=()) -> Path:
    """Write ``report.html`` beside ``markdown_path`` (``report.md``), embedding ``pictures``; return its path."""
    markdown_path = Path(markdown_path)
    page = render_html(markdown_path.read_text(), markdown_path.parent, pictures=pictures)
    return atomic_write(markdown_path.with_suffix(".html"), page)
