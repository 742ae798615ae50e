"""``train.py`` for torchrun whose rank 0 alone receives SIGTERM after its N-th optimizer step.

Usage: ``python -m torch.distributed.run ... tests/distributed_stop_script.py N <train.py arguments>``.
The other ranks get no signal, so the run shows that all ranks still stop at the same batch.
"""
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import train  # noqa: E402
from trainers.engine.trainer import TrainerX  # noqa: E402


def main() -> int:
    stop_after = int(sys.argv.pop(1))
    steps = []

    def after_step(self) -> None:
        steps.append(1)
        if len(steps) == stop_after and os.environ.get("RANK") == "0":
            os.kill(os.getpid(), signal.SIGTERM)

    TrainerX.after_step = after_step
    return train.main()


if __name__ == "__main__":
    sys.exit(main())
