"""Shortcut audit: does a chest X-ray classifier read the lungs, or the hospital?

Most published COVID-19 X-ray classifiers were found to rely on shortcuts: text and
laterality markers burnt into the film, collimation edges, hospital-specific borders and
exposure, all of which differ between the collections that supplied the COVID-19 and the
non-COVID images (Zech et al., PLoS Med 2018; DeGrave, Janizek & Lee, Nat Mach Intell
2021). This module gives three cheap checks and a combined report:

* :func:`source_label_table` -- does the *data* allow a shortcut? The source (site or
  collection) by label count table, Cramér's V and the balanced accuracy of guessing the
  label from the source alone.
* :func:`masking_test` -- does the *model* use one? Predictions with the central lung
  field blanked and with only the outer border blanked (:func:`central_field_mask`,
  :func:`border_mask`, :func:`blank`).
* :func:`cam_mass` -- where Grad-CAM puts its mass, inside versus outside the central
  field, against what uniform attention would give.
* :func:`run_audit` -- all of the above with plain-language verdicts and the settings
  that produced them.

Every decision rule lives in :data:`THRESHOLDS`; every result is JSON-serialisable
(undefined values are ``None``, never nan). The words live in :mod:`medrobust.audit_text`
(torch-free, so the dashboard and the report re-read stored results with them): one
function, :func:`~medrobust.audit_text.lung_reading`, decides "reads the lungs / something
else / undecided", every verdict sets the blanked value beside the clean one, and facts
about the test set are stated once.

Mask geometry
-------------
Coordinates are fractions of the image side, measured at pixel centres: pixel ``i`` of
``size`` sits at ``(i + 0.5) / size``.

* Central field: the square ``[0.2, 0.8] x [0.2, 0.8]`` (:data:`CENTRAL_FIELD`), area
  0.36 of the image (exactly when ``size`` is a multiple of 5, otherwise within one
  pixel row and column per side). On a frontal (PA/AP) film cropped to the thorax, as the
  benchmark's images are, the lungs span about 10-90 % of the width and 10-85 % of the
  height; this square lies inside the thorax and covers the medial and middle parts of
  both lungs with the mediastinum and heart between them, while leaving out the corners
  (where laterality markers and text sit), the shoulders and the outer chest wall. It is
  deliberately conservative (it misses the apices, costophrenic angles and lateral
  lung), so "lungs blanked" means "the bulk of the lung field blanked", not "all lung
  tissue removed".
* Border: the band of pixels within ``width`` (default 0.12, :data:`BORDER_WIDTH`) of
  any edge, area ``1 - (1 - 2 width)^2`` (0.4224 at 0.12). That is where text, markers,
  rulers and collimation edges live. ``width`` must be at most 0.2, so the band never
  touches the central field; the ring between them (0.12-0.2) is blanked by neither test.

Fill
----
Blanked pixels are set to the constant :data:`FILL` = 0.5 (mid-grey). A constant carries
no information about the image, so the blanked region cannot leak anything: a per-image
mean of the kept pixels would copy, for example, the brightness of a marker into the
lung field and could make a model that reads only the centre look as if it read the
border. 0.5 is about the mean brightness of chest X-rays scaled to [0, 1], so the blanked
area is not an extreme black or white object, and it keeps the output in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray

from medrobust.audit_text import THRESHOLDS, AuditThresholds, LungReading, lung_reading, source_warning
from medrobust.audit_text import verdicts as _verdicts
from medrobust.metrics import bootstrap_ci, classification_metrics
from medrobust.stats import cluster_bootstrap_ci

__all__ = [
    "BORDER_WIDTH",
    "CENTRAL_FIELD",
    "FILL",
    "THRESHOLDS",
    "AuditThresholds",
    "LungReading",
    "blank",
    "border_mask",
    "cam_mass",
    "central_field_mask",
    "cramers_v",
    "lung_reading",
    "masking_test",
    "run_audit",
    "source_label_table",
]

CENTRAL_FIELD: tuple[float, float] = (0.2, 0.8)
"""Lower and upper edge of the central field, as fractions of the side, on both axes."""

BORDER_WIDTH = 0.12
"""Default width of the border band, as a fraction of the side."""

FILL = 0.5
"""Constant grey value that :func:`blank` writes into masked pixels by default."""

_CHANCE_AUROC = 0.5
_METRICS = ("balanced_accuracy", "auroc")
_CONDITIONS = ("clean", "lungs_blanked", "border_blanked")


# --------------------------------------------------------------------------- helpers


def _jsonable(obj: Any) -> Any:
    """Plain Python containers and scalars, with nan and inf replaced by None."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj


def _nan_to_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    return int(size)


def _check_width(width: float) -> float:
    w = float(width)
    if not (0.0 < w <= CENTRAL_FIELD[0]):
        raise ValueError(
            f"border width must be in (0, {CENTRAL_FIELD[0]}] so that the border never "
            f"overlaps the central field, got {width!r}"
        )
    return w


