"""Time one synchronization of 2 gloo ranks: rows found by a full compare (the old way) against rows the trainer marked.

    .venv/bin/python bench/sync_cost.py                 # corpus_en's shape: 67,244 x 100
    .venv/bin/python bench/sync_cost.py --rows 1000000 --changed 200000

Each rank changes `--changed` rows of both matrices before each synchronization, drawn
with a skew towards low row ids as word frequencies are. Both ways then run the same
`Replicas.synchronize`; the full compare first builds the marks by comparing every row
with its copy from the last synchronization. The script prints the mean wall and CPU
time of rank 0 per synchronization, over the fastest 8 of 12 rounds of each way. Ranks
talk through gloo on 127.0.0.1 only.
"""

import argparse
import os
import socket
import subprocess
import sys
import time


def free_port():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        return listener.getsockname()[1]


def compared_rows(matrices, bases, block=1 << 16):
    import torch

    marks = []
    for matrix, base in zip(matrices, bases):
        changed = torch.zeros(matrix.shape[0], dtype=torch.bool)
        for begin in range(0, matrix.shape[0], block):
            changed[begin : begin + block] = (matrix[begin : begin + block] != base[begin : begin + block]).any(1)
        marks.append(changed)
    return marks


def rank_main(rank, port, rows, dim, changed, rounds=12, fastest_count=8):
    import torch
    import torch.distributed as dist

    from embcli.distributed import Replicas

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    generator = torch.Generator().manual_seed(rank)
    matrices = [torch.randn(rows, dim, generator=torch.Generator().manual_seed(9)), torch.zeros(rows, dim)]
    touched = [torch.zeros(rows, dtype=torch.bool), torch.zeros(rows, dtype=torch.bool)]
    replicas = Replicas(matrices, touched)
    times = {"full compare": [], "marked rows": []}
    for _ in range(rounds):
        for way in times:
            picked = (torch.rand(changed, generator=generator) ** 3 * rows).long()
            for matrix in matrices:
                matrix[picked] += 0.001
            dist.barrier()
            wall, cpu = time.perf_counter(), time.process_time()
            if way == "full compare":
                for mask, found in zip(touched, compared_rows(matrices, replicas.base)):
                    mask.copy_(found)
            else:
                for mask in touched:
                    mask[picked] = True
            replicas.synchronize()
            times[way].append((time.perf_counter() - wall, time.process_time() - cpu))
    if rank == 0:
        for way, values in times.items():
            fastest = sorted(values)[:fastest_count]
            print(f"{way}: wall {sum(v[0] for v in fastest) / fastest_count * 1000:.0f} ms, "
                  f"CPU {sum(v[1] for v in fastest) / fastest_count * 1000:.0f} ms per synchronization "
                  f"({rows:,} x {dim} matrices, {changed:,} rows changed per rank)", flush=True)
    dist.destroy_process_group()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=67244)
    parser.add_argument("--dim", type=int, default=100)
    parser.add_argument("--changed", type=int, default=20000)
    parser.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank is not None:
        rank_main(args.rank, args.port, args.rows, args.dim, args.changed)
        return
    port = free_port()
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    command = [sys.executable, __file__, "--rows", str(args.rows), "--dim", str(args.dim),
               "--changed", str(args.changed), "--port", str(port), "--rank"]
    ranks = [subprocess.Popen(command + [str(rank)], env=env) for rank in (0, 1)]
    codes = [rank.wait() for rank in ranks]
    if any(codes):
        raise SystemExit(f"a rank failed (exit codes {codes})")


if __name__ == "__main__":
    main()
