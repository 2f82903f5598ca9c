"""Side-by-side download benchmark: `crawl2clip download` vs img2dataset, same input, same server.

    .venv/bin/python bench/download_speed.py [--limit N] [--skip-install]

What it does (one run, ~2-5 minutes on a 2-core machine):

1. img2dataset is installed from PyPI into its own venv, `.cache/bench/img2dataset-venv` (reused
   when present), so its pins never touch the project's venv.
2. Input: the 10,000 real (URL, TEXT) rows of /work/shared/data/pairs/url-caption-10k.parquet.
   Every `https://` is rewritten to `http://` (HTTPS through a proxy would need CONNECT tunnels)
   into `.cache/bench/url-caption-10k-http.parquet`, the one input both tools read.
3. The web is one local HTTP *proxy* server on 127.0.0.1, in its own process (an asyncio
   HTTP/1.1 server with keep-alive, so it does not share a GIL with the tools): it answers
   absolute-form `GET http://host/path` with a deterministic JPEG per URL (one of the 7 photos in
   /work/shared/data/photos/, either as is or re-encoded with its longer side at 1024 px -- 14
   variants picked by a hash of the URL), after a deterministic per-URL latency of 20-50 ms;
   `/robots.txt` and TDMRep's `/.well-known/tdmrep.json` are 404s after the same kind of latency
   (no host here has either; before they were answered with a JPEG, crawl2clip downloaded one
   image's bytes per host for its TDMRep lookup). Bounded: idle connections close after
   30 s, request heads over 64 KiB are refused, at most 500,000 requests are served, and the
   server exits by itself after an hour.
4. Runs, all with image_size 256, resize_mode border, jpg, 1000 rows per shard, 2 processes:
     * img2dataset: --processes_count 2 --thread_count 64, proxy via http_proxy/HTTP_PROXY;
     * crawl2clip, Beam DirectRunner multi_processing, 2 workers (64 requests in flight each,
       so 128 in flight like img2dataset's 2 x 64 threads);
     * crawl2clip, the default in-process DirectRunner (1 worker, 128 in flight).
   Each tool runs --repeats times (default 2), interleaved, optionally each run waiting for the
   1-minute load average to fall under --max-load; the figures are medians.
   Measured per run: wall time, successes (sum of the `_stats.json` files), images/s =
   successes / wall, CPU seconds (user+sys of the whole tree, from RUSAGE_CHILDREN), and peak
   memory = the maximum over time of the SUM of RSS over the process tree (polling /proc every
   0.2 s for all descendants of the launched command; the server is not part of the tree), plus
   the largest single-process RSS seen, and os.getloadavg() before and after. The server counts
   the requests it answered per run.
5. Outputs are checked: success counts, the overlap of succeeded URLs, and a few samples read back
   from each tar (decodes, 256x256, caption matches the input row).

Results: bench/results/download_speed.json, and a table on stdout.
Target: crawl2clip (multi_processing) >= 1.5x img2dataset's images/s at equal or lower peak memory.
"""

import argparse
import asyncio
import glob
import hashlib
import io
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import threading
import time
import urllib.parse
import urllib.request

from crawl2clip.transforms.consent.tdmrep import WELL_KNOWN_PATH

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(REPO, ".cache", "bench")
I2D_VENV = os.path.join(CACHE, "img2dataset-venv")
SOURCE = "/work/shared/data/pairs/url-caption-10k.parquet"
PHOTOS = "/work/shared/data/photos"
RESULTS = os.path.join(REPO, "bench", "results", "download_speed.json")
WORK = os.path.join(CACHE, "download_speed")

IMAGE_SIZE = 256
RESIZE_MODE = "border"
SHARD_SIZE = 1000
PROCESSES = 2
THREADS = 64
LATENCY_MS = (20, 50)
MAX_REQUESTS = 500_000
UPSCALED_SIDE = 1024


# ----------------------------------------------------------------------------- the server


def _url_hash(url: str) -> int:
    # Unquoted, so that clients that percent-encode a URL differently (urllib sends it raw, yarl
    # normalises it) still get the same image and latency for it.
    key = urllib.parse.unquote(url)
    return int.from_bytes(hashlib.sha1(key.encode("utf-8", "surrogateescape")).digest()[:8], "big")


