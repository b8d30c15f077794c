"""Benchmark memory against corpus size: build-vocab and one epoch of train on 1x and 10x corpus_en.

    .venv/bin/python bench/big_corpus.py                   # factors 1 and 10
    .venv/bin/python bench/big_corpus.py --python /work/main/.venv/bin/python   # another checkout

The Nx corpus is built with --min-count N x 5, so every run has the same vocabulary
and only the corpus length changes. The corpus is streamed through build-vocab's standard input, decompressed and repeated
`factor` times by this script, so no 10x file is written (the token cache of the 10x
run still takes 4 bytes per token on disk). Each command runs alone in its own process
(train with --threads 1), and this script samples it every 0.2 s:
- peak RSS: the kernel's high-water mark (VmHWM), which counts every resident page,
  including pages of memory-mapped files;
- peak anonymous: the largest RssAnon sample, memory the process allocated itself;
- peak file-backed: the largest RssFile sample, resident pages of mapped files, which
  the kernel can drop and read again;
- peak USS and PSS: the largest sums from /proc/PID/smaps_rollup (USS = private clean +
  private dirty pages, PSS = pages shared with other processes divided among them).
Growth is the 10x value over the 1x value, minus 1.
"""

import argparse
import gzip
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from scale_common import DATA

FIELDS = ("peak_rss", "peak_anon", "peak_file", "peak_uss", "peak_pss")


def read_kilobytes(path, names):
    values = {}
    try:
        with open(path, encoding="ascii") as handle:
            for line in handle:
                key, _, rest = line.partition(":")
                if key in names:
                    values[key] = int(rest.split()[0])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return values


def sample(pid, peaks):
    status = read_kilobytes(f"/proc/{pid}/status", {"VmHWM", "RssAnon", "RssFile"})
    rollup = read_kilobytes(f"/proc/{pid}/smaps_rollup", {"Pss", "Private_Clean", "Private_Dirty"})
    if not status:
        return
    current = {
        "peak_rss": status.get("VmHWM", 0),
        "peak_anon": status.get("RssAnon", 0),
        "peak_file": status.get("RssFile", 0),
        "peak_uss": rollup.get("Private_Clean", 0) + rollup.get("Private_Dirty", 0),
        "peak_pss": rollup.get("Pss", 0),
    }
    for key, value in current.items():
        peaks[key] = max(peaks.get(key, 0), value)


