"""How fast is archlint, measured side by side in one run?

1. Does archlint's whole run stay close to the cost of building the model? Baseline: `python -c
   "import torch; <build a ResNet-50-sized model>"`. Measured: `archlint
   file.py:ResNet50 --input-shape 8,3,224,224 --no-cache` (tracing, shapes, all rules, the
   gradient estimate, fixes). Bar: at most 1.25x (aim 1.1x). The input's activations at
   8x3x224x224 would take well over a gigabyte in float32; archlint's peak RSS staying near the
   baseline's shows it never allocates them.
2. Twenty model files in one run vs one of them alone (torch is imported once; ``-j``, default
   one worker per core, spreads the files over forked workers). Bar: at most 2x.
3. A re-run with every target cached vs the cold run that filled the cache (the re-run
   answers without importing torch). Bar: at most 0.2x.

Each pair runs as fresh processes, interleaved, several times; we print the medians, their
ratios and each process's peak RSS.

    python benchmarks/speed.py [--repeats N]
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

MODEL = '''
import torch
import torch.nn as nn


class Bottleneck(nn.Module):
    def __init__(self, inp, planes, stride=1):
        super().__init__()
        out = planes * 4
        self.conv1 = nn.Conv2d(inp, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.down = None
        if stride != 1 or inp != out:
            self.down = nn.Sequential(nn.Conv2d(inp, out, 1, stride, bias=False),
                                      nn.BatchNorm2d(out))

    def forward(self, x):
        idt = x if self.down is None else self.down(x)
        o = self.relu(self.bn1(self.conv1(x)))
        o = self.relu(self.bn2(self.conv2(o)))
        return self.relu(self.bn3(self.conv3(o)) + idt)


class ResNet50(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        layers, inp = [], 64
        for planes, blocks, stride in [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)]:
            for i in range(blocks):
                layers.append(Bottleneck(inp, planes, stride if i == 0 else 1))
                inp = planes * 4
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2048, 1000)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.fc(self.pool(self.layers(self.stem(x))).flatten(1))
'''

RSS = ("import resource, sys; print('RSS_KB', resource.getrusage(resource.RUSAGE_SELF)"
       ".ru_maxrss, file=sys.stderr)")


def _run(cmd: list[str], env: dict) -> tuple[float, int]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    elapsed = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr}")
    rss = next((int(line.split()[1]) for line in proc.stderr.splitlines()
                if line.startswith("RSS_KB")), 0)
    return elapsed, rss


SMALL_MODEL = """
import torch
from torch import nn


class Net{i}(nn.Module):
    def __init__(self):
        super().__init__()
        w = {width}
        self.stem = nn.Conv2d(3, w, 3, padding=1)
        self.blocks = nn.Sequential(*[nn.Sequential(nn.Conv2d(w, w, 3, padding=1),
                                                    nn.BatchNorm2d(w), nn.ReLU())
                                      for _ in range({depth})])
        self.head = nn.Linear(w, 10)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))
