"""``report.html``: the sweep's ``report.md`` as one self-contained web page.

The Markdown is rendered by Python-Markdown (tables extension); every local ``<img src="x.png">``
is replaced by a ``data:image/png;base64,...`` URI, so the single file opens in any browser, can be
mailed or copied alone, and needs no network (no scripts, no external styles).

Integrity rule: rendered in memory and written whole and atomically (:func:`transferlab.util.atomic_write`)
after ``report.md`` and the pictures; a crash leaves the previous page, which the next run or
``finetune --append-to`` replaces. A picture missing on disk is left as its file name (shown as
its alt text), never a broken half-page.
"""
from __future__ import annotations

import base64
import html
import re
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
"""


def _embed(body: str, folder: Path) -> str:
    def repl(m):
        src = html.unescape(m.group(2))
        path = folder / src
        if "://" in src or src.startswith("data:") or not path.is_file():
            return m.group(0)
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'{m.group(1)}data:image/png;base64,{data}{m.group(3)}'

    return re.sub(r'(<img[^>]*?src=")([^"]+)(")', repl, body)


def render_html(markdown_text: str, folder: "str | Path", title: str = "TransferLab sweep") -> str:
    """The page for ``markdown_text``, images under ``folder`` embedded."""
    import markdown

    body = markdown.markdown(markdown_text, extensions=["tables"], output_format="html")
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            f"{_embed(body, Path(folder))}\n</body>\n</html>\n")


def write_html(markdown_path: "str | Path") -> Path:
    """Write ``report.html`` beside ``markdown_path`` (``report.md``) and return its path."""
    markdown_path = Path(markdown_path)
    page = render_html(markdown_path.read_text(), markdown_path.parent)
    return atomic_write(markdown_path.with_suffix(".html"), page)