def resident_by_file(pid):
    """Return {path: resident kB} of the file-backed mappings in /proc/PID/smaps."""
    resident = {}
    name = None
    try:
        with open(f"/proc/{pid}/smaps", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                first = line.split(None, 1)[0]
                if "-" in first and not first.endswith(":"):
                    # A mapping's header: address range, permissions, offset, device, inode, path.
                    parts = line.split(None, 5)
                    name = parts[5].strip() if len(parts) > 5 and parts[5].startswith("/") else None
                elif first == "Rss:" and name is not None:
                    resident[name] = resident.get(name, 0) + int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return resident


def largest_files(resident, count=6):
    """Return the `count` largest entries of a resident_by_file() result as text, in MB."""
    top = sorted(resident.items(), key=lambda item: -item[1])[:count]
    return ", ".join(f"{os.path.basename(path)} {kilobytes / 1024:.1f}" for path, kilobytes in top)


def run_measured(command, feed=None, by_file=None):
    """Run `command`, sampling its memory; return (seconds, peaks in MB).

    With a dict `by_file`, also read /proc/PID/smaps about once a second and store the
    last reading under "last" and the reading with the most file-backed kB under "peak".
    """
    process = subprocess.Popen(command, stdin=subprocess.PIPE if feed else subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    writer = None
    if feed:
        writer = threading.Thread(target=feed, args=(process.stdin,), daemon=True)
        writer.start()
    errors = []
    reader = threading.Thread(target=lambda: errors.append(process.stderr.read()), daemon=True)
    reader.start()
    peaks = {}
    started = time.time()
    samples = 0
    while process.poll() is None:
        sample(process.pid, peaks)
        if by_file is not None and samples % 5 == 0:
            resident = resident_by_file(process.pid)
            if resident:
                by_file["last"] = resident
                if sum(resident.values()) >= sum(by_file.get("peak", {}).values()):
                    by_file["peak"] = resident
        samples += 1
        time.sleep(0.2)
    seconds = time.time() - started
    reader.join()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{errors[0].decode()[-3000:]}")
    return seconds, {key: value / 1024 for key, value in peaks.items()}


def repeated_corpus(path, factor):
    def feed(pipe):
        try:
            for _ in range(factor):
                with gzip.open(path, "rb") as source:
                    shutil.copyfileobj(source, pipe, 1 << 20)
                # Keep the last line of one copy from running into the first of the next.
                pipe.write(b"\n")
        except BrokenPipeError:
            pass
        finally:
            pipe.close()

    return feed


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default=str(DATA / "corpus_en.txt.gz"))
    parser.add_argument("--factors", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--python", default=sys.executable, help="interpreter whose embcli is measured")
    parser.add_argument("--dim", type=int, default=100)
    parser.add_argument("--min-count", type=int, default=5, help="for the 1x corpus; N x corpus uses N times it")
    args = parser.parse_args()

    embcli = [args.python, "-m", "embcli"]
    env_note = os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    work = tempfile.mkdtemp(prefix="embcli-bench-big-", dir=os.environ.get("TMPDIR"))
    results = {}
    try:
        for factor in args.factors:
            model = os.path.join(work, f"x{factor}")
            # Every count is `factor` times the 1x count, so this keeps the same vocabulary.
            min_count = str(args.min_count * factor)
            build_seconds, build = run_measured(embcli + ["build-vocab", "-q", "-m", model, "-",
                                                          "--min-count", min_count],
                                                feed=repeated_corpus(args.corpus, factor))
            tokens = os.path.getsize(os.path.join(model, "tokens.npy")) // 4
            with open(os.path.join(model, "vocab.tsv"), "rb") as handle:
                words = sum(1 for _ in handle)
            print(f"{factor}x: build-vocab {build_seconds:.0f} s, {tokens:,} ids in the cache, {words:,} words, "
                  + ", ".join(f"{k} {v:,.0f} MB" for k, v in build.items()), flush=True)
            by_file = {}
            train_seconds, trained = run_measured(embcli + ["train", "-q", "-m", model, "--epochs", "1",
                                                            "--threads", "1", "--dim", str(args.dim)],
                                                  by_file=by_file)
            print(f"{factor}x: train {train_seconds:.0f} s, "
                  + ", ".join(f"{k} {v:,.0f} MB" for k, v in trained.items()), flush=True)
            for reading in ("peak", "last"):
                if reading in by_file:
                    total = sum(by_file[reading].values()) / 1024
                    print(f"{factor}x: train, file-backed MB by file at the {reading} reading "
                          f"({total:,.0f} MB in all): {largest_files(by_file[reading])}", flush=True)
            results[factor] = (tokens, build, trained)
            shutil.rmtree(model)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nembcli from {args.python} (OMP_WAIT_POLICY={env_note})")
    print("| step | factor | ids in cache | " + " | ".join(f"{f} MB" for f in FIELDS) + " |")
    print("|---|---:|---:|" + "---:|" * len(FIELDS))
    for step, position in (("build-vocab", 1), ("train, 1 epoch", 2)):
        for factor, values in results.items():
            cells = " | ".join(f"{values[position].get(f, 0):,.0f}" for f in FIELDS)
            print(f"| {step} | {factor}x | {values[0]:,} | {cells} |")
    low, high = min(results), max(results)
    if low != high:
        for step, position in (("build-vocab", 1), ("train", 2)):
            growth = ", ".join(
                f"{f} {results[high][position][f] / max(results[low][position][f], 1e-9) - 1:+.1%}" for f in FIELDS)
            print(f"{step} growth {low}x -> {high}x: {growth}")


if __name__ == "__main__":
    main()
