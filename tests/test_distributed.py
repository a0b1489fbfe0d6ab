"""Two CPU ranks on gloo: identical alphas and genotype on every rank, rank 0 alone writes, resume works."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dnas_fast.search import SearchConfig, Searcher, run_search

CONFIG = dict(
    space="nb201", space_args={"C": 4, "N": 1}, data="digits", data_args={"limit": 256}, epochs=2,
    batch_size=16, max_steps_per_epoch=3, backend="reference",
)  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank, world_size, port, run_dir, results, resume_after):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        config = SearchConfig(**CONFIG)
        run_search(config, run_dir, rank=rank, world_size=world_size, log=lambda *_: None, stop_after=resume_after)
        derived = run_search(config, run_dir, resume=True, rank=rank, world_size=world_size, log=lambda *_: None)
        searcher = Searcher(config, run_dir, rank, world_size)
        searcher.load(torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=False))
        alphas = {k: v.detach().clone() for k, v in searcher.strategy.alphas.items()}
        torch.save({"derived": derived, "alphas": alphas}, os.path.join(results, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_agree_and_only_rank0_writes(tmp_path):
    run_dir, results = tmp_path / "run", tmp_path / "results"
    results.mkdir()
    mp.spawn(worker, args=(2, free_port(), str(run_dir), str(results), 1), nprocs=2, join=True)
    r0, r1 = (torch.load(results / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["derived"] == r1["derived"]
    for group in r0["alphas"]:
        assert torch.equal(r0["alphas"][group], r1["alphas"][group])
        assert not torch.allclose(r0["alphas"][group], torch.zeros_like(r0["alphas"][group]), atol=1e-3)
    lines = (run_dir / "log.jsonl").read_text().splitlines()
    assert len(lines) == 3  # rank 0 only: the header, one line per epoch across the resume
