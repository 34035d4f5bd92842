"""Load test of the hosted dashboard: concurrent browser sessions on the Stress test page of one real server.

    python benchmarks/load_test.py [--sessions 20] [--predictions 10] [--checkpoints DIR] [--url URL]

Starts the Docker image's entry point (``streamlit run app.py``, loopback only) on a model set (default: four
random-init ResNet-18s at 32 px made on the spot; ``--checkpoints`` for real ones), or uses ``--url``. Then
``--sessions`` websocket clients (tests/st_client.py, the browser's own protocol) connect at once; each uploads
its own X-ray and asks for ``--predictions`` perturbed predictions (noise kind and severity changing every
time). Every answer is checked against the same computation done here (right class for every model,
P(COVID-19) within 0.1 point): none may be dropped or wrong. Prints p50/p95/max latency per prediction and
the server's memory (resident after warm-up, after each half, and peak).

The test suite runs a short form (tests/system/test_load.py); this script is the full one (default 20 x 10 = 200).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The load test drives the same Streamlit client and image staging as the test suite's hosting tests.
if str(REPO / "tests") not in sys.path:
    sys.path.insert(0, str(REPO / "tests"))

import numpy as np  # noqa: E402

NOISES = (("gaussian", "Gaussian noise (paper scale)"), ("salt_and_pepper", "salt & pepper (paper scale)"),
          ("speckle", "speckle noise (paper scale)"))
SEVERITIES = (0.1, 0.25, 0.4, 0.55, 0.7, 0.85, 1.0, 0.2, 0.35, 0.5, 0.65, 0.8)


DEFAULT_SEVERITY = 0.1  # the page's slider default


def plan(session: int, n: int) -> list[tuple[str, str, float]]:
    """The (kind, radio label, severity) asked for by one session, prediction by prediction.

    The first one only picks a noise (the severity slider appears with its default); every later one
    changes both the noise and the severity in one request.
    """
    out = []
    for i in range(n):
        kind, label = NOISES[(session + i) % len(NOISES)]
        out.append((kind, label, DEFAULT_SEVERITY if i == 0 else SEVERITIES[(session * 5 + i) % len(SEVERITIES)]))
    return out


def session_image(session: int) -> bytes:
    """Session ``session``'s upload: one of the shipped example X-rays (so the shipped input check accepts it), its
    border cropped by 3 px per round through the examples so that no two of the first 60 sessions send the same
    image."""
    from dashboard_fixtures import png_bytes
    from medrobust.dashboard.examples import list_examples, load_example_pixels

    examples = list_examples()
    px = load_example_pixels(examples[session % len(examples)])
    k = 3 * ((session // len(examples)) % 10)
    return png_bytes(px[k: px.shape[0] - k, k: px.shape[1] - k])


def expected_answers(checkpoints: Path, sessions: int, n: int) -> dict[tuple[int, int], list[tuple[str, float]]]:
    """What each prediction must show: per model (in card order), the verdict and P(COVID-19) as the card states them
    (at the operating point and calibrated where the model has a fitted decision rule, else the raw most probable class
    and probability)."""
    from medrobust.dashboard import clean_analysis, modelset, perturbation, stress_run
    from medrobust.imaging import decode_image

    model_set = modelset.load_model_set(checkpoints)
    sizes = sorted({m.image_size for m in model_set.ok_models})
    cam_layer = "layer4" if min(sizes) >= 128 else "layer3"
    out = {}
    for s in range(sessions):
        px = decode_image(session_image(s)).pixels
        clean = clean_analysis.analyse_clean(model_set, px, cam_layer=cam_layer)
        for i, (kind, _, sev) in enumerate(plan(s, n)):
            outcomes = stress_run.run_stress(model_set, clean, perturbation.Perturbation(kind=kind, severity=sev),
                                             with_cam=False)  # the page's default
            out[(s, i)] = [_shown(o) for o in outcomes]
    return out


def _shown(outcome) -> tuple[str, float]:
    """What a card shows: the verdict and P(tracked class), calibrated where the model has a fitted decision rule."""
    decided = outcome.decided()
    p = float(decided["probs"][outcome.tracked_class]) if decided is not None else outcome.p_tracked
    return outcome.verdict_text(), p


@dataclass
class SessionResult:
    latencies: list[float] = field(default_factory=list)
    answers: dict[int, list[tuple[str, float]]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def _answers(page) -> list[tuple[str, float]]:
    probs = [float(m.group(1)) / 100 for t in page.progress_texts if (m := re.search(r"= ([\d.]+)%", t))]
    return list(zip(page.predictions, probs))


def run_session(url: str, s: int, n: int, start: threading.Barrier, result: SessionResult, timeout: float,
                fragments: bool = True) -> None:
    """One browser tab: open the Stress test, upload its image, then ``n`` predictions (one rerun each: of the page's
    panel alone, as a browser asks when a widget inside an ``st.fragment`` changes, or of the whole page with
    ``fragments=False``)."""
    from st_client import StreamlitSession

    try:
        start.wait(timeout)
        with StreamlitSession(url, timeout=timeout) as client:
            client.run("stress-test")
            page = client.upload("upload", f"session{s}.png", session_image(s), "image/png")
            if len(page.predictions) != 4:
                result.errors.append(f"session {s}: upload gave {page.predictions} {page.errors} {page.exceptions}")
                return
            for i, (kind, label, sev) in enumerate(plan(s, n)):
                t = time.perf_counter()
                page = client.set_values({"kind": label} if i == 0 else {"kind": label, "severity": sev},
                                         fragments=fragments)
                result.latencies.append(time.perf_counter() - t)
                if page.exceptions or page.errors:
                    result.errors.append(f"session {s} prediction {i}: {page.exceptions or page.errors}")
                result.answers[i] = _answers(page)
    except Exception as exc:  # noqa: BLE001 - reported as a dropped session
        result.errors.append(f"session {s}: {type(exc).__name__}: {exc}")


def run_load(url: str, *, sessions: int, predictions: int, expected, rss=None, timeout: float = 600.0,
             fragments: bool = True) -> dict:
    """Run the sessions at once; returns the figures (and every problem found)."""
    results = [SessionResult() for _ in range(sessions)]
    start = threading.Barrier(sessions)
    samples: list[tuple[float, int]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.2):
            if rss is not None:
                samples.append((time.perf_counter(), rss()))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    threads = [threading.Thread(target=run_session, args=(url, s, predictions, start, results[s], timeout, fragments), daemon=True)
               for s in range(sessions)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    problems = [e for r in results for e in r.errors]
    done = 0
    for s, r in enumerate(results):
        for i in range(predictions):
            got, want = r.answers.get(i), expected[(s, i)]
            if got is None:
                problems.append(f"session {s} prediction {i}: dropped")
                continue
            done += 1
            if len(got) != len(want) or any(g[0] != w[0] or abs(g[1] - w[1]) > 0.0011 for g, w in zip(got, want)):
                problems.append(f"session {s} prediction {i}: got {got}, expected {[(c, round(p, 4)) for c, p in want]}")
    lat = sorted(x for r in results for x in r.latencies)
    later = [x for r in results for x in r.latencies[1:]]
    return {
        "sessions": sessions, "predictions": done, "expected": sessions * predictions, "wall_s": wall,
        "p50_s": statistics.median(lat) if lat else float("nan"),
        "p95_s": float(np.percentile(lat, 95)) if lat else float("nan"),
        "max_s": max(lat) if lat else float("nan"),
        # Each session's first prediction meets the other sessions' uploads (their clean analyses); the rest do not.
        "p95_first_s": float(np.percentile([r.latencies[0] for r in results if r.latencies], 95)) if lat else float("nan"),
        "p95_later_s": float(np.percentile(later, 95)) if later else float("nan"),
        "rss_samples": samples, "problems": problems,
    }


def memory_figures(rss_before: int, samples: list[tuple[float, int]], rss_after: int, peak: int) -> dict:
    """Resident memory at the start, around the middle and at the end of the load, and the peak."""
    vals = [v for _, v in samples] or [rss_after]
    half = len(vals) // 2
    return {"rss_before": rss_before, "rss_first_half_max": max(vals[: half] or vals),
            "rss_second_half_max": max(vals[half:] or vals), "rss_after": rss_after, "peak": peak}


def tiny_model_set(folder: Path, size: int = 32) -> Path:
    import torch

    from medrobust.checkpoints import save_checkpoint
    from medrobust.models import build_model

    folder.mkdir(parents=True, exist_ok=True)
    for i, m in enumerate(("standard", "robust", "augmix", "robustaugmix")):
        torch.manual_seed(i)
        save_checkpoint(folder / f"{m}.safetensors", build_model().eval(),
                        {"name": m, "method": m, "image_size": size, "config": {"image_size": size}}, dtype=torch.float16)
    return folder


#: Settings passed on from this process's environment to the server, so a run can be measured with each on and off
#: (the server otherwise gets only the image's environment).
FORWARDED_ENV = ("MEDROBUST_BATCHING", "MEDROBUST_BATCH_WAIT_MS", "MEDROBUST_BATCH_MAX", "MEDROBUST_GC_FREEZE",
                 "STREAMLIT_RUNNER_POST_SCRIPT_GC")


def serve(checkpoints: Path, workdir: Path):
    """The image's entry point from a staged copy of /app, loopback only (with :data:`FORWARDED_ENV` passed on)."""
    from hosting_helpers import free_port, stage_image, start_server, with_port

    image = stage_image(workdir / "image", substitute={"checkpoints": checkpoints})
    port = free_port()
    env = {**image.env, **{k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}}
    return start_server(with_port(image.entrypoint, port, "127.0.0.1"), cwd=image.workdir, env=env,
                        workdir=workdir / "server", port=port)


