"""Suite-wide settings. The tests run tiny tensors, where intra-op threads buy nothing and, on a shared
2-core machine, OpenMP spin-waiting made the suite several times slower (measured: a DARTS C=8 step took
0.8 s on 1 thread vs 5.8 s on 2 threads with another process busy)."""

import torch

torch.set_num_threads(1)
