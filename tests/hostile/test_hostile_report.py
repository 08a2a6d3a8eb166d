"""Security catalogue, the report (issue 19, items 2-4): strings from data in report.md and report.html.

Attacks: class names (an npz's ``class_names``, as folder names give them), a data path and the rows of a
stranger's ``results.csv`` carrying HTML, script, Markdown, table pipes and newlines, and ``<img src="PATH">``
pointing at files outside the sweep folder. Expected: every such string is shown as text (escaped for
Markdown and HTML), the page carries a Content-Security-Policy that forbids scripts, embeds only the
pictures the report wrote, and every table row keeps its number of cells. Checks: no script element or
event handler in the page, nothing from outside files in it, and, where headless Chromium exists, a
rendered page whose title no payload changed.
"""
import base64
import html
import html.parser
import itertools
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import transferlab
from tests.conftest import make_npz
from transferlab.pipeline.html import md_text, render_html
from transferlab.pipeline.report import refresh_report

TITLE = "TransferLab sweep"
ONERROR = "<img src=x onerror=\"document.title='pwned-onerror'\">"
SCRIPT = "<script>document.title='pwned-script'</script>"
MARKDOWN = "x`y` <b>*z*</b> [l](http://e.x) _u_ \\ &lt; ![i](confusion.png)"
CANARY = "canary-7f3a9-must-not-leak"
MATHTEXT = "cost $\\frac{a$ each"  # matplotlib's mathtext cannot parse it: drawn as is, or the report fails


class Page(html.parser.HTMLParser):
    """The start tags of a page with their attributes, the text of every table row's cells, and the title."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags, self.tables, self.title, self._cell, self._in_title = [], [], "", None, False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = ""
        elif tag == "title":
            self._in_title = True

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append(self._cell)
            self._cell = None
        elif tag == "title":
            self._in_title = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data
        if self._in_title:
            self.title += data


def _md_cells(line: str) -> list[str]:
    """The cells of a Markdown table row: split on the pipes that no backslash escapes."""
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def _outside_code(md: str) -> str:
    """Markdown text without its code spans (whose content any renderer shows as text)."""
    return re.sub(r"(`+)(.+?)(?<!`)\1(?!`)", "", md)


def _hostname_embedded(page: str) -> bool:
    """Whether this machine's /etc/hostname is in the page as a data: URI (what an unchecked <img src> gives)."""
    host = Path("/etc/hostname")
    return host.is_file() and f"base64,{base64.b64encode(host.read_bytes()).decode()}\"" in page


def _leaks(page: str, secret: bytes) -> bool:
    """Whether ``secret`` (a long, unique string) is in the page, as is or inside any base64 run."""
    if secret.decode() in page:
        return True
    for run in re.findall(r"[A-Za-z0-9+/=]{16,}", page):
        try:
            if secret.strip() in base64.b64decode(run + "=" * (-len(run) % 4)):
                return True
        except ValueError:
            continue
    return False


