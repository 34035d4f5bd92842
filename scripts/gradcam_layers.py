"""Which Grad-CAM layer should the Stress test show? Where each layer's map puts its mass, and whether it is faithful.

    OMP_NUM_THREADS=1 python scripts/gradcam_layers.py [CHECKPOINT_DIR] [--data DIR ...] [--limit N]

For every model of CHECKPOINT_DIR (default: checkpoints/, loaded and BatchNorm-folded as the dashboard
loads them) and the layers the Stress test offers (``layer3+layer4`` is the mean of the two layers'
peak-scaled maps, exactly as :func:`medrobust.gradcam.gradcam` computes it for the page), on

* the six shipped example X-rays (``medrobust/dashboard/examples``), and
* with ``--data``, the test-split images of the models' split (as the Stress test samples them),

this prints, for the map of each class (the predicted one separately), the share of the map's mass (the sum
of the map as the page draws it: upsampled bilinearly to the model's input) that falls

* in the border: the outer 16 px frame (1/8 of the side) of the 128 px input;
* in the bottom quarter of the input (for a frontal chest X-ray, mostly below the diaphragm);
* inside the lungs, for the examples only: the union of two boxes per example, one around each lung field,
  drawn by hand on the 128 px input (:data:`LUNG_BOXES`; apex to costophrenic angle, chest wall to
  mediastinum); and below the diaphragm = under the lower edge of those boxes;

where the map's peak lies, how many maps are all zero ("flat"), and a deletion check of faithfulness: the
drop of the predicted class's logit margin when the top 20 % of pixels by the map are replaced by a
heavily blurred copy of the image, against the drop when its lowest 20 % are. A map that marks what the
answer rests on costs more when its top pixels go ("top>low": in how many maps it does).
The share of the image's area each region covers is printed with them: a flat map would score that.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

#: Per example file: (top, bottom, left, right) of each lung field on the 128 px input, drawn by hand
#: (image left = the patient's right lung). Coarse boxes; they include some rib, heart border and hilum.
LUNG_BOXES = {
    "example-1-covid19.png": [(16, 72, 16, 56), (16, 72, 68, 112)],
    "example-2-noncovid.png": [(16, 96, 16, 56), (16, 96, 72, 116)],
    "example-3-covid19.png": [(16, 100, 12, 60), (12, 100, 76, 116)],
    "example-4-noncovid.png": [(16, 96, 16, 60), (16, 100, 72, 116)],
    "example-5-covid19.png": [(20, 104, 8, 56), (16, 104, 76, 120)],
    "example-6-noncovid.png": [(16, 104, 20, 60), (16, 104, 72, 116)],
}
SIDE = 128  # the boxes' scale
BORDER = 16  # px at 128
DELETE = 0.2
REGIONS = ("border", "bottom", "lungs", "below")


def regions(file: str | None, side: int) -> dict[str, np.ndarray | None]:
    """Boolean masks (side, side): border frame, bottom quarter, and (examples only) lungs and below them."""
    s = side / SIDE
    border = np.ones((side, side), bool)
    k = round(BORDER * s)
    border[k:-k, k:-k] = False
    bottom = np.zeros((side, side), bool)
    bottom[3 * side // 4:] = True
    out: dict[str, np.ndarray | None] = {"border": border, "bottom": bottom, "lungs": None, "below": None}
    if file in LUNG_BOXES:
        lungs = np.zeros((side, side), bool)
        low = 0
        for t, b, l, r in LUNG_BOXES[file]:
            lungs[round(t * s):round(b * s), round(l * s):round(r * s)] = True
            low = max(low, round(b * s))
        below = np.zeros((side, side), bool)
        below[low:] = True
        out.update(lungs=lungs, below=below)
    return out


def blur(x: torch.Tensor, k: int = 17) -> torch.Tensor:
    """A heavily smoothed copy of the image (three box blurs): what a deleted region is filled with."""
    y = x
    for _ in range(3):
        y = torch.nn.functional.avg_pool2d(y, k, stride=1, padding=k // 2, count_include_pad=False)
    return y


def deletion(model, x: torch.Tensor, cam: np.ndarray, c: int, blurred: torch.Tensor, q: float) -> tuple[float, float]:
    """Drop of class c's logit margin when the top-q (then the bottom-q) fraction of pixels by ``cam`` is blurred."""
    order = np.argsort(cam.ravel(), kind="stable")
    n = int(round(q * order.size))

    def margin(z: torch.Tensor) -> float:  # logit of c minus the best other logit (no softmax saturation)
        return float(z[0, c] - torch.cat([z[0, :c], z[0, c + 1:]]).max())

    with torch.no_grad():
        m0 = margin(model(x))
        drops = []
        for idx in (order[-n:], order[:n]):
            mask = np.zeros(order.size, bool)
            mask[idx] = True
            drops.append(m0 - margin(model(torch.where(torch.as_tensor(mask.reshape(cam.shape)), blurred, x))))
    return drops[0], drops[1]


