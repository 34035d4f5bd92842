"""medrobust: how far can a chest X-ray classifier be trusted under noise, miscalibration and attack.

Reproduces and extends Martínez-Martínez & Nabavi, "Addressing Vulnerability in Medical Deep
Learning through Robust Training". Images are 1-channel floats in [0, 1]; models normalise inside
``forward`` so every epsilon is in pixel units.
"""

__version__ = "0.1.0"
