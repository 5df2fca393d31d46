"""Package hygiene: import layers (a lower layer never imports a higher one), no torch at run
time, and weights streamed shard by shard."""

import ast
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
from hf_tiny import make_hf_model

import tpt_jax
from tpt_jax import hf_io
from tpt_jax.sharding import TRAIN_RULES, make_mesh

LAYERS = {  # DESIGN.md's module map
    "tpt_jax.errors": 0,
    "tpt_jax.models.config": 0,
    "tpt_jax.grading": 0,
    "tpt_jax.config": 0,
    "tpt_jax.tasks.base": 0,
    "tpt_jax.tasks.prompts": 0,
    "tpt_jax.tasks.gsm8k": 0,
    "tpt_jax.tasks.arithmetic": 0,
    "tpt_jax.tasks.arithmetic_words": 0,
    "tpt_jax.tasks.plugin": 0,
    "tpt_jax.tasks.answers": 0,
    "tpt_jax.hub": 0,
    "tpt_jax.gemma_jax_io": 3,
    "tpt_jax.tasks.code": 0,
    "tpt_jax.tasks.math": 0,
    "tpt_jax.sandbox": 0,
    "tpt_jax.programs": 0,
    "tpt_jax.prune": 0,
    "tpt_jax.metrics": 0,
    "tpt_jax.report": 0,
    "tpt_jax.faults": 0,
    "tpt_jax.stats": 0,
    "tpt_jax.stages": 0,
    "tpt_jax.prefetch": 0,
    "tpt_jax.compile_cache": 0,
    "tpt_jax.storage": 0,
    "tpt_jax.losses": 1,
    "tpt_jax.sharding": 1,
    "tpt_jax.distributed": 1,
    "tpt_jax.memory": 1,
    "tpt_jax.plan": 4,  # reads a checkpoint's config (layer 3) to plan a run on it
    "tpt_jax.safetensors_io": 1,
    "tpt_jax.tokenizer": 1,
    "tpt_jax.models.attention": 2,
    "tpt_jax.models.layers": 2,
    "tpt_jax.models.transformer": 2,
    "tpt_jax.models.hf_names": 2,
    "tpt_jax.hf_io": 3,
    "tpt_jax.gguf_io": 3,
    "tpt_jax.checkpoint": 3,
    "tpt_jax.engine.sampling": 3,
    "tpt_jax.engine.slots": 3,
    "tpt_jax.engine.engine": 3,
    "tpt_jax.data": 3,
    "tpt_jax.api": 4,
    "tpt_jax.train": 4,
    "tpt_jax.think": 4,
    "tpt_jax.evaluate": 4,
    "tpt_jax.round": 5,
    "tpt_jax.cli": 6,
}
ROOT = Path(tpt_jax.__file__).parent


def module_name(path: Path) -> str:
    return ".".join(("tpt_jax",) + path.relative_to(ROOT).with_suffix("").parts)


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_every_module_has_a_layer():
    mods = {module_name(p) for p in ROOT.rglob("*.py") if p.name != "__init__.py"}
    assert mods == set(LAYERS)


def test_no_module_imports_a_higher_layer():
    for path in ROOT.rglob("*.py"):
        if path.name == "__init__.py":
            continue
        me = module_name(path)
        for dep in imported(path) & set(LAYERS):
            assert LAYERS[dep] <= LAYERS[me], f"{me} (layer {LAYERS[me]}) imports {dep}"


def test_package_never_imports_torch_or_transformers():
    code = (
        "import sys, tpt_jax, tpt_jax.api, tpt_jax.cli, tpt_jax.gguf_io;"
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_sharded_load_reads_only_each_devices_slice(tmp_path, monkeypatch):
    """The 70B rule: with fsdp x tensor sharding no callback copies out a whole weight matrix."""
    make_hf_model("llama_untied_k1").save_pretrained(tmp_path)
    biggest = []
    real = jax.make_array_from_callback

    def spy(shape, sharding, callback):
        def wrapped(index):
            out = callback(index)
            biggest.append((np.asarray(out).size, int(np.prod(shape))))
            return out

        return real(shape, sharding, wrapped)

    monkeypatch.setattr(hf_io.jax, "make_array_from_callback", spy)
    hf_io.load_hf_dir(tmp_path, mesh=make_mesh((1, 4, 2)), rules=TRAIN_RULES)
    matrices = [(got, full) for got, full in biggest if full >= 48 * 80]
    assert matrices and all(got <= full // 4 for got, full in matrices)