def _latency(url: str) -> float:
    lo, hi = LATENCY_MS
    return (lo + (_url_hash(url) >> 16) % (hi - lo + 1)) / 1000.0


def _image_variants() -> list[bytes]:
    from PIL import Image

    variants = []
    for path in sorted(glob.glob(os.path.join(PHOTOS, "*.jpg"))):
        with open(path, "rb") as f:
            raw = f.read()
        variants.append(raw)
        image = Image.open(io.BytesIO(raw)).convert("RGB")
        scale = UPSCALED_SIDE / max(image.size)
        big = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
        out = io.BytesIO()
        big.save(out, format="JPEG", quality=90)
        variants.append(out.getvalue())
    if not variants:
        raise SystemExit(f"no photos in {PHOTOS}")
    return variants


POLICY_FILES = {"/robots.txt": "robots", WELL_KNOWN_PATH: "tdmrep"}  # what a host's 404 stands for


def serve(port_file: str, max_seconds: float) -> None:
    """The stand-in web, run in its own process (`--serve`)."""
    variants = _image_variants()
    stats = {"requests": 0, "images": 0, "robots": 0, "tdmrep": 0, "other": 0, "bytes": 0, "connections": 0,
             "absolute_form": 0, "hosts": set()}

    def reset():
        for k in stats:
            stats[k] = set() if k == "hosts" else 0

    async def respond(writer, code, reason, body, ctype, keep_alive):
        head = (f"HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n").encode("latin-1")
        writer.write(head + body)
        await writer.drain()

    async def handle(reader, writer):
        stats["connections"] += 1
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError,
                        ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                try:
                    method, target, version = lines[0].split(" ", 2)
                except ValueError:
                    await respond(writer, 400, "Bad Request", b"", "text/plain", False)
                    return
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip().lower()
                conn = headers.get("connection", headers.get("proxy-connection", ""))
                keep_alive = "close" not in conn and (version != "HTTP/1.0" or "keep-alive" in conn)
                if target == "/__stats":
                    body = json.dumps({**stats, "hosts": len(stats["hosts"])}).encode()
                    await respond(writer, 200, "OK", body, "application/json", keep_alive)
                    continue
                if target == "/__reset":
                    reset()
                    await respond(writer, 200, "OK", b"{}", "application/json", keep_alive)
                    continue
                stats["requests"] += 1
                if stats["requests"] > MAX_REQUESTS or method not in ("GET", "HEAD"):
                    await respond(writer, 503, "Service Unavailable", b"", "text/plain", False)
                    return
                if target.startswith("http://"):
                    stats["absolute_form"] += 1
                    url = target
                else:  # origin-form: a direct request; rebuild from Host
                    url = f"http://{headers.get('host', 'unknown')}{target}"
                parts = urllib.parse.urlsplit(url)
                stats["hosts"].add(parts.netloc)
                await asyncio.sleep(_latency(url))
                if parts.path in POLICY_FILES:
                    stats[POLICY_FILES[parts.path]] += 1
                    await respond(writer, 404, "Not Found", b"not found", "text/plain", keep_alive)
                else:
                    body = variants[_url_hash(url) % len(variants)]
                    stats["images"] += 1
                    stats["bytes"] += len(body)
                    await respond(writer, 200, "OK", b"" if method == "HEAD" else body, "image/jpeg", keep_alive)
                if not keep_alive:
                    return
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0, limit=64 * 1024, backlog=1024)
        port = server.sockets[0].getsockname()[1]
        with open(port_file + ".tmp", "w") as f:
            f.write(str(port))
        os.replace(port_file + ".tmp", port_file)
        async with server:
            await asyncio.sleep(max_seconds)

    asyncio.run(main())


class Server:
    def __init__(self):
        os.makedirs(WORK, exist_ok=True)
        port_file = os.path.join(WORK, "server.port")
        if os.path.exists(port_file):
            os.remove(port_file)
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve", port_file],
                                     stdin=subprocess.DEVNULL)
        deadline = time.time() + 60
        while not os.path.exists(port_file):
            if self.proc.poll() is not None or time.time() > deadline:
                raise SystemExit("the stand-in server did not start")
            time.sleep(0.05)
        with open(port_file) as f:
            self.port = int(f.read())
        self.url = f"http://127.0.0.1:{self.port}"

    def _get(self, path):
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(self.url + path, timeout=10) as r:
            return json.loads(r.read())

    def stats(self):
        return self._get("/__stats")

    def reset(self):
        self._get("/__reset")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# ----------------------------------------------------------------------------- measuring


