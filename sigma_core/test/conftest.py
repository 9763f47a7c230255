import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

# The CI machine has 2 cores; a second OpenMP thread stalls badly under contention.
torch.set_num_threads(1)