def _centres(n: int) -> torch.Tensor:
    return (torch.arange(n, dtype=torch.float64) + 0.5) / n


def _central(h: int, w: int) -> torch.Tensor:
    lo, hi = CENTRAL_FIELD
    ys, xs = _centres(h), _centres(w)
    in_y = (ys >= lo) & (ys <= hi)
    in_x = (xs >= lo) & (xs <= hi)
    return in_y[:, None] & in_x[None, :]


def _border(h: int, w: int, width: float) -> torch.Tensor:
    ys, xs = _centres(h), _centres(w)
    near_y = (ys < width) | (ys > 1.0 - width)
    near_x = (xs < width) | (xs > 1.0 - width)
    return near_y[:, None] | near_x[None, :]


def _model_device(model: torch.nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _check_images(images: torch.Tensor) -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor (N, 1, H, W), got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"images must have shape (N, 1, H, W), got {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError("images is empty; at least one image is needed")
    return images


def _as_float01(xb: torch.Tensor) -> torch.Tensor:
    return xb.float().div(255.0) if xb.dtype == torch.uint8 else xb.float()


def _check_labels(labels: ArrayLike, n: int) -> NDArray[np.int64]:
    y = np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"labels must be 1-D with one entry per image ({n}), got shape {y.shape}")
    if y.dtype.kind not in "biu" and not (
        y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y))
    ):
        raise ValueError(f"labels must be integer class indices, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise ValueError(f"labels must be non-negative class indices, found {int(y.min())}")
    return y


def _predict(
    model: torch.nn.Module,
    images: torch.Tensor,
    mask: torch.Tensor | None,
    fill: float,
    batch_size: int,
) -> NDArray[np.float64]:
    """Softmax probabilities (N, K), blanking ``mask`` batch by batch; model mode is restored."""
    device = _model_device(model)
    was_training = model.training
    out: list[torch.Tensor] = []
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, images.shape[0], batch_size):
                xb = _as_float01(images[i : i + batch_size].to(device))
                if mask is not None:
                    xb = blank(xb, mask.to(device), fill=fill)
                logits = model(xb)
                if logits.ndim != 2 or logits.shape[0] != xb.shape[0] or logits.shape[1] < 2:
                    raise ValueError(
                        f"the model must map (N, 1, H, W) images to (N, K) logits with K >= 2, "
                        f"got output shape {tuple(logits.shape)}"
                    )
                out.append(torch.softmax(logits.double(), dim=1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out).numpy()


def _macro_auroc(y: NDArray[np.int64], p: NDArray[np.float64]) -> float:
    """Mean one-vs-rest AUROC over the classes present (ties count 1/2); nan if < 2 classes."""
    values = []
    for c in np.unique(y):
        pos = y == c
        if pos.all():
            continue
        s = p[:, c]
        order = np.argsort(s, kind="stable")
        ranks = np.empty(s.size)
        sorted_s = s[order]
        # average ranks over ties
        starts = np.flatnonzero(np.concatenate([[True], sorted_s[1:] != sorted_s[:-1]]))
        ends = np.concatenate([starts[1:], [s.size]])
        for a, b in zip(starts, ends):
            ranks[order[a:b]] = (a + b + 1) / 2.0
        n_pos, n_neg = int(pos.sum()), int((~pos).sum())
        values.append((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
    return float(np.mean(values)) if values else float("nan")


def _macro_recall(y: NDArray[np.int64], pred: NDArray[np.int64]) -> float:
    """Balanced accuracy: mean recall over the classes present in ``y``."""
    classes = np.unique(y)
    if classes.size == 0:
        return float("nan")
    return float(np.mean([np.mean(pred[y == c] == c) for c in classes]))


def _point_metrics(y: NDArray[np.int64], p: NDArray[np.float64]) -> dict[str, float]:
    try:
        m = classification_metrics(labels=y, probs=p)
        return {k: float(m[k]) for k in _METRICS}
    except ValueError:
        if p.shape[1] == 2:
            raise
        # medrobust.metrics may not know K > 2 classes yet; same definitions, computed here.
        return {
            "balanced_accuracy": _macro_recall(y, np.argmax(p, axis=1)),
            "auroc": _macro_auroc(y, p),
        }


def _intervals(
    y: NDArray[np.int64],
    p: NDArray[np.float64],
    groups: Sequence[Hashable] | None,
    n_boot: int,
    seed: int,
) -> dict[str, list[float | None]] | None:
    if np.unique(y).size < 2:
        return None
    kwargs: dict[str, Any] = dict(
        labels=y, probs=p, metrics=_METRICS, n_boot=n_boot, seed=seed, level=THRESHOLDS.ci_level
    )
    try:
        ci = cluster_bootstrap_ci(groups=groups, **kwargs) if groups is not None else bootstrap_ci(**kwargs)
    except ValueError:
        if p.shape[1] == 2:
            raise
        return None  # K > 2 not (yet) supported by medrobust.metrics / medrobust.stats
    return {k: [_nan_to_none(float(ci[k][0])), _nan_to_none(float(ci[k][1]))] for k in _METRICS}


# --------------------------------------------------------------------------- (a) source table


def cramers_v(*, table: ArrayLike) -> dict[str, float]:
    """Cramér's V of a contingency table, plain and bias-corrected.

    Parameters
    ----------
    table : array_like, shape (r, k)
        Non-negative counts. Rows or columns that sum to 0 are dropped first (they hold
        no observation and would make expected counts 0).

    Returns
    -------
    dict of str to float
        ``v``: ``sqrt(chi2 / (n * (min(r, k) - 1)))`` with the Pearson chi-square without
        continuity correction (equal to ``scipy.stats.contingency.association(table,
        method="cramer", correction=False)``). ``v_corrected``: Bergsma's (2013)
        bias-corrected V, ``sqrt(max(0, phi2 - (k-1)(r-1)/(n-1)) / min(k~ - 1, r~ - 1))``
        with ``k~ = k - (k-1)^2/(n-1)``, ``r~`` likewise, clipped to [0, 1]. The plain V
        is biased upwards in small samples and with many categories (a table of pure
        noise gives V > 0); the corrected one is about 0 for independent rows and
        columns. Both are 0 when fewer than two rows or columns remain, or n < 2.
        ``chi2`` and ``n`` are returned too.

    Raises
    ------
    ValueError
        If ``table`` is not 2-D, or holds negative or non-finite counts.

    Examples
    --------
    >>> r = cramers_v(table=[[20, 10], [10, 20]])
    >>> round(r["v"], 4), round(r["v_corrected"], 4), round(r["chi2"], 4)
    (0.3333, 0.3095, 6.6667)
    >>> cramers_v(table=[[10, 0], [0, 10]])["v"]
    1.0
    >>> cramers_v(table=[[3, 7]])["v"]  # one source: no association can be measured
    0.0
    """
    t = np.asarray(table, dtype=np.float64)
    if t.ndim != 2:
        raise ValueError(f"table must be 2-D (rows x columns), got shape {t.shape}")
    if not np.all(np.isfinite(t)) or (t.size and t.min() < 0):
        raise ValueError("table must hold non-negative finite counts")
    t = t[t.sum(axis=1) > 0][:, t.sum(axis=0) > 0]
    # Rows (sources) in a canonical order, so the floating-point sums, and hence V at a threshold, do not
    # depend on the order in which the sources were met (V itself is invariant to it).
    t = t[np.lexsort(t.T[::-1])] if t.size else t
    n = float(t.sum())
    r, k = t.shape
    if min(r, k) < 2 or n < 2:
        return {"v": 0.0, "v_corrected": 0.0, "chi2": 0.0, "n": n}
    expected = np.outer(t.sum(axis=1), t.sum(axis=0)) / n
    chi2 = float(np.sum((t - expected) ** 2 / expected))
    phi2 = chi2 / n
    v = min(1.0, math.sqrt(phi2 / (min(r, k) - 1)))
    phi2_corr = max(0.0, phi2 - (k - 1) * (r - 1) / (n - 1))
    r_corr = r - (r - 1) ** 2 / (n - 1)
    k_corr = k - (k - 1) ** 2 / (n - 1)
    denom = min(r_corr - 1, k_corr - 1)
    v_corr = min(1.0, math.sqrt(phi2_corr / denom)) if denom > 0 else 0.0
    return {"v": float(v), "v_corrected": float(v_corr), "chi2": chi2, "n": n}


def _majority(counts: NDArray[np.int64]) -> int:
    """Index of the largest count; ties go to the lowest class index."""
    return int(np.argmax(counts))


def source_label_table(
    *, sources: Sequence[str], labels: Sequence[int], classes: Sequence[str]
) -> dict[str, Any]:
    """How well the source (site, collection) of each image predicts its label.

    Parameters
    ----------
    sources : sequence of str, shape (n,)
        Source of each image (converted with ``str``).
    labels : sequence of int, shape (n,)
        Class index of each image, in ``range(len(classes))``.
    classes : sequence of str, shape (K,)
        Class names, K >= 2, in label order.

    Returns
    -------
    dict
        ``sources`` (sorted), ``classes``, ``counts`` (list of rows, one per source, one
        int per class), ``n``; ``cramers_v`` and ``cramers_v_corrected`` (see
        :func:`cramers_v`; 0 with one source); ``source_only_balanced_accuracy``: balanced
        accuracy (mean recall over the classes present) of predicting every image as its
        source's majority label (ties to the lower class index), fitted and evaluated on
        the same data, as asked of a quick look -- optimistic when sources are small (a
        source of one image predicts itself); ``source_only_balanced_accuracy_loo``: the
        same with each image's own label left out of its source's majority (an image
        alone in its source gets the overall majority of the others), an honest estimate
        that the warning uses; ``chance_balanced_accuracy`` (``1/K``); ``warning``: a
        plain-language sentence when ``cramers_v_corrected >= THRESHOLDS.source_v`` or
        ``source_only_balanced_accuracy_loo >= THRESHOLDS.source_bacc``, else None; and
        ``thresholds`` used.

    Raises
    ------
    ValueError
        On lengths that differ, no images, fewer than two classes, duplicate class
        names or labels outside ``range(len(classes))``.

    Examples
    --------
    All COVID-19 images come from one hospital, all others from another:

    >>> t = source_label_table(sources=["A", "A", "A", "B", "B", "B"],
    ...                        labels=[1, 1, 1, 0, 0, 0], classes=["non-COVID", "COVID-19"])
    >>> t["counts"], t["cramers_v"], t["source_only_balanced_accuracy"]
    ([[0, 3], [3, 0]], 1.0, 1.0)
    >>> print(t["warning"])  # doctest: +NORMALIZE_WHITESPACE
    The source (site/collection) alone predicts the label (Cramér's V 1.00, bias-corrected;
    guessing each source's majority label gives balanced accuracy 100.0 %): a model can score
    well by recognising the hospital rather than the disease.

    Both hospitals send both classes in equal measure:

    >>> t = source_label_table(sources=["A", "A", "B", "B"], labels=[0, 1, 0, 1],
    ...                        classes=["non-COVID", "COVID-19"])
    >>> t["cramers_v"], t["warning"]
    (0.0, None)
    """
    class_names = [str(c) for c in classes]
    k = len(class_names)
    if k < 2:
        raise ValueError(f"classes must name at least two classes, got {class_names}")
    if len(set(class_names)) != k:
        raise ValueError(f"class names must be unique, got {class_names}")
    src = [str(s) for s in sources]
    n = len(src)
    if n == 0:
        raise ValueError("no images: sources and labels are empty")
    y = _check_labels(labels, n)
    if y.max() >= k:
        raise ValueError(f"labels must lie in range({k}) (one per class name), found {int(y.max())}")

    names = sorted(set(src))
    index = {s: i for i, s in enumerate(names)}
    s_idx = np.array([index[s] for s in src], dtype=np.int64)
    counts = np.zeros((len(names), k), dtype=np.int64)
    np.add.at(counts, (s_idx, y), 1)

    v = cramers_v(table=counts)

    majority = np.array([_majority(row) for row in counts], dtype=np.int64)
    bacc = _macro_recall(y, majority[s_idx])

    totals = counts.sum(axis=0)
    loo_pred = np.empty(n, dtype=np.int64)
    for i in range(n):
        row = counts[s_idx[i]].copy()
        row[y[i]] -= 1
        if row.sum() == 0:
            row = totals.copy()
            row[y[i]] -= 1
        loo_pred[i] = _majority(row)  # a single image overall: all zeros, class 0
    bacc_loo = _macro_recall(y, loo_pred)

    warn = v["v_corrected"] >= THRESHOLDS.source_v or bacc_loo >= THRESHOLDS.source_bacc
    warning = source_warning(v_corrected=v["v_corrected"], bacc_loo=bacc_loo) if warn else None
    return _jsonable(
        {
            "sources": names,
            "classes": class_names,
            "counts": counts.tolist(),
            "n": n,
            "cramers_v": v["v"],
            "cramers_v_corrected": v["v_corrected"],
            "source_only_balanced_accuracy": bacc,
            "source_only_balanced_accuracy_loo": bacc_loo,
            "chance_balanced_accuracy": 1.0 / k,
            "warning": warning,
            "thresholds": {"source_v": THRESHOLDS.source_v, "source_bacc": THRESHOLDS.source_bacc},
        }
    )


# --------------------------------------------------------------------------- (b) masks


def central_field_mask(*, size: int) -> torch.Tensor:
    """The central lung field of a frontal chest X-ray, as a boolean mask.

    Parameters
    ----------
    size : int
        Side of the square image in pixels.

    Returns
    -------
    torch.Tensor, shape (size, size), dtype bool
        True for pixels whose centre lies in ``[0.2, 0.8] x [0.2, 0.8]`` of the image
        (:data:`CENTRAL_FIELD`; see the module docstring for why). The area is 0.36 of
        the image, exactly when ``size`` is a multiple of 5.

    Raises
    ------
    ValueError
        If ``size`` is not a positive integer.

    Examples
    --------
    >>> m = central_field_mask(size=10)
    >>> m.int()
    tensor([[0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            [0, 0, 1, 1, 1, 1, 1, 1, 0, 0],
            [0, 0, 1, 1, 1, 1, 1, 1, 0, 0],
            [0, 0, 1, 1, 1, 1, 1, 1, 0, 0],
            [0, 0, 1, 1, 1, 1, 1, 1, 0, 0],
            [0, 0, 1, 1, 1, 1, 1, 1, 0, 0],
            [0, 0, 1, 1, 1, 1, 1, 1, 0, 0],
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]], dtype=torch.int32)
    >>> central_field_mask(size=50).float().mean().item()
    0.36000001430511475
    """
    s = _check_size(size)
    return _central(s, s)


def border_mask(*, size: int, width: float = BORDER_WIDTH) -> torch.Tensor:
    """The outer band of the image, where text, markers and collimation edges live.

    Parameters
    ----------
    size : int
        Side of the square image in pixels.
    width : float, default 0.12
        Width of the band as a fraction of the side, in (0, 0.2] so that it never
        overlaps :func:`central_field_mask`.

    Returns
    -------
    torch.Tensor, shape (size, size), dtype bool
        True for pixels whose centre lies within ``width`` of any edge. The area is
        ``1 - (1 - 2 width)^2`` (0.4224 at the default) up to pixel rounding.

    Raises
    ------
    ValueError
        If ``size`` is not a positive integer or ``width`` is outside (0, 0.2].

    Examples
    --------
    >>> b = border_mask(size=10, width=0.1)
    >>> b.int()[:3]
    tensor([[1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
            [1, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            [1, 0, 0, 0, 0, 0, 0, 0, 0, 1]], dtype=torch.int32)
    >>> bool((b & central_field_mask(size=10)).any())
    False
    """
    s = _check_size(size)
    return _border(s, s, _check_width(width))


def blank(x: torch.Tensor, mask: torch.Tensor, *, fill: float = FILL) -> torch.Tensor:
    """Replace the masked pixels of images by a constant grey.

    Parameters
    ----------
    x : torch.Tensor, shape (..., H, W)
        Images in [0, 1], e.g. (N, 1, H, W). Not modified.
    mask : torch.Tensor, shape (H, W), dtype bool
        Pixels to blank (True), e.g. :func:`central_field_mask` or :func:`border_mask`.
    fill : float, default 0.5
        The grey written into masked pixels, in [0, 1]. A constant rather than a
        per-image statistic, so the blanked region carries no information about the
        image (see the module docstring).

    Returns
    -------
    torch.Tensor, same shape and dtype as ``x``
        A new tensor, equal to ``x`` outside the mask and to ``fill`` inside it; in
        [0, 1] whenever ``x`` is.

    Raises
    ------
    ValueError
        If ``mask`` is not a boolean (H, W) tensor matching ``x``'s last two dimensions,
        or ``fill`` is outside [0, 1].

    Examples
    --------
    >>> x = torch.zeros(1, 1, 4, 4)
    >>> m = torch.zeros(4, 4, dtype=torch.bool)
    >>> m[0, 0] = True
    >>> blank(x, m, fill=0.5)[0, 0, 0]
    tensor([0.5000, 0.0000, 0.0000, 0.0000])
    """
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.ndim != 2:
        raise ValueError("mask must be a boolean torch.Tensor of shape (H, W)")
    if x.ndim < 2 or tuple(x.shape[-2:]) != tuple(mask.shape):
        raise ValueError(
            f"mask shape {tuple(mask.shape)} does not match the images' last two dimensions "
            f"{tuple(x.shape[-2:])}"
        )
    f = float(fill)
    if not (0.0 <= f <= 1.0):
        raise ValueError(f"fill must lie in [0, 1], got {fill!r}")
    return torch.where(mask.to(x.device), torch.tensor(f, dtype=x.dtype, device=x.device), x)


# --------------------------------------------------------------------------- masking test


def _condition_result(
    y: NDArray[np.int64],
    p: NDArray[np.float64],
    groups: Sequence[Hashable] | None,
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    point = _point_metrics(y, p)
    return {
        "balanced_accuracy": _nan_to_none(point["balanced_accuracy"]),
        "auroc": _nan_to_none(point["auroc"]),
        "ci": _intervals(y, p, groups, n_boot, seed),
    }


def _above_chance(value: float | None, ci: Sequence[float | None] | None, *, point_min: float,
                  chance: float) -> bool:
    if value is None or value < point_min:
        return False
    if ci is None or ci[0] is None:
        return True  # no interval could be computed: the point rule alone decides
    return ci[0] > chance


def masking_test(
    *,
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: Sequence[int],
    groups: Sequence[Hashable] | None = None,
    batch_size: int = 64,
    n_boot: int = 1000,
    seed: int = 0,
    border_width: float = BORDER_WIDTH,
    fill: float = FILL,
) -> dict[str, Any]:
    """Score a model on clean images, with the lungs blanked and with the border blanked.

    The model runs in eval mode under ``torch.no_grad()``; its mode is restored after,
    and nothing else about it changes.

    Parameters
    ----------
    model : torch.nn.Module
        Maps (N, 1, H, W) images in [0, 1] to (N, K) logits, K >= 2.
    images : torch.Tensor, shape (N, 1, H, W)
        Float images in [0, 1] (uint8 is divided by 255).
    labels : sequence of int, shape (N,)
        True class indices in ``range(K)``.
    groups : sequence of hashable, shape (N,), optional
        Patient id of each image. When given, intervals resample patients
        (:func:`medrobust.stats.cluster_bootstrap_ci`); otherwise they resample images
        (:func:`medrobust.metrics.bootstrap_ci`), which is too narrow when patients
        have several images.
    batch_size : int, default 64
        Images per forward pass.
    n_boot : int, default 1000
        Bootstrap resamples per condition.
    seed : int, default 0
        Seed of the bootstrap (the same draws for every condition).
    border_width : float, default 0.12
        Width of the border band (see :func:`border_mask`).
    fill : float, default 0.5
        Grey written into blanked pixels (see :func:`blank`).

    Returns
    -------
    dict
        ``n``, ``n_classes`` (K); ``chance``: ``{"balanced_accuracy": 1/K, "auroc":
        0.5}``; ``conditions``: for each of ``clean``, ``lungs_blanked`` and
        ``border_blanked`` a dict with ``balanced_accuracy``, ``auroc`` (definitions of
        :func:`medrobust.metrics.classification_metrics`; for K > 2 macro averages over
        classes; None when undefined, e.g. one class only) and ``ci`` (``{"balanced_
        accuracy": [lo, hi], "auroc": [lo, hi]}`` or None); ``ci_method`` (``"patient"``
        or ``"image"``); ``border_drop`` and ``lungs_drop``: clean minus blanked, per
        metric; ``reads_outside_lungs`` (bool): with the central field blanked the model
        is still clearly above chance -- AUROC ``>= THRESHOLDS.lungs_auroc`` with the
        AUROC interval above 0.5, or balanced accuracy ``>= 1/K +
        THRESHOLDS.lungs_bacc_margin`` with its interval above ``1/K``;
        ``depends_on_border`` (bool): blanking the border lowers balanced accuracy or
        AUROC by ``>= THRESHOLDS.border_drop``; ``config``: the settings used.

    Raises
    ------
    ValueError
        On images not shaped (N, 1, H, W), labels of the wrong length or outside
        ``range(K)``, model outputs not shaped (N, K), or invalid ``border_width``,
        ``fill``, ``batch_size`` or ``n_boot``.

    Notes
    -----
    An undefined metric (None) never raises a flag. A model that ranks the classes the
    wrong way round with the lungs blanked (AUROC well below 0.5) is not flagged either:
    the rule asks whether the model still *works* without the lungs.
    """
    images = _check_images(images)
    n, _, h, w = images.shape
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    width = _check_width(border_width)
    fill_value = float(fill)
    if not (0.0 <= fill_value <= 1.0):
        raise ValueError(f"fill must lie in [0, 1], got {fill!r}")
    y = _check_labels(labels, n)
    if groups is not None:
        groups = list(groups)
        if len(groups) != n:
            raise ValueError(f"groups has {len(groups)} entries but there are {n} images")

    masks = {"clean": None, "lungs_blanked": _central(h, w), "border_blanked": _border(h, w, width)}
    probs = {c: _predict(model, images, m, fill_value, int(batch_size)) for c, m in masks.items()}
    k = probs["clean"].shape[1]
    if y.max() >= k:
        raise ValueError(f"labels must lie in range({k}) (the model has {k} outputs), found {int(y.max())}")
    chance_bacc = 1.0 / k

    conditions = {c: _condition_result(y, probs[c], groups, int(n_boot), int(seed)) for c in _CONDITIONS}

    def drop(cond: str) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for m in _METRICS:
            a, b = conditions["clean"][m], conditions[cond][m]
            out[m] = None if a is None or b is None else a - b
        return out

    lungs = conditions["lungs_blanked"]
    lci = lungs["ci"] or {}
    reads_outside = _above_chance(
        lungs["auroc"], lci.get("auroc"), point_min=THRESHOLDS.lungs_auroc, chance=_CHANCE_AUROC
    ) or _above_chance(
        lungs["balanced_accuracy"],
        lci.get("balanced_accuracy"),
        point_min=chance_bacc + THRESHOLDS.lungs_bacc_margin,
        chance=chance_bacc,
    )
    border_drop = drop("border_blanked")
    depends_on_border = any(d is not None and d >= THRESHOLDS.border_drop for d in border_drop.values())

    return _jsonable(
        {
            "n": n,
            "n_classes": k,
            "chance": {"balanced_accuracy": chance_bacc, "auroc": _CHANCE_AUROC},
            "conditions": conditions,
            "ci_method": "patient" if groups is not None else "image",
            "border_drop": border_drop,
            "lungs_drop": drop("lungs_blanked"),
            "reads_outside_lungs": bool(reads_outside),
            "depends_on_border": bool(depends_on_border),
            "config": _config(h=h, w=w, width=width, fill=fill_value, n_boot=int(n_boot), seed=int(seed)),
        }
    )


def _config(*, h: int, w: int, width: float, fill: float, n_boot: int, seed: int) -> dict[str, Any]:
    lo, hi = CENTRAL_FIELD
    return {
        "image_size": [h, w],
        "central_field": {
            "shape": "rectangle of pixel centres, fractions of the image side",
            "x": [lo, hi],
            "y": [lo, hi],
            "area_fraction": float(_central(h, w).double().mean()),
        },
        "border": {
            "shape": "band of pixel centres within width of any edge",
            "width": width,
            "area_fraction": float(_border(h, w, width).double().mean()),
        },
        "fill": {"rule": "constant grey", "value": fill},
        "thresholds": asdict(THRESHOLDS),
        "n_boot": n_boot,
        "seed": seed,
    }


# --------------------------------------------------------------------------- (c) Grad-CAM mass


def cam_mass(
    *, model: torch.nn.Module, images: torch.Tensor, max_images: int | None = 64
) -> dict[str, Any]:
    """Where Grad-CAM puts its mass: inside the central field versus outside.

    For each image, the Grad-CAM of the predicted class (:func:`medrobust.gradcam.gradcam`
    at its default, deepest layer) is summed inside :func:`central_field_mask` and divided
    by its total. A model spreading attention uniformly would score the field's area
    fraction (0.36); a model looking at the lungs scores more, one looking at the edges
    less. Grad-CAM at the deepest layer is coarse (a 4x4 grid upsampled at 128 px), so
    this is supporting evidence beside :func:`masking_test`, not a test on its own.

    Parameters
    ----------
    model : torch.nn.Module
        A model :func:`medrobust.gradcam.gradcam` supports. Run in eval mode; its mode is
        restored after.
    images : torch.Tensor, shape (N, 1, H, W)
        Images in [0, 1].
    max_images : int or None, default 64
        Use only the first ``max_images`` images (Grad-CAM is one backward pass per
        image); None uses all.

    Returns
    -------
    dict
        ``n_images`` (images used), ``n_empty`` (images whose CAM was all zero, left
        out), ``area_fraction`` (the central field's share of the image),
        ``border_area_fraction``; ``mass_fraction_inside``: mean over images of the
        fraction of CAM mass inside the central field (None if every CAM was empty);
        ``mass_fraction_outside`` (1 minus it); ``mass_fraction_border`` (mean share in
        the default border band); ``ratio_to_uniform`` (inside / area fraction; 1 for
        uniform attention); ``per_image``: ``mean``, ``p10``, ``p50``, ``p90`` of the
        per-image inside fractions; ``below_uniform`` and ``above_uniform`` (bool: the
        mean inside fraction is below / above the area fraction by more than
        ``THRESHOLDS.cam_margin``).

    Raises
    ------
    ValueError
        On images not shaped (N, 1, H, W) or ``max_images < 1``.
    """
    from medrobust.gradcam import gradcam  # torchvision is imported only when needed

    images = _check_images(images)
    if max_images is not None and (
        isinstance(max_images, bool) or not isinstance(max_images, (int, np.integer)) or max_images < 1
    ):
        raise ValueError(f"max_images must be a positive integer or None, got {max_images!r}")
    use = images if max_images is None else images[: int(max_images)]
    _, _, h, w = use.shape
    inside, border = _central(h, w), _border(h, w, BORDER_WIDTH)
    fractions: list[float] = []
    border_fr: list[float] = []
    n_empty = 0
    was_training = model.training
    model.eval()
    try:
        for i in range(use.shape[0]):
            cam, _ = gradcam(model, _as_float01(use[i : i + 1]))
            c = torch.as_tensor(np.asarray(cam), dtype=torch.float64)
            if tuple(c.shape) != (h, w):
                raise ValueError(f"Grad-CAM returned shape {tuple(c.shape)}, expected {(h, w)}")
            total = float(c.sum())
            if not total > 0.0:
                n_empty += 1
                continue
            fractions.append(float(c[inside].sum()) / total)
            border_fr.append(float(c[border].sum()) / total)
    finally:
        model.train(was_training)

    area = float(inside.double().mean())
    fr = np.asarray(fractions)
    if fr.size:
        mean_in = float(fr.mean())
        p10, p50, p90 = (float(v) for v in np.percentile(fr, [10, 50, 90]))
        per_image = {"mean": mean_in, "p10": p10, "p50": p50, "p90": p90}
        mean_border: float | None = float(np.mean(border_fr))
    else:
        mean_in = float("nan")
        per_image = {"mean": None, "p10": None, "p50": None, "p90": None}
        mean_border = None
    return _jsonable(
        {
            "n_images": int(use.shape[0]),
            "n_empty": n_empty,
            "area_fraction": area,
            "border_area_fraction": float(border.double().mean()),
            "mass_fraction_inside": mean_in,
            "mass_fraction_outside": 1.0 - mean_in,
            "mass_fraction_border": mean_border,
            "ratio_to_uniform": mean_in / area if area > 0 else float("nan"),
            "per_image": per_image,
            "below_uniform": bool(fr.size and mean_in < area - THRESHOLDS.cam_margin),
            "above_uniform": bool(fr.size and mean_in > area + THRESHOLDS.cam_margin),
        }
    )


# --------------------------------------------------------------------------- (d) combined


def run_audit(
    *,
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: Sequence[int],
    classes: Sequence[str],
    groups: Sequence[Hashable] | None = None,
    sources: Sequence[str] | None = None,
    cam_images: int = 64,
    seed: int = 0,
    n_boot: int = 1000,
) -> dict[str, Any]:
    """The whole shortcut audit of one model on one test set, with plain-language verdicts.

    Parameters
    ----------
    model : torch.nn.Module
        Maps (N, 1, H, W) images in [0, 1] to (N, K) logits; not changed.
    images : torch.Tensor, shape (N, 1, H, W)
        Test images in [0, 1].
    labels : sequence of int, shape (N,)
        Class indices in ``range(K)``.
    classes : sequence of str, shape (K,)
        Class names in label order; must match the model's K outputs.
    groups : sequence of hashable, shape (N,), optional
        Patient ids; intervals then resample patients.
    sources : sequence of str, shape (N,), optional
        Site or collection of each image; enables :func:`source_label_table`.
    cam_images : int, default 64
        Images for :func:`cam_mass`; 0 skips it. When Grad-CAM does not support the
        model, ``cam`` holds ``{"error": message}`` and the rest of the audit stands.
    seed : int, default 0
        Bootstrap seed.
    n_boot : int, default 1000
        Bootstrap resamples per condition.

    Returns
    -------
    dict
        ``n_images``, ``classes``; ``source_table``: :func:`source_label_table`'s result
        or None; ``masking``: :func:`masking_test`'s result; ``cam``:
        :func:`cam_mass`'s result, ``{"error": ...}`` or None; ``flags``:
        ``source_predicts_label`` (None without sources), ``reads_outside_lungs``,
        ``depends_on_border``, ``cam_below_uniform`` (None without a CAM);
        ``lung_reading``: ``{"conclusion": "lungs" | "elsewhere" | "undecided", "reason":
        ...}`` from :func:`medrobust.audit_text.lung_reading`; ``verdicts``: list of
        plain-language sentences for a clinician (:func:`medrobust.audit_text.verdicts`:
        the test set's sentence, then the model's, each blanked score beside the clean one,
        every remark on the lungs following ``lung_reading``); ``config``: mask
        geometry, fill rule, thresholds, bootstrap and CAM settings. Everything is
        JSON-serialisable (``json.dumps(..., allow_nan=False)`` works).

    Raises
    ------
    ValueError
        As :func:`masking_test` and :func:`source_label_table`, or when ``classes`` does
        not have one name per model output.
    """
    class_names = [str(c) for c in classes]
    masking = masking_test(model=model, images=images, labels=labels, groups=groups, n_boot=n_boot, seed=seed)
    if masking["n_classes"] != len(class_names):
        raise ValueError(
            f"classes names {len(class_names)} classes but the model has {masking['n_classes']} outputs"
        )
    table = None
    if sources is not None:
        if len(sources) != masking["n"]:
            raise ValueError(f"sources has {len(sources)} entries but there are {masking['n']} images")
        table = source_label_table(sources=sources, labels=labels, classes=class_names)

    if isinstance(cam_images, bool) or not isinstance(cam_images, (int, np.integer)) or cam_images < 0:
        raise ValueError(f"cam_images must be a non-negative integer, got {cam_images!r}")
    cam: dict[str, Any] | None = None
    if cam_images > 0:
        try:
            cam = cam_mass(model=model, images=images, max_images=int(cam_images))
        except (AttributeError, TypeError, ValueError, NotImplementedError, RuntimeError) as exc:
            cam = {"error": f"{type(exc).__name__}: {exc}"}

    config = dict(masking["config"])
    config.update(
        ci_method=masking["ci_method"],
        ci_level=THRESHOLDS.ci_level,
        cam={"images": int(cam_images), "layer": "gradcam default (deepest stage)", "class": "predicted"},
        sources_given=sources is not None,
        groups_given=groups is not None,
    )
    reading = lung_reading(masking, cam)
    flags = {
        "source_predicts_label": None if table is None else table["warning"] is not None,
        "reads_outside_lungs": masking["reads_outside_lungs"],
        "depends_on_border": masking["depends_on_border"],
        "cam_below_uniform": None if cam is None or "error" in cam else cam["below_uniform"],
    }
    return _jsonable(
        {
            "n_images": masking["n"],
            "classes": class_names,
            "source_table": table,
            "masking": masking,
            "cam": cam,
            "flags": flags,
            "lung_reading": {"conclusion": reading.conclusion, "reason": reading.reason},
            "verdicts": _verdicts(masking, table, cam),
            "config": config,
        }
    )
