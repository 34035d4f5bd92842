"""Peer parity on all test images: our worst case vs rai-toolbox PGD, torchattacks PGDL2 and APGD, per eps.

    python benchmarks/bench_parity.py [--models robust robustaugmix] [--n N] [--device cuda]
        [--data DIR ... | --test-manifest DEST/manifest.csv] [--json OUT.json]

The full-size form of tests/science/test_peer_parity.py (which runs 2 images in the suite): the same
functions (benchmarks/_peers.py), on every test image of each model's split, at L2 eps 1-5 stated at
224 px, 20 steps; ours is ``worst_case`` (PGD 5 starts + APGD-CE 1, fp32, IEEE on CUDA) and each peer
runs on a fresh model checked untouched afterwards. Prints a table per model (accuracy and correct
images per attack and radius), the time of ours and of each peer, and the radii where our worst case is
weaker than a peer by more than one image (exit 1 if any). On 2 CPU cores all 118 images take hours;
a GPU takes minutes (``--test-manifest`` from scripts/export_test_set.py carries only the test images).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import _common as C
import _peers as P

from medrobust.checkpoints import read_card

SHARED = C.REPO.parent / "shared" / "data"
DEFAULT_DATA = [SHARED / "covid-chestxray", SHARED / "actualmed"]


def parse():
    p = C.base_parser(__doc__.split("\n\n")[0])
    C.add_data_args(p)
    p.add_argument("--test-manifest", help="a test set written by scripts/export_test_set.py (instead of --data)")
    p.add_argument("--models", nargs="+", default=["robust", "robustaugmix"],
                   help="shipped model names (checkpoints/NAME.safetensors) or checkpoint paths")
    p.add_argument("--n", type=int, default=None, help="a seed-0 random subset of the test images (default all)")
    p.add_argument("--eps", type=float, nargs="+", default=[1, 2, 3, 4, 5], help="L2 radii stated at 224 px")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--json", type=Path, help="also write the tables and times here")
    return p.parse_args()


def _checkpoint(name: str) -> Path:
    p = Path(name)
    return p if p.suffix == ".safetensors" or p.exists() else C.REPO / "checkpoints" / f"{name}.safetensors"


def main() -> int:
    args = parse()
    if args.n is not None and args.n < 1:
        print("bench_parity: --n must be at least 1.", file=sys.stderr)
        return 2
    try:
        import rai_toolbox  # noqa: F401
        import torchattacks  # noqa: F401
    except ImportError as exc:
        print(f"bench_parity: {exc.name} is not installed (pip install rai-toolbox==0.2.1 torchattacks==3.3.0).",
              file=sys.stderr)
        return 2
    data = [args.test_manifest] if args.test_manifest else (args.data or [str(d) for d in DEFAULT_DATA])
    device = C.setup(args)
    C.print_header("bench_parity: worst case (ours) vs rai-toolbox PGD, torchattacks PGDL2 and APGD", device)
    report, bad = {"machine": C.machine_line(device), "command": " ".join(sys.argv), "models": {}}, []
    for name in args.models:
        ckpt = _checkpoint(name)
        card = read_card(ckpt)  # each attack loads its own fresh model (_peers.compare)
        mdesc = f"checkpoint {ckpt} ({card.get('method')}, {card.get('image_size')} px)"
        x, y, idesc = C.test_images(data, C.card_size(card), card, args.n, seed=args.seed)
        x, y = x.to(device), y.to(device)
        t0 = time.perf_counter()
        result = P.compare(ckpt, x, y, eps_224=tuple(args.eps), steps=args.steps)
        wall = time.perf_counter() - t0
        failures = P.failures(result)
        bad += [f"{name}: {f}" for f in failures]
        secs = ", ".join(f"{k} {v:.1f} s" for k, v in result["seconds"].items())
        print(f"\n{name}: {mdesc}\nimages: {idesc}\nL2, {args.steps} steps; ours PGD 5 starts + APGD-CE 1, fp32; "
              f"{wall:.1f} s ({secs})")
        print(P.table(result))
        print("weaker than a peer by more than one image: " + ("; ".join(failures) or "nowhere"))
        report["models"][name] = {**result, "images": idesc, "checkpoint_sha256": card.get("sha256"), "wall_s": wall}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=float))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
