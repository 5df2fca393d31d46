"""XLA's per-device bytes for TRAIN's compiled steps on a mesh over every process's devices:
run under `launch/local.sh` by tests/test_plan.py, which compares `tpt plan --hosts`.

    python tests/mp_plan.py MESH"""

import json
import sys

if __name__ == "__main__":
    import jax

    from tpt_jax import distributed

    distributed.initialize()
    from xla_memory import train_step_bytes

    from tpt_jax.config import TrainConfig
    from tpt_jax.sharding import make_mesh

    mesh = make_mesh([int(x) for x in sys.argv[1].split(",")])
    cfg = TrainConfig(micro_batch=8, global_batch=8, max_len=256)
    measured = train_step_bytes(cfg, mesh)
    if distributed.is_primary():
        print(json.dumps({"processes": jax.process_count(), "bytes": measured}))