def _children_map():
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            children.setdefault(ppid, []).append(int(entry))
        except (OSError, ValueError):
            continue
    return children


def _rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class TreeMemory(threading.Thread):
    """Peak of the summed RSS of a process and all its descendants, polled every 0.2 s."""

    def __init__(self, root_pid, interval=0.2):
        super().__init__(daemon=True)
        self.root, self.interval = root_pid, interval
        self.peak_sum_kib = self.peak_single_kib = self.peak_procs = 0
        self._stop_event = threading.Event()

    def run(self):
        while not self._stop_event.is_set():
            children = _children_map()
            tree, todo = [], [self.root]
            while todo:
                pid = todo.pop()
                tree.append(pid)
                todo.extend(children.get(pid, []))
            rss = [_rss_kib(pid) for pid in tree]
            self.peak_sum_kib = max(self.peak_sum_kib, sum(rss))
            self.peak_single_kib = max(self.peak_single_kib, max(rss, default=0))
            self.peak_procs = max(self.peak_procs, sum(1 for r in rss if r))
            self._stop_event.wait(self.interval)

    def stop(self):
        self._stop_event.set()
        self.join()


def _proc_cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy():
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def run_measured(name, cmd, env, log_path, server, timeout):
    server.reset()
    load_before = [round(v, 2) for v in os.getloadavg()]
    server_cpu0, (busy0, total0) = _proc_cpu_s(server.proc.pid), _machine_busy()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log_path, "w") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=WORK, start_new_session=True)
        mem = TreeMemory(proc.pid)
        mem.start()
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
        wall = time.perf_counter() - t0
        mem.stop()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    server_cpu, (busy1, total1) = _proc_cpu_s(server.proc.pid) - server_cpu0, _machine_busy()
    machine_busy = (busy1 - busy0) / max(1, total1 - total0)
    load_after = [round(v, 2) for v in os.getloadavg()]
    print(f"  {name}: rc={rc} wall={wall:.1f}s cpu={cpu:.1f}s peak_tree_rss={mem.peak_sum_kib / 1024:.0f} MiB "
          f"server_cpu={server_cpu:.1f}s machine_busy={machine_busy:.0%} load {load_before[0]} -> {load_after[0]}",
          flush=True)
    return {"command": cmd, "returncode": rc, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "loadavg_before": load_before, "loadavg_after": load_after,
            "peak_rss_tree_sum_mib": round(mem.peak_sum_kib / 1024, 1),
            "peak_rss_largest_process_mib": round(mem.peak_single_kib / 1024, 1),
            "max_live_processes": mem.peak_procs, "server_cpu_s": round(server_cpu, 2),
            "machine_cpu_busy_fraction": round(machine_busy, 3), "server": server.stats(), "log": os.path.relpath(log_path, REPO)}


# ----------------------------------------------------------------------------- outputs


def shard_stats(out_dir):
    succ = total = 0
    statuses = {}
    for path in sorted(glob.glob(os.path.join(out_dir, "*_stats.json"))):
        with open(path) as f:
            s = json.load(f)
        succ += s.get("successes", 0)
        total += s.get("count", 0)
        for k, v in (s.get("status_dict") or s.get("statuses") or {}).items():
            statuses[k] = statuses.get(k, 0) + v
    return succ, total, statuses


def succeeded_urls(out_dir, url_col):
    import pyarrow.parquet as pq

    urls = set()
    for path in sorted(glob.glob(os.path.join(out_dir, "*.parquet"))):
        t = pq.read_table(path)
        col = url_col if url_col in t.column_names else "url"
        for url, status in zip(t.column(col).to_pylist(), t.column("status").to_pylist()):
            if status == "success":
                urls.add(url)
    return urls


