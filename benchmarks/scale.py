"""Can archlint lint a 70-billion-parameter architecture on a laptop?

A LLaMA-2-70B-shaped model (hidden 8192, 80 layers, 64 heads, 8 key-value heads, MLP 28672,
vocabulary 32000: 69 billion parameters, 276 GB in float32) is linted by ``archlint`` in a
fresh process; it builds the model on the meta device (``--device auto`` switches to it above
200M parameters) and derives the large weights' statistics from their recorded
initialisation. The model is transformers' ``LlamaForCausalLM`` built from a ``LlamaConfig``
when transformers is installed, else the compact implementation of the same architecture that
the meta-device tests build at small sizes, tests/fixtures/meta/llama.py (RMSNorm, rotary
embeddings, grouped-query attention, SwiGLU MLP, untied head).

Printed: wall time, peak RSS (bars: under 60 s and 2 GiB), the findings and every weight
layer's predicted gradient (each must have one).

    python benchmarks/scale.py [--own] [--layers N] [--python PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SHAPE = dict(hidden=8192, layers=80, heads=64, kv_heads=8, mlp=28672, vocab=32000)

#: The compact implementation: the LLaMA-shaped decoder the meta-device tests build at small
#: sizes, here at the 70B shape.
OWN = ROOT / "tests" / "fixtures" / "meta" / "llama.py"

BUILD = '''

SHAPE = {shape!r}
USE_TRANSFORMERS = {use_transformers!r}


def build():
    s = SHAPE
    if USE_TRANSFORMERS:
        from transformers import LlamaConfig as HFConfig, LlamaForCausalLM

        cfg = HFConfig(vocab_size=s["vocab"], hidden_size=s["hidden"],
                       intermediate_size=s["mlp"], num_hidden_layers=s["layers"],
                       num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"],
                       max_position_embeddings=4096, attn_implementation="sdpa")
        return LlamaForCausalLM(cfg)
    return Llama(LlamaConfig(hidden=s["hidden"], layers=s["layers"], heads=s["heads"],
                             kv_heads=s["kv_heads"], mlp=s["mlp"], vocab=s["vocab"]))
'''


def model_source(shape: dict, use_transformers: bool) -> str:
    return OWN.read_text() + BUILD.format(shape=shape, use_transformers=use_transformers)


def has_transformers(python: str) -> bool:
    return subprocess.run([python, "-c", "import transformers"], capture_output=True).returncode \
        == 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--own", action="store_true", help="the compact implementation even when "
                    "transformers is installed")
    ap.add_argument("--layers", type=int, default=SHAPE["layers"])
    ap.add_argument("--python", default=sys.executable, help="the interpreter to run archlint "
                    "with (one with transformers installed, for LlamaForCausalLM)")
    args = ap.parse_args()
    shape = dict(SHAPE, layers=args.layers)
    use_hf = not args.own and has_transformers(args.python)
    params = (shape["vocab"] * shape["hidden"] * 2 + shape["layers"] * (
        2 * shape["hidden"] * shape["hidden"]
        + 2 * shape["hidden"] * shape["hidden"] // shape["heads"] * shape["kv_heads"]
        + 3 * shape["hidden"] * shape["mlp"] + 2 * shape["hidden"]) + shape["hidden"])
    print(f"model: {'transformers LlamaForCausalLM' if use_hf else 'own LLaMA implementation'}"
          f", {shape}, {params / 1e9:.1f}B parameters ({params * 4 / 2 ** 30:.0f} GiB in "
          "float32)")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH")
                                     else "")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "llama70b.py"
        path.write_text(model_source(shape, use_hf))
        cmd = [args.python, "-m", "archlint", f"{path}:build", "--input-shape", "1,16",
               "--input-dtype", "int64", "--input-high", str(shape["vocab"]), "--format",
               "json", "--no-cache", "-j", "1", "--timeout", "0"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp)
        wall = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2 ** 20  # KiB -> GiB
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        print(f"archlint failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        return 1
    target = report["targets"][0]
    layers = target["layers"]
    missing = [la["module"] for la in layers if la.get("grad_rms") is None]
    print(f"status: {target['status']}" + (f" ({target['error']})" if target.get("error")
                                           else ""))
    for note in target.get("notes", []):
        print(f"note: {note}")
    print(f"findings: {len(target['findings'])}")
    for f in target["findings"]:
        print(f"  {f['code']} {f.get('module')}: {f['message'][:160]}")
    print(f"weight layers: {len(layers)}, with a predicted gradient: {len(layers) - len(missing)}")
    shown = layers[:4] + layers[-4:] if len(layers) > 8 else layers
    for la in shown:
        print(f"  {la['module']:<40} grad_rms {la['grad_rms']}")
    ok_time, ok_rss = wall < 60, rss < 2
    print(f"wall time: {wall:.1f} s (bar < 60 s: {'ok' if ok_time else 'FAIL'})")
    print(f"peak RSS: {rss:.2f} GiB (bar < 2 GiB: {'ok' if ok_rss else 'FAIL'})")
    good = ok_time and ok_rss and not missing and target["status"] == "ok"
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