"""


def _archlint(args: list[str]) -> list[str]:
    return [sys.executable, "-c",
            "import sys; from archlint.cli import main\n"
            f"sys.argv = ['archlint', *{args!r}]\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n" + RSS]


def _pairs(first: list[str], second: list[str], env: dict, repeats: int,
           before_first=None) -> tuple[list[float], list[int], list[float], list[int]]:
    a_t, a_rss, b_t, b_rss = [], [], [], []
    for _ in range(repeats):
        if before_first is not None:
            before_first()
        t, r = _run(first, env)
        a_t.append(t)
        a_rss.append(r)
        t, r = _run(second, env)
        b_t.append(t)
        b_rss.append(r)
    return a_t, a_rss, b_t, b_rss


def many_files(tmp: Path, env: dict, repeats: int) -> float:
    folder = tmp / "models"
    folder.mkdir()
    for i in range(20):
        (folder / f"net{i:02d}.py").write_text(SMALL_MODEL.format(i=i, width=16 + 8 * (i % 4),
                                                                  depth=2 + i % 3))
    (folder / ".archlint.yaml").write_text("input:\n  shape: [8, 3, 32, 32]\n")
    one = _archlint([str(folder / "net00.py"), "--no-cache"])
    twenty = _archlint([str(folder), "--no-cache"])
    _run(one, env)
    o_t, o_rss, t_t, t_rss = _pairs(one, twenty, env, repeats)
    o, t = statistics.median(o_t), statistics.median(t_t)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"one model file:                           {o:.2f} s   peak RSS "
          f"{max(o_rss) / 1024:.0f} MB")
    print(f"20 model files in one run (-j {cores}):          {t:.2f} s   peak RSS "
          f"{max(t_rss) / 1024:.0f} MB (this process)")
    print(f"ratio 20 files / 1 file: {t / o:.2f}  (bar: 2.0)")
    return t / o


def cached_rerun(tmp: Path, env: dict, repeats: int) -> float:
    folder = tmp / "cached"
    folder.mkdir()
    (folder / "resnet50_model.py").write_text(MODEL)
    (folder / ".archlint.yaml").write_text("input:\n  shape: [8, 3, 224, 224]\n")
    cmd = _archlint([str(folder / "resnet50_model.py") + ":ResNet50",
                     "--config", str(folder / ".archlint.yaml")])

    def empty_cache() -> None:
        shutil.rmtree(folder / ".archlint_cache", ignore_errors=True)

    c_t, c_rss, w_t, w_rss = _pairs(cmd, cmd, env, repeats, before_first=empty_cache)
    c, w = statistics.median(c_t), statistics.median(w_t)
    print(f"cold run (fills the cache):               {c:.2f} s   peak RSS "
          f"{max(c_rss) / 1024:.0f} MB")
    print(f"re-run, every target cached:              {w:.2f} s   peak RSS "
          f"{max(w_rss) / 1024:.0f} MB")
    print(f"ratio cached / cold: {w / c:.2f}  (bar: 0.2)")
    return w / c


def main(repeats: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "resnet50_model.py"
        model.write_text(MODEL)
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        baseline = [sys.executable, "-c",
                    f"import torch, runpy; ns = runpy.run_path({str(model)!r}); "
                    f"ns['ResNet50'](); {RSS}"]
        archlint = [sys.executable, "-c",
                    "import sys; from archlint.cli import main\n"
                    f"sys.argv = ['archlint', {str(model) + ':ResNet50'!r}, '--isolated', "
                    "'--input-shape', '8,3,224,224', '--no-cache']\n"
                    "try:\n    main()\nexcept SystemExit:\n    pass\n" + RSS]
        _run(baseline, env)  # warm the file cache
        _run(archlint, env)
        base_t, base_rss, lint_t, lint_rss = [], [], [], []
        for _ in range(repeats):
            t, r = _run(baseline, env)
            base_t.append(t)
            base_rss.append(r)
            t, r = _run(archlint, env)
            lint_t.append(t)
            lint_rss.append(r)
    b, a = statistics.median(base_t), statistics.median(lint_t)
    print(f"build only (import torch + ResNet-50):   {b:.2f} s   peak RSS {max(base_rss) / 1024:.0f} MB")
    print(f"archlint (trace, rules, estimate):        {a:.2f} s   peak RSS {max(lint_rss) / 1024:.0f} MB")
    print(f"ratio archlint / build: {a / b:.2f}  (bar: 1.25; {repeats} interleaved runs each, medians)")
    act = 8 * 3 * 224 * 224 * 4 / 2 ** 20
    print(f"for scale: the input alone is {act:.0f} MB; ResNet-50's activations at this batch are "
          "several GB")
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        print("note: PYTHONDONTWRITEBYTECODE is set: archlint's modules are compiled from source "
              "in every run (torch's were byte-compiled when it was installed)")
    print()
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        many = many_files(Path(tmp), env, repeats)
        print()
        cached = cached_rerun(Path(tmp), env, repeats)
    ok = a / b <= 1.25 and many <= 2.0 and cached <= 0.2
    return 0 if ok else 1


if __name__ == "__main__":
    n = 3
    if "--repeats" in sys.argv:
        n = int(sys.argv[sys.argv.index("--repeats") + 1])
    sys.exit(main(n))
