"""The clinical suite's severity ladders and what each level means physically (no torch needed).

:mod:`medrobust.clinical` applies the corruptions; this module holds their parameters at levels 1-5
(:data:`CLINICAL`, in MedMNIST-C's units) and says what a level is in words a reader can picture
(:func:`level_meaning`): noise in grey levels out of 255, photons per pixel, blur in pixels, JPEG
quality, the resolution left. The report and the dashboard describe levels from here, so a level
means one thing everywhere.

Examples
--------
>>> level_meaning("gaussian_noise", 2)
'σ 0.08 (about 20 of 255 grey levels)'
>>> level_meaning("jpeg_compression", 5)
'JPEG quality 1'
>>> level_meaning("resolution_loss", 2, side=128)
'resolution × 0.1 (12 px across at 128 px, scaled back up)'
"""

from __future__ import annotations

__all__ = ["CLINICAL", "DISPLAY_NAMES", "LEVELS", "level_meaning", "level_label"]

#: The severity levels accepted by :func:`clinical_corrupt`.
LEVELS: tuple[int, ...] = (1, 2, 3, 4, 5)

CLINICAL: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.04, 0.08, 0.12, 0.18, 0.26),
    "speckle_noise": (0.05, 0.15, 0.25, 0.4, 0.7),
    "salt_and_pepper": (0.01, 0.03, 0.06, 0.09, 0.17),
    "poisson_noise": (300, 80, 25, 10, 5),
    "gaussian_blur": (11, 25, 41, 61, 81),
    "contrast_reduction": (0.9, 0.8, 0.7, 0.6, 0.4),
    "gamma_shift": (1.1, 1.2, 1.3, 1.4, 1.6),
    "jpeg_compression": (50, 15, 7, 3, 1),
    "resolution_loss": (0.3, 0.1, 0.08, 0.065, 0.05),
}
"""Parameter of each corruption at levels 1..5, in MedMNIST-C's units (see the module docstring).

Calibrated so that level 1 barely moves a standard model and level 5 brings it near chance, on the
shipped ``standard`` model (ResNet-18, 128 px, the 118 test images, clean AUROC 0.69); the AUROC at
levels 1..5 is given per line (noises: mean over 4 seeds). MedMNIST-C's ``pneumoniamnist`` ladders
stop short of that (AUROC 0.65 at their top Gaussian level, 0.68 for blur and pixelation), so each
ladder starts from MedMNIST-C's harsher ``chestmnist`` ladder and is extended where that is not
enough. Kernel sizes and resize factors act in pixels: the ladders are calibrated at 128 px.

- gaussian_noise (std): ``chestmnist`` ladder unchanged; it already ends near chance (0.69, 0.65,
  0.60, 0.55, 0.51). The paper's variances 0.1 and 0.5 (std 0.32, 0.71) lie beyond chance here.
- speckle_noise (std): ``chestmnist`` levels 1-2 (0.05, 0.15), then 0.25, 0.4 and 0.7, past its top
  0.45 (0.55): speckle scales with the grey level, so dark lungs need more (0.69, 0.66, 0.61, 0.56,
  0.53).
- salt_and_pepper (amount): ``chestmnist`` ladder unchanged, low fractions only (1-17 % of
  pixels); more does not help, the AUROC levels off around 0.55 (0.68, 0.65, 0.60, 0.58, 0.54).
- poisson_noise (photons at white; fewer is worse): ``pneumoniamnist`` levels 1 and 5 (300, 80),
  then ``chestmnist`` levels 2, 4 and 5 (25, 10, 5); ``chestmnist`` level 1 (60) already costs 0.04
  (0.69, 0.66, 0.59, 0.55, 0.52).
- gaussian_blur (odd kernel, sigma 0.15 k + 0.35): ``chestmnist`` level 5 (11) as level 1, then 25,
  41, 61, 81 (sigma 2.0 to 12.5 px): the model barely reacts to blur below sigma 4 px (0.68, 0.65,
  0.61, 0.55, 0.48).
- contrast_reduction (factor): ``chestmnist``/``pneumoniamnist`` ``contrast_down`` unchanged (0.68,
  0.64, 0.60, 0.56, 0.52).
- gamma_shift (gamma > 1 darkens): ``chestmnist``/``pneumoniamnist`` ``gamma_corr_up`` unchanged
  (0.68, 0.63, 0.59, 0.55, 0.52). ``gamma_corr_down`` (0.9 .. 0.4) is not monotone here (0.48 at
  0.6, 0.53 at 0.4); use :func:`corrupt_with_param` for it.
- jpeg_compression (quality): ``chestmnist`` levels 1, 3, 5 (50, 15, 7), then 3 and 1, the lowest
  quality there is; JPEG alone cannot bring this model near chance (0.69, 0.68, 0.66, 0.64, 0.64).
- resolution_loss (factor): ``chestmnist`` levels 1 and 5 (0.30, 0.10), then 0.08, 0.065, 0.05:
  38, 12, 10, 8 and 6 px at 128 px, where the model holds until 12 px and then drops fast (0.68,
  0.67, 0.60, 0.57, 0.49).
"""


#: How each corruption is named on a page.
DISPLAY_NAMES: dict[str, str] = {
    "gaussian_noise": "Gaussian noise", "speckle_noise": "Speckle noise", "salt_and_pepper": "Salt and pepper",
    "poisson_noise": "Poisson (quantum) noise", "gaussian_blur": "Blur", "contrast_reduction": "Lower contrast",
    "gamma_shift": "Gamma shift", "jpeg_compression": "JPEG compression", "resolution_loss": "Lower resolution",
}


def _grey(v: float) -> str:
    return f"about {v * 255:.0f} of 255 grey levels"


def level_meaning(name: str, level: int, *, side: int = 128) -> str:
    """What corruption ``name`` at ``level`` (1-5) does, in physical units (``side``: image side in px).

    Raises
    ------
    ValueError
        An unknown corruption name (the message lists the nine) or a level outside 1-5.
    """
    if name not in CLINICAL:
        raise ValueError(f"unknown clinical corruption {name!r}; choose one of {', '.join(CLINICAL)}")
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    v = CLINICAL[name][level - 1]
    text = {
        "gaussian_noise": lambda: f"σ {v:g} ({_grey(v)})",
        "speckle_noise": lambda: f"multiplicative σ {v:g} ({_grey(v * 0.5)} at mid-grey)",
        "salt_and_pepper": lambda: f"{100 * v:g} % of pixels turned black or white",
        "poisson_noise": lambda: f"{v:g} photons per pixel at full white (quantum noise of a low dose)",
        "gaussian_blur": lambda: f"blur kernel {v:g} px, σ {0.15 * v + 0.35:.1f} px at {side} px",
        "contrast_reduction": lambda: f"contrast × {v:g}",
        "gamma_shift": lambda: f"gamma {v:g} (darker mid-tones)",
        "jpeg_compression": lambda: f"JPEG quality {v:g}",
        "resolution_loss": lambda: f"resolution × {v:g} ({max(1, int(side * v))} px across at {side} px, scaled back up)",
    }[name]
    return text()


def level_label(name: str, level: int, *, side: int = 128) -> str:
    """``"Gaussian noise, level 2: σ 0.08 (about 20 of 255 grey levels)"``."""
    return f"{DISPLAY_NAMES[name]}, level {level}: {level_meaning(name, level, side=side)}"