def report(fig: dict, mem: dict | None) -> str:
    mib = 2**20
    lines = [f"{fig['sessions']} concurrent sessions, {fig['predictions']}/{fig['expected']} predictions "
             f"(4 models each) in {fig['wall_s']:.1f} s; latency per prediction p50 {fig['p50_s'] * 1000:.0f} ms, "
             f"p95 {fig['p95_s'] * 1000:.0f} ms, max {fig['max_s'] * 1000:.0f} ms; "
             f"{len(fig['problems'])} dropped or wrong"]
    if "p95_first_s" in fig:
        lines.append(f"p95 of each session's first prediction {fig['p95_first_s'] * 1000:.0f} ms, "
                     f"of the later ones {fig['p95_later_s'] * 1000:.0f} ms")
    if mem:
        lines.append(f"server memory: {mem['rss_before'] / mib:.0f} MiB before, max {mem['rss_first_half_max'] / mib:.0f} "
                     f"MiB in the first half, {mem['rss_second_half_max'] / mib:.0f} MiB in the second, "
                     f"{mem['rss_after'] / mib:.0f} MiB after; peak RSS {mem['peak'] / mib:.0f} MiB")
    forwarded = [f"{k}={os.environ[k]}" for k in FORWARDED_ENV if k in os.environ]
    if forwarded:
        lines.append("server settings: " + ", ".join(forwarded))
    try:
        lines.append(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    except OSError:
        pass
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--predictions", type=int, default=10, help="per session")
    ap.add_argument("--checkpoints", type=Path, help="model set (default: four random 32 px models)")
    ap.add_argument("--url", help="an already running server (its model set must be --checkpoints)")
    ap.add_argument("--full-reruns", action="store_true",
                    help="every prediction reruns the whole page (as before the page had fragments)")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from hosting_helpers import stop_server

    with tempfile.TemporaryDirectory(prefix="medrobust-load-") as tmp:
        tmp = Path(tmp)
        ckpt = args.checkpoints or tiny_model_set(tmp / "checkpoints")
        print(f"computing the expected answers for {args.sessions} x {args.predictions} predictions ...", flush=True)
        expected = expected_answers(ckpt, args.sessions, args.predictions)
        server = None if args.url else serve(ckpt, tmp)
        url = args.url or server.url
        try:
            if server:  # warm up: imports and the model cache, as the first visitor would
                from st_client import StreamlitSession

                with StreamlitSession(url) as s:
                    s.run("stress-test")
                    s.upload("upload", "warmup.png", session_image(999), "image/png")
            before = server.rss_bytes() if server else 0
            fig = run_load(url, sessions=args.sessions, predictions=args.predictions, expected=expected,
                           rss=server.rss_bytes if server else None, fragments=not args.full_reruns)
            time.sleep(1.0)
            mem = memory_figures(before, fig["rss_samples"], server.rss_bytes(), server.peak_rss_bytes()) if server else None
        finally:
            if server:
                stop_server(server)
    print(report(fig, mem))
    for p in fig["problems"][:20]:
        print("  problem:", p)
    return 1 if fig["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
