"""Re-make docs/dashboard.png: tandem on the prod profile, some mixed traffic, a headless Chromium capture.

    .venv/bin/python docs/make_screenshot.py [--out docs/dashboard.png] [--seconds 62]

Serves the random-weight tiny model twice (`tiny` on the paged engine, `tiny-gguf` on llama.cpp, so both
engine panels show) with access control on: team `product` sends chat, completions and streams (plus a
404 and a 400 now and then), team `research` has a key limited to 2 requests a minute and collects 429s.
The page is polled every 2 s meanwhile, as an open /dashboard would, and captured while traffic still runs.
Needs `chromium` (Debian package) on PATH.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
MASTER_KEY = "sk-tandem-screenshot-master"
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--window-size=1400,1000",
)  # fmt: skip
PROMPTS = (
    "Summarise the incident report in three bullet points.",
    "Write a haiku about paged attention.",
    "Translate 'the cache is warm' into French.",
    "List five prime numbers.",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_tandem(workdir: Path, port: int) -> subprocess.Popen:
    sys.path.insert(0, str(ROOT))
    from backends.tiny_model import make_tiny_model

    tiny = make_tiny_model(workdir / "tiny", arch="llama", seed=0)
    # a small KV pool (40 blocks of 16 tokens), so that a few concurrent requests visibly fill it
    engine = {"max_num_seqs": 16, "max_num_batched_tokens": 1024, "num_kv_blocks": 40}
    models = [
        {"name": "tiny", "backend": "paged", "path": str(tiny.hf_dir), "aliases": ["default"],
         "preload": True, "engine": engine},
        {"name": "tiny-gguf", "backend": "llamacpp", "path": str(tiny.gguf_path), "preload": True},
    ]  # fmt: skip
    config = workdir / "tandem.yaml"
    config.write_text(yaml.safe_dump({"profile": "prod", "profiles": {"prod": {"models": models}}}))
    env = {**os.environ, "TANDEM_HOME": str(workdir / "home"), "TANDEM_MASTER_KEY": MASTER_KEY}
    command = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--port", str(port)]
    log = (workdir / "server.log").open("wb")
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"tandem exited:\n{(workdir / 'server.log').read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    process.kill()
    raise SystemExit("tandem did not become healthy")


def create_key(base: str, name: str, team: str, **limits: int) -> str:
    body = {"name": name, "team": team, **limits}  # KeyCreate: the limits sit beside name and team
    response = httpx.post(f"{base}/admin/keys", json=body, headers={"authorization": f"Bearer {MASTER_KEY}"})
    response.raise_for_status()
    return response.json()["key"]


def product_traffic(base: str, key: str, stop: threading.Event, seed: int) -> None:
    rng, headers = random.Random(seed), {"authorization": f"Bearer {key}"}
    with httpx.Client(base_url=f"{base}/v1", headers=headers, timeout=120) as http:
        for turn in itertools.count():
            if stop.is_set():
                return
            prompt = rng.choice(PROMPTS)
            model = rng.choice(["tiny", "tiny", "tiny-gguf"])
            if turn % 11 == 7:
                http.post(
                    "/chat/completions",
                    json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
                )
            elif turn % 13 == 5:
                http.post("/completions", json={"model": model, "prompt": prompt, "max_tokens": 10**6})
            elif turn % 3 == 0:
                body = {"model": model, "prompt": prompt, "max_tokens": rng.randint(24, 96), "stream": True,
                        "ignore_eos": True, "stream_options": {"include_usage": True}}  # fmt: skip
                with http.stream("POST", "/completions", json=body) as response:
                    for _ in response.iter_lines():
                        pass
            else:
                messages = [{"role": "user", "content": prompt}]
                body = {
                    "model": model,
                    "messages": messages,
                    "max_tokens": rng.randint(8, 64),
                    "ignore_eos": True,
                }
                http.post("/chat/completions", json=body)
            stop.wait(rng.uniform(0.1, 0.6))


def research_traffic(base: str, key: str, stop: threading.Event) -> None:
    body = {"model": "default", "messages": [{"role": "user", "content": "one more?"}], "max_tokens": 16}
    with httpx.Client(base_url=f"{base}/v1", headers={"authorization": f"Bearer {key}"}, timeout=120) as http:
        while not stop.is_set():
            http.post("/chat/completions", json=body)  # rpm 2: the third and later get 429
            stop.wait(2.5)


def poll_dashboard(base: str, stop: threading.Event) -> None:
    while not stop.is_set():
        httpx.get(f"{base}/dashboard.json", timeout=30)
        stop.wait(2.0)


def screenshot(url: str, out: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium is not installed (Debian: apt-get install -y chromium)")
    with tempfile.TemporaryDirectory() as profile:
        command = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={out}", url]
        subprocess.run(command, check=True, capture_output=True, timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png")
    parser.add_argument("--seconds", type=float, default=62.0, help="traffic before the capture")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tandem-screenshot-") as tmp:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        process = start_tandem(Path(tmp), port)
        stop, workers = threading.Event(), []
        try:
            product = create_key(base, "web-app", "product", rpm=600)
            research = create_key(base, "notebook", "research", rpm=2)
            workers += [
                threading.Thread(target=product_traffic, args=(base, product, stop, i)) for i in range(3)
            ]
            workers += [
                threading.Thread(target=research_traffic, args=(base, research, stop)),
                threading.Thread(target=poll_dashboard, args=(base, stop)),
            ]
            for worker in workers:
                worker.start()
            time.sleep(args.seconds)
            screenshot(f"{base}/dashboard", args.out.resolve())
            print(f"wrote {args.out}")
        finally:
            stop.set()
            for worker in workers:
                worker.join(timeout=60)
            process.terminate()
            process.wait(timeout=30)


if __name__ == "__main__":
    main()