def _browser():
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def _rendered_dom(page: Path) -> str:
    """The page's DOM after a headless Chromium loaded it and ran whatever it would run."""
    out = subprocess.run([_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                          "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "<title>" in out.stdout, out.stderr[-2000:]
    return out.stdout


no_browser = pytest.mark.skipif(_browser() is None, reason="no headless browser (chromium) on this machine; "
                                                          "bench/render_report.sh installs one")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A sweep on an npz whose class names are attacks (and whose file name is one)."""
    tmp = tmp_path_factory.mktemp("hostile_report")
    canary = tmp / "canary.png"
    canary.write_text(CANARY)
    names = [ONERROR, SCRIPT, f'<img src="{canary}">', '<img src="/etc/hostname">', "a|b", "c\nd", MARKDOWN]
    npz = make_npz(tmp / "d.npz", n_train=10 * len(names), n_test=5 * len(names), size=16, n_classes=len(names))
    arrays = dict(np.load(npz))
    arrays["class_names"] = np.array(names)
    data = tmp / "d`<img src=x onerror=document.title=1>`.npz"
    np.savez(data, **arrays)
    transferlab.sweep(data=f"npz:{data}", heads="knn", layers="bn1,bn2", image_size="32", out=str(tmp / "run"),
                      cache_dir=str(tmp / "cache"), n_jobs=1, progress=False, log=lambda m: None)
    return tmp / "run", names, canary


def test_class_names_and_the_data_path_are_text_in_report_md(hostile):
    run, names, _ = hostile
    md = (run / "report.md").read_text()
    # the gallery of mistakes is the one raw HTML block: its only tags are its own, thumbnails data: PNGs
    galleries = re.findall(r'^<div class="gallery">\n(.*?)\n</div>$', md, flags=re.S | re.M)
    assert len(galleries) == 1
    tags = set(re.findall(r"<(/?[a-z]+)", galleries[0]))
    assert tags <= {"figure", "/figure", "img", "figcaption", "/figcaption", "br", "span", "/span"}
    assert re.findall(r"<img[^>]*", galleries[0]) == re.findall(r'<img class="thumb" src="data:image/png;base64,'
                                                                r'[A-Za-z0-9+/=]+" alt="[^"<>]*"', galleries[0])
    text = _outside_code(md.replace(galleries[0], ""))
    assert "<img" not in text and "<script" not in text and "<b>" not in text
    assert "&lt;script&gt;document.title='pwned-script'&lt;/script&gt;" in md
    assert "Data ``npz:" in md and "onerror=document.title=1>`.npz``," in md  # the path is one code span still
    assert "![i](confusion.png)" not in md  # a class name draws no picture


def test_the_page_runs_nothing_and_says_so_in_its_security_policy(hostile):
    run, names, _ = hostile
    page = (run / "report.html").read_text()
    parsed = Page(page)
    assert not [t for t, _ in parsed.tags if t in ("script", "iframe", "object", "embed", "b", "a")]
    assert not [(t, a) for t, attrs in parsed.tags for a in attrs if a.lower().startswith("on")]
    (csp,) = [a["content"] for t, a in parsed.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    rules = dict((r.split() + [""])[:2] for r in csp.split(";") if r.strip())
    assert rules["default-src"] == "'none'" and "script-src" not in rules and rules["img-src"] == "data:"
    assert parsed.title == TITLE
    text = {c for table in parsed.tables for row in table for c in row}
    for name in names:  # each class name is shown, as text, in the per-class table (a newline as a space)
        assert " ".join(name.splitlines()) in text


def test_no_file_outside_the_sweep_folder_is_embedded(hostile):
    run, _, canary = hostile
    page = (run / "report.html").read_text()
    assert not _leaks(page, canary.read_bytes()) and not _hostname_embedded(page)
    imgs = [a for t, a in Page(page).tags if t == "img"]
    # the depth curve, the confusion matrix and the layer similarity: the three pictures this report wrote (and the
    # gallery's thumbnails)
    assert len([a for a in imgs if a.get("class") != "thumb"]) == 3
    srcs = [a["src"] for a in imgs]
    assert all(base64.b64decode(s.removeprefix("data:image/png;base64,"))[:8] == b"\x89PNG\r\n\x1a\n" for s in srcs)


def test_a_pipe_or_a_newline_in_a_class_name_keeps_the_per_class_table_in_place(hostile):
    run, names, _ = hostile
    md = (run / "report.md").read_text().splitlines()
    start = md.index("| class | test images | precision | recall (per-class accuracy) | ± se | F1 |")
    rows = [_md_cells(line) for line in md[start + 2:start + 2 + len(names)]]
    assert [len(r) for r in rows] == [6] * len(names)
    assert [r[1] for r in rows] == ["5"] * len(names)  # 5 test images per class, each in its own row
    assert all(re.fullmatch(r"[01]\.\d{3}", r[3]) for r in rows)
    (table,) = [t for t in Page((run / "report.html").read_text()).tables if t[0][0] == "class"]
    assert [len(r) for r in table] == [6] * (len(names) + 1)
    assert [r[0] for r in table[1:]] == [" ".join(n.splitlines()) for n in names]
    assert [r[1] for r in table[1:]] == ["5"] * len(names)


@no_browser
def test_chromium_shows_the_hostile_report_without_running_its_payloads(hostile):
    run, _, _ = hostile
    dom = _rendered_dom(run / "report.html")
    assert Page(dom).title == TITLE and "pwned" not in Page(dom).title


def _strangers_sweep(folder: Path, value: str) -> Path:
    """A sweep folder as a stranger could send it: results.json and results.csv whose strings are ``value``."""
    from transferlab.pipeline.results import write_rows

    folder.mkdir()
    rows = [{"backbone": value, "weights": value, "pool": value, "image_size": value, "layer": f"{value}{i}",
             "depth": str(i), "rel_depth": str(i / 2), "dim": value, "head": value, "shots": "", "repeat": "0",
             "val_accuracy": str(0.5 + i / 10), "test_accuracy": "0.5", "fit_seconds": "0.1", "n_val": "50",
             "notes": f"{value} at the grid edge", "row_key": f"k{i}"} for i in range(3)]
    write_rows(folder / "results.csv", rows)
    config = {"data": value, "backbone": [value], "weights": [value], "pool": [value], "image_size": [value],
              "heads": [value], "shots": [], "repeats": 1, "seed": 0}
    (folder / "results.json").write_text(json.dumps({
        "config": config, "timing": {"extract_seconds": 0, "train_seconds": 0, "fits_run": 0, "fits_reused": 3},
        "cache_files": [value], "class_names": ["a", "b"], "class_counts": {"a": 10, "b": 10}, "data_layout": value}))
    return folder


@pytest.mark.parametrize("value", [ONERROR, SCRIPT, "a|b\nc", MARKDOWN, MATHTEXT])
def test_a_strangers_results_csv_is_shown_as_text_in_every_table(tmp_path, value):
    run = _strangers_sweep(tmp_path / "run", value)
    refresh_report(run)
    md = (run / "report.md").read_text()
    assert "<img" not in _outside_code(md) and "<script" not in _outside_code(md)
    # every curve field is the stranger's one value: said once above "All results", which keeps the rest
    assert f"Same in every row: backbone {md_text(value)}, weights {md_text(value)}," in md
    for header in ("| backbone | weights | pool | size | head | shots | chosen on val |",
                   "| chosen | layer | depth | dim | val | test | fit s |"):
        lines = md.splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith(header))
        width = len(_md_cells(lines[start]))
        body = list(itertools.takewhile(lambda line: line.startswith("|"), lines[start + 2:]))
        assert len(body) == (1 if "chosen on val" in header else 3)
        assert [len(_md_cells(line)) for line in body] == [width] * len(body)
    parsed = Page((run / "report.html").read_text())
    assert not [t for t, _ in parsed.tags if t in ("script", "b", "a")]
    assert not [(t, a) for t, attrs in parsed.tags for a in attrs if a.lower().startswith("on")]
    shown = " ".join(value.splitlines())
    for table in parsed.tables:
        assert len({len(r) for r in table}) == 1  # every row as wide as the header
    (results,) = [t for t in parsed.tables if t[0][1] == "layer"]
    assert [r[1] for r in results[1:]] == [f"{shown}{i}" for i in range(3)] and results[1][3] == shown


def test_only_the_reports_own_pictures_are_embedded_from_its_own_folder(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text(CANARY)
    run = tmp_path / "run"
    run.mkdir()
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 32
    (run / "depth_vs_accuracy.png").write_bytes(png)
    (run / "learning_curve.png").symlink_to(secret)  # a picture's name, but a link out of the folder
    (run / "finetune.png").write_text(CANARY)  # a picture's name, but not a picture
    (run / "other.png").write_bytes(png + CANARY.encode())  # a picture the report does not write
    text = "\n\n".join(f'<img src="{src}">' for src in (secret, "../secret.txt", "/etc/hostname", "other.png")) + \
        "\n\n![a](depth_vs_accuracy.png)\n\n![b](learning_curve.png)\n\n![c](finetune.png)\n\n![d](other.png)\n"
    page = render_html(text, run, pictures=("depth_vs_accuracy.png", "learning_curve.png", "finetune.png"))
    assert not _leaks(page, CANARY.encode()) and not _hostname_embedded(page)
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert [base64.b64decode(e) for e in embedded] == [png]
    assert os.readlink(run / "learning_curve.png") == str(secret)  # left as it was


def test_a_dollar_sign_in_a_class_name_is_drawn_as_it_is(tmp_path):
    from transferlab.pipeline.plots import confusion

    path = confusion(np.eye(3, dtype=int) * 5, [MATHTEXT, "b$", "c"], tmp_path / "confusion.png", f"{MATHTEXT} + knn")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_gallery_of_mistakes_shows_class_names_and_file_names_as_text(tmp_path):
    from transferlab.pipeline.html import gallery_html
    from transferlab.pipeline.mistakes import thumbnail_png

    canary = tmp_path / "canary.png"
    canary.write_text(CANARY)
    png = thumbnail_png(np.zeros((8, 8), dtype=np.uint8))
    items = [{"png": png, "true": ONERROR, "predicted": SCRIPT, "score": "probability 0.900",
              "file": f'<img src="{canary}">'},
             {"png": CANARY.encode(), "true": 'x" onload="document.title=1', "predicted": "c\nd",
              "score": "margin 1.000", "file": MARKDOWN}]  # not a PNG: no image, a note
    page = render_html("# TransferLab sweep\n\n" + gallery_html(items) + "\n", tmp_path)
    parsed = Page(page)
    assert not [t for t, _ in parsed.tags if t in ("script", "iframe", "object", "embed", "a")]
    assert not [(t, a) for t, attrs in parsed.tags for a in attrs if a.lower().startswith("on")]
    imgs = [a for t, a in parsed.tags if t == "img"]
    assert [(a["class"], a["src"], a["alt"]) for a in imgs] == [
        ("thumb", f"data:image/png;base64,{base64.b64encode(png).decode()}", f"true {ONERROR}, predicted {SCRIPT}")]
    assert not _leaks(page, CANARY.encode())
    text = html.unescape(re.sub(r"<[^>]+>", "|", page.split('<div class="gallery">', 1)[1]))
    for shown in (ONERROR, SCRIPT, f'<img src="{canary}">', 'x" onload="document.title=1', "c d", MARKDOWN):
        assert f"|{shown}|" in text.replace("true: ", "|").replace("predicted: ", "|")  # shown as text, whole
    assert "(image unreadable)" in text


def test_rows_without_their_cache_file_are_said_to_be_not_the_sweeps_own(tmp_path):
    run = _strangers_sweep(tmp_path / "run", "plain")
    refresh_report(run)
    decision = (run / "report.md").read_text().split("## Decision", 1)[1].strip().splitlines()[0]
    assert decision.startswith("No row here names the feature cache it was measured on")
    assert not (run / "chosen_head").exists()