def read_back(out_dir, captions, n=5):
    """Open the first samples of the first tar: image decodes, size, caption matches the input."""
    from PIL import Image

    checked = []
    tars = sorted(glob.glob(os.path.join(out_dir, "*.tar")))
    if not tars:
        return checked
    with tarfile.open(tars[0]) as tar:
        members = {m.name: m for m in tar.getmembers()}
        keys = sorted({name.rsplit(".", 1)[0] for name in members if name.endswith(".jpg")})[:n]
        for key in keys:
            img = Image.open(io.BytesIO(tar.extractfile(members[key + ".jpg"]).read()))
            img.load()
            text = tar.extractfile(members[key + ".txt"]).read().decode("utf-8")
            meta = json.loads(tar.extractfile(members[key + ".json"]).read())
            url = meta.get("url") or meta.get("URL")
            checked.append({"key": key, "size": list(img.size), "mode": img.mode,
                            "caption_matches_input": captions.get(url) == text, "url": url})
    return checked


# ----------------------------------------------------------------------------- main


def wait_for_quiet(max_load, max_wait):
    """Seconds waited until the 1-minute load average fell under max_load (the machine is shared)."""
    t0 = time.monotonic()
    while max_load and os.getloadavg()[0] >= max_load and time.monotonic() - t0 < max_wait:
        time.sleep(5)
    return round(time.monotonic() - t0, 1)


_MEDIAN_KEYS = ("wall_s", "cpu_s", "images_per_s", "cpu_ms_per_image", "peak_rss_tree_sum_mib",
                "peak_rss_largest_process_mib", "server_cpu_s", "machine_cpu_busy_fraction", "successes")


def summarize(runs):
    """Medians of a tool's runs, with every run kept under `runs`."""
    ok = [r for r in runs if r["returncode"] == 0] or runs
    medians = {key: round(statistics.median(r[key] for r in ok if r.get(key) is not None), 3) for key in _MEDIAN_KEYS}
    medians["loadavg_1min_before_runs"] = [r["loadavg_before"][0] for r in runs]
    return {**medians, "runs": runs}


