"""What every benchmark section shares: paths, the machine record, timing, child processes, figures.

Scratch data (decoded CIFAR-10, image folders, caches) goes to ``$TRANSFERLAB_BENCH_DIR`` (default
``/tmp/transferlab-bench-<checkout folder name>``), never into the repository; the shared data sets are read from
``../shared/data`` and a section that needs an absent one is skipped with the reason.

Integrity rule of the scratch folder: a file is reused when it exists, so each is written whole or
not at all (``save_npz`` and the decoded CIFAR-10 through a temporary name, image folders finished
by a ``.complete`` marker written last); a kill leaves a temporary file or an unmarked folder, which
the next run writes again. Stale means another checkout's or another size's: the names carry both.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
# one scratch folder per checkout: two clones benchmarking at once must not share (or delete) files
WORK = Path(os.environ.get("TRANSFERLAB_BENCH_DIR") or Path(tempfile.gettempdir()) / f"transferlab-bench-{ROOT.name}")
CIFAR_SMALL = SHARED / "cifar10_small.npz"
CIFAR_JPEG = SHARED / "cifar10_full_jpeg.npz"


class Skip(Exception):
    """A section or figure that cannot run here; the message is the reason, recorded in the results."""


def quiet(_msg):
    pass


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def machine() -> dict:
    import torch

    sys.path.insert(0, str(ROOT))
    from transferlab.util import library_versions

    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    from threadpoolctl import threadpool_info

    blas = sorted({f"{i['internal_api']} {i['num_threads']} threads" for i in threadpool_info()})
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "platform": platform.platform(),
            "cpu": cpu, "cores": os.cpu_count(), "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available()
            else None, "torch_threads": torch.get_num_threads(), "blas": blas,
            "load_average_at_start": load_average(), "versions": library_versions()}


def save_npz(path: Path, **arrays) -> Path:
    """``np.savez`` written whole or not at all (the next run reuses whatever file it finds)."""
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from transferlab.util import atomic_write

    return atomic_write(path, lambda fh: np.savez(fh, **arrays))


def timed(fn, *args, **kw):
    """(seconds, result) of one call."""
    t = time.perf_counter()
    out = fn(*args, **kw)
    return time.perf_counter() - t, out


def peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM). ru_maxrss is not: after fork + exec Linux carries the
    parent's peak into the child's, so a child of a big parent reports the parent's memory."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args: list, python: str | None = None, env: dict | None = None, timeout: float = 900) -> dict:
    """Run ``python bench/run.py --child ...`` (or another script) and parse the JSON of its last line."""
    cmd = [python or sys.executable] + [str(a) for a in args]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
                          cwd=ROOT)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{' '.join(cmd[:3])} failed ({proc.returncode}): {' | '.join(tail)}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["wall_seconds"] = round(wall, 2)
    return out


def figure(name: str, ours: str, peer: str, ratio: float | None, target: str = "", met: bool | None = None,
           **extra) -> dict:
    """One row of the table: what we measured, against what, their ratio and the target it answers."""
    import torch

    return {"figure": name, "transferlab": ours, "peer_or_limit": peer,
            "ratio": None if ratio is None else round(float(ratio), 3), "target": target, "met": met,
            "load_average": load_average(), "threads": torch.get_num_threads(), **extra}


def cifar_small():
    import numpy as np

    if not CIFAR_SMALL.is_file():
        raise Skip(f"{CIFAR_SMALL} not found")
    d = np.load(CIFAR_SMALL)
    return {k: d[k] for k in d.files}


def cifar_full_npz() -> Path:
    """All 60,000 CIFAR-10 images decoded once into WORK (171 MB), through the data's own materialize.py."""
    out = WORK / "cifar10_full.npz"
    if not out.is_file():
        if not CIFAR_JPEG.is_file():
            raise Skip(f"{CIFAR_JPEG} not found")
        WORK.mkdir(parents=True, exist_ok=True)
        tmp = WORK / "cifar10_full.partial.npz"
        subprocess.run([sys.executable, str(SHARED / "materialize.py"), "npz", str(tmp)], check=True)
        tmp.replace(out)
    return out


def subset_npz(n_train: int, n_test: int) -> Path:
    """n_train / n_test images of full CIFAR-10 (seeded, all classes) as an npz in WORK."""
    import numpy as np

    out = WORK / f"cifar10_{n_train}_{n_test}.npz"
    if not out.is_file():
        d = np.load(cifar_full_npz())
        tr, te = spread(len(d["y_train"]), n_train), spread(len(d["y_test"]), n_test)
        save_npz(out, x_train=d["x_train"][tr], y_train=d["y_train"][tr], x_test=d["x_test"][te],
                 y_test=d["y_test"][te], class_names=d["class_names"])
    return out


def spread(n_total: int, n: int):
    """n row indices drawn evenly (seeded) from n_total: the full CIFAR-10 files are sorted by class."""
    import numpy as np

    return np.sort(np.random.default_rng(0).permutation(n_total)[:n])


def png_folder(n_train: int, n_test: int) -> tuple[Path, Path]:
    """CIFAR-10 (small) images as a ``folder:`` tree of PNG files, and an npz of the very same pixels."""
    from PIL import Image

    d = cifar_small()
    root = WORK / f"png_{n_train}_{n_test}"
    npz = WORK / f"png_{n_train}_{n_test}.npz"
    if not (root / ".complete").is_file():
        for split, n in (("train", n_train), ("test", n_test)):
            for i in range(n):
                folder = root / split / str(d["class_names"][d[f"y_{split}"][i]])
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(d[f"x_{split}"][i]).save(folder / f"{i:05d}.png")
        (root / ".complete").write_text("")
    if not npz.is_file():
        save_npz(npz, x_train=d["x_train"][:n_train], y_train=d["y_train"][:n_train], x_test=d["x_test"][:n_test],
                 y_test=d["y_test"][:n_test], class_names=d["class_names"])
    return root, npz


def jpeg_folder(n_train: int, n_test: int) -> Path:
    """The original JPEG bytes of CIFAR-10 images (seeded, all classes) as a ``folder:`` tree."""
    import numpy as np

    root = WORK / f"jpeg_{n_train}_{n_test}"
    if (root / ".complete").is_file():
        return root
    if not CIFAR_JPEG.is_file():
        raise Skip(f"{CIFAR_JPEG} not found")
    d = np.load(CIFAR_JPEG)
    names = [str(c) for c in d["class_names"]]
    for split, n in (("train", n_train), ("test", n_test)):
        b, o, y = d[f"{split}_jpeg"], d[f"{split}_offsets"], d[f"y_{split}"]
        for i in spread(len(y), n):
            folder = root / split / names[y[i]]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{i:05d}.jpg").write_bytes(b[o[i]:o[i + 1]].tobytes())
    (root / ".complete").write_text("")
    return root
