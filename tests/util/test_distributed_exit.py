"""A torchrun rank that joined the process group through saelab leaves it before the interpreter exits."""

import textwrap

from cli_harness import NATIVE_ABORT, run_torchrun

# Collectives, then a plain exit: without leaving the group first, gloo's threads aborted the process
# ("terminate called without an active exception") in 8 of 25 such runs on the 2-core machine.
SCRIPT = textwrap.dedent(
    """
    import torch, torch.distributed as dist
    from saelab.util import distributed
    world = distributed.init_from_env()
    x = torch.ones(1000)
    for _ in range(50):
        dist.all_reduce(x)
        dist.broadcast_object_list([world.rank], src=0)
    print("done", world.rank, flush=True)
    """
)


def test_ranks_exit_cleanly_after_collectives(tmp_path):
    script = tmp_path / "ranks.py"
    script.write_text(SCRIPT)
    for _ in range(3):  # each run alone caught the abort about one time in three before the fix
        done = run_torchrun([str(script)], capture_output=True, text=True, timeout=120)
        assert NATIVE_ABORT not in done.stderr, done.stderr[-2000:]
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.count("done") == 2