def measure(models, images, layers: list[str], q: float) -> dict[str, list[dict]]:
    """One row per (image, model, layer, class)."""
    from medrobust.dashboard import camdepth, clean_analysis
    from medrobust.gradcam import gradcam

    rows: dict[str, list[dict]] = {layer: [] for layer in layers}
    for file, pixels in images:
        for m in models:
            x = clean_analysis.prepare_input(pixels, m.image_size)
            masks = regions(file, m.image_size)
            blurred = blur(x)
            for layer in layers:
                own = camdepth.cam_layer_for(m.model, layer)
                grid = "+".join(f"{h}x{w}" for h, w in camdepth.cam_grid_of(m.model, layer, m.image_size))
                for c in range(m.model.num_classes):
                    cam, logits = gradcam(m.model, x, layer=own, class_index=c)
                    total = float(cam.sum())
                    row = {"model": m.name, "file": file, "grid": grid, "flat": total == 0.0,
                           "predicted": int(logits.argmax()) == c, "drop_top": np.nan, "drop_low": np.nan}
                    peak = np.unravel_index(int(np.argmax(cam)), cam.shape)
                    for k, v in masks.items():
                        row[k] = np.nan if v is None or total == 0 else float(cam[v].sum()) / total
                        row[f"peak_{k}"] = np.nan if v is None or total == 0 else float(v[peak])
                    if total > 0 and row["predicted"]:
                        row["drop_top"], row["drop_low"] = deletion(m.model, x, cam, c, blurred, q)
                    rows[layer].append(row)
    return rows


def report(title: str, rows: dict[str, list[dict]], areas: dict[str, float], q: float) -> None:
    def mean(rs, k):
        vals = [r[k] for r in rs if not np.isnan(r[k])]
        return f"{np.mean(vals):.2f}" if vals else "  – "

    print(f"\n{title}")
    print(f"mass share of the upsampled map (mean over non-flat maps) | peak in region (share of maps) | deletion of "
          f"the top / lowest {q:.0%} pixels: drop of the predicted class's logit margin")
    head = " ".join(f"{k:>6}" for k in REGIONS)
    print(f"{'layer':<13} {'grid':>9} {'class':<9} {'n':>4} {'flat':>4} | {head} | {head} | "
          f"{'top':>6} {'low':>6} {'top>low':>8}")
    print(f"{'(area)':<13} {'':>9} {'':<9} {'':>4} {'':>4} | "
          + " ".join(f"{areas[k]:6.2f}" if not np.isnan(areas[k]) else f"{'–':>6}" for k in REGIONS) + " |")
    for layer, rs in rows.items():
        grid = ",".join(sorted({r["grid"] for r in rs}))
        for which, keep in (("predicted", lambda r: r["predicted"]), ("both", lambda r: True)):
            sel = [r for r in rs if keep(r)]
            live = [r for r in sel if not r["flat"]]
            line = (f"{layer:<13} {grid:>9} {which:<9} {len(sel):>4} {len(sel) - len(live):>4} | "
                    + " ".join(f"{mean(live, k):>6}" for k in REGIONS) + " | "
                    + " ".join(f"{mean(live, 'peak_' + k):>6}" for k in REGIONS) + " |")
            if which == "predicted":
                won = sum(r["drop_top"] > r["drop_low"] for r in live)
                line += f" {mean(live, 'drop_top'):>6} {mean(live, 'drop_low'):>6} {f'{won}/{len(live)}':>8}"
            print(line)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="?", default="checkpoints")
    ap.add_argument("--layers", default="layer4,layer3,layer2,layer3+layer4",
                    help="comma-separated, as the Stress test names them ('layer3+layer4': the pair)")
    ap.add_argument("--data", action="append", default=[], help="data folder(s): also measure on the test split")
    ap.add_argument("--limit", type=int, default=200, help="at most this many test-split images")
    ap.add_argument("--delete", type=float, default=DELETE, help="fraction of pixels the deletion check blurs")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    from medrobust.dashboard import examples, modelset, samples
    from medrobust.imaging import decode_image

    models = modelset.load_model_set(args.checkpoints).ok_models
    if not models:
        print(f"No loadable models in {args.checkpoints}.", file=sys.stderr)
        return 1
    layers = args.layers.split(",")
    print(f"{len(models)} models: " + ", ".join(f"{m.name} ({m.model.arch}, {m.image_size} px)" for m in models))
    shipped = [(e.file, decode_image(examples.example_bytes(e)).pixels) for e in examples.list_examples()]
    side = models[0].image_size
    sets = [(f"The {len(shipped)} shipped example X-rays (lung boxes drawn by hand)", shipped)]
    if args.data:
        test_split = samples.test_samples(args.data, models[0].card, limit=args.limit)
        sets.append((f"{len(test_split)} test-split images of {', '.join(args.data)} (no lung boxes)",
                     [(None, decode_image(Path(s.path).read_bytes()).pixels) for s in test_split]))
    for title, images in sets:
        masks = [regions(f, side) for f, _ in images]
        areas = {k: (np.mean([mk[k].mean() for mk in masks if mk[k] is not None])
                     if any(mk[k] is not None for mk in masks) else np.nan) for k in REGIONS}
        report(title, measure(models, images, layers, args.delete), areas, args.delete)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
