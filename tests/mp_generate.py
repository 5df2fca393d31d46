"""Sample with the engine from a HF directory or a tpt_jax checkpoint on a mesh over every
process's devices, and optionally save the model as a checkpoint from all processes: run under
`launch/local.sh` by tests/test_multiprocess.py, which compares with one process.

    python tests/mp_generate.py MODEL_DIR MESH[/DCN_MESH] [SAVE_DIR]"""

import json
import sys

PROMPTS = [[5, 9, 13], [7, 3, 11, 2, 40, 41], [8], [20, 21, 22, 23]]


def samples(
    model_dir: str,
    mesh_shape: list[int],
    devices=None,
    save_to: str | None = None,
    dcn: list[int] | None = None,
) -> list[list[list[int]]]:
    from tpt_jax.checkpoint import is_checkpoint, load_checkpoint, save_checkpoint
    from tpt_jax.engine import Engine, SamplingParams
    from tpt_jax.hf_io import load_hf_dir
    from tpt_jax.sharding import make_mesh

    mesh = make_mesh(mesh_shape, devices, dcn=dcn)
    load = load_checkpoint if is_checkpoint(model_dir) else load_hf_dir
    model = load(model_dir, mesh=mesh)
    params = SamplingParams(n=2, temperature=0.9, top_p=0.95, max_new_tokens=12, seed=3)
    out = Engine(model, mesh, stop_ids=[150]).generate(PROMPTS, params)
    if save_to is not None:
        save_checkpoint(model, save_to)
    return [[s.tokens for s in per_prompt] for per_prompt in out]


if __name__ == "__main__":
    import jax

    from tpt_jax import distributed

    distributed.initialize()
    from tpt_jax.sharding import make_mesh

    save_to = sys.argv[3] if len(sys.argv) > 3 else None
    shape, dcn = [
        [int(x) for x in part.split(",") if x] for part in (sys.argv[2] + "/").split("/")[:2]
    ]
    got = samples(sys.argv[1], shape, save_to=save_to, dcn=dcn or None)
    # Which processes hold each index of the fsdp axis (one each when fsdp crosses the DCN).
    grid = make_mesh(shape, dcn=dcn or None).devices
    fsdp_processes = [sorted({d.process_index for d in grid[:, j].flat}) for j in range(shape[1])]
    if distributed.is_primary():
        print(json.dumps({"processes": jax.process_count(), "samples": got,
                          "fsdp_processes": fsdp_processes}))  # fmt: skip