def ensure_img2dataset(skip_install):
    exe = os.path.join(I2D_VENV, "bin", "img2dataset")
    if not os.path.exists(exe) and not skip_install:
        subprocess.run(["python3", "-m", "venv", I2D_VENV], check=True)
        subprocess.run([os.path.join(I2D_VENV, "bin", "pip"), "install", "-q", "img2dataset"], check=True)
    if not os.path.exists(exe):
        raise SystemExit("img2dataset is not installed and could not be installed")
    out = subprocess.run([os.path.join(I2D_VENV, "bin", "pip"), "show", "img2dataset"], capture_output=True,
                         text=True).stdout
    version = next((l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Version:")), "?")
    return exe, version


def make_input(limit):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(SOURCE, columns=["URL", "TEXT"])
    if limit:
        table = table.slice(0, limit)
    urls = [("http://" + u[len("https://"):]) if u and u.startswith("https://") else u
            for u in table.column("URL").to_pylist()]
    table = pa.table({"URL": pa.array(urls, pa.string()), "TEXT": table.column("TEXT")})
    path = os.path.join(CACHE, f"url-caption-{table.num_rows}-http.parquet")
    pq.write_table(table, path)
    captions = dict(zip(urls, table.column("TEXT").to_pylist()))
    return path, table.num_rows, captions


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--serve", metavar="PORT_FILE", help=argparse.SUPPRESS)
    ap.add_argument("--limit", type=int, default=0, help="use only the first N rows (0: all 10,000)")
    ap.add_argument("--skip-install", action="store_true")
    ap.add_argument("--timeout", type=float, default=600, help="per-run limit in seconds")
    ap.add_argument("--only", nargs="*", help="run only these: img2dataset crawl2clip_mp crawl2clip_inprocess")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each tool, interleaved; medians are reported")
    ap.add_argument("--max-load", type=float, default=0,
                    help="before each run, wait until the 1-minute load average is under this (0: do not wait)")
    ap.add_argument("--max-wait", type=float, default=600, help="longest wait for --max-load, seconds")
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, max_seconds=3600)
        return

    os.makedirs(CACHE, exist_ok=True)
    i2d_exe, i2d_version = ensure_img2dataset(args.skip_install)
    in_path, rows, captions = make_input(args.limit)
    print(f"input: {in_path} ({rows} rows), img2dataset {i2d_version}", flush=True)
    if os.path.exists(WORK):
        shutil.rmtree(WORK)
    os.makedirs(WORK)

    server = Server()
    print(f"server: {server.url} (pid {server.proc.pid})", flush=True)
    base_env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "no_proxy",
                                                                         "all_proxy")}
    common = {"image_size": IMAGE_SIZE, "resize_mode": RESIZE_MODE, "format": "jpg", "shard_size": SHARD_SIZE}
    c2c = os.path.join(REPO, ".venv", "bin", "crawl2clip")
    runs = {
        "img2dataset": ([i2d_exe, "--url_list", in_path, "--input_format", "parquet", "--url_col", "URL",
                         "--caption_col", "TEXT", "--output_format", "webdataset", "--output_folder",
                         os.path.join(WORK, "img2dataset"), "--processes_count", str(PROCESSES),
                         "--thread_count", str(THREADS), "--image_size", str(IMAGE_SIZE), "--resize_mode",
                         RESIZE_MODE, "--encode_format", "jpg", "--number_sample_per_shard", str(SHARD_SIZE),
                         "--disallowed_header_directives", "[]", "--enable_wandb", "False"],
                        {**base_env, "http_proxy": server.url, "HTTP_PROXY": server.url}),
        "crawl2clip_mp": ([c2c, "download", "--input", in_path, "--output-dir", os.path.join(WORK, "crawl2clip_mp"),
                           "--proxy", server.url, "--image-size", str(IMAGE_SIZE), "--resize-mode", RESIZE_MODE,
                           "--image-format", "jpg", "--shard-size", str(SHARD_SIZE),
                           "--max-concurrency", str(THREADS), "--direct_running_mode", "multi_processing", "--direct_num_workers", str(PROCESSES)],
                          base_env),
        "crawl2clip_inprocess": ([c2c, "download", "--input", in_path, "--output-dir",
                                  os.path.join(WORK, "crawl2clip_inprocess"), "--proxy", server.url,
                                  "--image-size", str(IMAGE_SIZE), "--resize-mode", RESIZE_MODE, "--image-format",
                                  "jpg", "--shard-size", str(SHARD_SIZE),
                                  "--max-concurrency", str(PROCESSES * THREADS)], base_env),
    }
    names = [name for name in runs if not args.only or name in args.only]
    measured = {name: [] for name in names}
    urls = {}
    try:
        # Interleaved (A B C A B C ...), so a change in the machine's load hits every tool alike.
        for repeat in range(args.repeats):
            for name in names:
                cmd, env = runs[name]
                out_dir = cmd[cmd.index("--output_folder" if name == "img2dataset" else "--output-dir") + 1]
                if os.path.exists(out_dir):
                    shutil.rmtree(out_dir)
                waited = wait_for_quiet(args.max_load, args.max_wait)
                r = run_measured(name, cmd, env, os.path.join(WORK, f"{name}-{repeat}.log"), server, args.timeout)
                succ, total, statuses = shard_stats(out_dir)
                r.update({"repeat": repeat, "waited_for_load_s": waited, "successes": succ, "rows_in_stats": total,
                          "statuses": statuses,
                          "images_per_s": round(succ / r["wall_s"], 1) if r["wall_s"] else None,
                          "cpu_ms_per_image": round(1000 * r["cpu_s"] / succ, 2) if succ else None,
                          "samples_read_back": read_back(out_dir, captions)})
                urls[name] = succeeded_urls(out_dir, "URL")
                print(f"    successes={succ}/{total} images/s={r['images_per_s']} server={r['server']}", flush=True)
                measured[name].append(r)
    finally:
        server.stop()
    results = {name: summarize(rs) for name, rs in measured.items() if rs}

    # comparability of the outputs (of each tool's last run)
    overlap = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            ua, ub = urls.get(a, set()), urls.get(b, set())
            overlap[f"{a}~{b}"] = {"both": len(ua & ub), f"only_{a}": len(ua - ub), f"only_{b}": len(ub - ua)}

    def ratio(name, key):
        if name in results and "img2dataset" in results and results["img2dataset"].get(key):
            return round(results[name][key] / results["img2dataset"][key], 3)
        return None

    comparisons = {}
    for name in ("crawl2clip_mp", "crawl2clip_inprocess"):
        if name in results and "img2dataset" in results:
            tput, mem = ratio(name, "images_per_s"), ratio(name, "peak_rss_tree_sum_mib")
            comparisons[name] = {"images_per_s_ratio_vs_img2dataset": tput,
                                 "peak_memory_ratio_vs_img2dataset": mem,
                                 "cpu_s_ratio_vs_img2dataset": ratio(name, "cpu_s"),
                                 "target_met": bool(tput is not None and tput >= 1.5 and mem is not None and mem <= 1.0)}
    report = {
        "benchmark": "crawl2clip download vs img2dataset, same input and local proxy server",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "input": {"source": SOURCE, "rows": rows, "rewritten": "https:// -> http:// (both tools read the same copy)",
                  "path": os.path.relpath(in_path, REPO)},
        "server": {"kind": "asyncio HTTP/1.1 proxy (absolute-form GET), own process, keep-alive",
                   "latency_ms_per_request": list(LATENCY_MS), "latency": "deterministic per URL (sha1)",
                   "images": f"7 photos from {PHOTOS}, each as is and re-encoded at {UPSCALED_SIDE}px longer side "
                             "(q90), picked by sha1(URL) % 14",
                   "robots.txt and .well-known/tdmrep.json": "404 after the latency"},
        "settings": {**common, "processes": PROCESSES, "img2dataset_thread_count": THREADS,
                     "crawl2clip_max_concurrency": {"crawl2clip_mp": f"{THREADS} per worker, {PROCESSES} workers",
                                                    "crawl2clip_inprocess": f"{PROCESSES * THREADS}, one process"},
                     "fairness": f"every tool gets the same input file, server, resize settings (image_size "
                                 f"{IMAGE_SIZE}, {RESIZE_MODE}, jpg quality 95: both defaults) and budget: at most "
                                 f"{PROCESSES} processes doing the work and {PROCESSES * THREADS} requests in flight "
                                 f"(img2dataset: {PROCESSES} processes x {THREADS} threads; crawl2clip_mp: "
                                 f"{PROCESSES} Beam workers x {THREADS}; crawl2clip_inprocess: one process, "
                                 f"{PROCESSES * THREADS} in flight). crawl2clip also fetches every host's "
                                 "robots.txt and tdmrep.json and checks X-Robots-Tag (img2dataset's header check is switched off), "
                                 "so it makes more requests; its image threads are one per core "
                                 "(os.cpu_count()) in each process",
                     "repeats": f"{args.repeats} runs per tool, interleaved; per-tool figures are medians, "
                                "comparisons are ratios of medians; os.getloadavg() before and after every run",
                     "memory": "peak over time of the sum of RSS over the launched process tree, /proc polled "
                               "every 0.2 s (server excluded); peak_rss_largest_process_mib is the largest "
                               "single process seen",
                     "cpu": "user+sys of the process tree (RUSAGE_CHILDREN delta); server_cpu_s is the "
                            "stand-in server's own, machine_cpu_busy_fraction all cores from /proc/stat"},
        "img2dataset_version": i2d_version,
        "results": results,
        "output_overlap_of_succeeded_urls": overlap,
        "target": "crawl2clip images/s >= 1.5x img2dataset's at equal or lower peak memory",
        "comparisons": comparisons,
    }
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump(report, f, indent=2, default=str)

    print()
    print(f"{'run':<22}{'wall s':>8}{'ok':>7}{'img/s':>8}{'cpu s':>8}{'ms cpu/img':>11}{'peak MiB':>10}"
          f"{'max proc':>10}")
    for name, r in results.items():
        print(f"{name:<22}{r['wall_s']:>8}{r['successes']:>7}{r['images_per_s']:>8}{r['cpu_s']:>8}"
              f"{r['cpu_ms_per_image'] or 0:>11}{r['peak_rss_tree_sum_mib']:>10}{r['peak_rss_largest_process_mib']:>10}")
    for name, c in comparisons.items():
        print(f"{name} / img2dataset: images/s x{c['images_per_s_ratio_vs_img2dataset']}, "
              f"memory x{c['peak_memory_ratio_vs_img2dataset']}, target met: {c['target_met']}")
    print(f"overlap: {json.dumps(overlap)}")
    print(f"written: {os.path.relpath(RESULTS, REPO)}")


if __name__ == "__main__":
    main()
