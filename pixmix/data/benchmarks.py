"""The names of the robustness benchmarks' corruptions and perturbations: their files on disk.

Data readers find ``<name>.npy`` by these names and the metrics average over them, so they live on the
data floor, below both.
"""

from __future__ import annotations

# --- CIFAR-10/100-C and ImageNet-C (Hendrycks & Dietterich 2019) ----------------------------------------
CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)

# --- CIFAR-10-C-Bar / ImageNet-C-Bar (Mintun et al. 2021, facebookresearch/augmentation-corruption) -----
# Each C-Bar ``.npy`` stacks 5 severities like -C; the names are the generator's (its csv files), typos included.
C_BAR_CORRUPTIONS = (
    "blue_noise_sample", "checkerboard_cutout", "inverse_sparkles", "pinch_and_twirl", "ripple",
    "brownish_noise", "circular_motion_blur", "lines", "sparkles", "transverse_chromatic_abberation",
)
IMAGENET_C_BAR_CORRUPTIONS = (
    "caustic_refraction", "inverse_sparkles", "sparkles", "perlin_noise", "blue_noise_sample",
    "plasma_noise", "checkerboard_cutout", "cocentric_sine_waves", "single_frequency_greyscale", "brownish_noise",
)

# --- CIFAR-10/100-P and ImageNet-P (Hendrycks & Dietterich 2019) ----------------------------------------
# The ten perturbations the reference evaluation scripts average over (hendrycks/robustness
# ImageNet-P/cifar-p-eval.py, also used by AugMix and PixMix): spatter is in, snow is not.
P_PERTURBATIONS = (
    "gaussian_noise", "shot_noise", "motion_blur", "zoom_blur", "spatter",
    "brightness", "translate", "rotate", "tilt", "scale",
)
# Released as the validation perturbations: reported when present, never part of the mean.
P_EXTRA_PERTURBATIONS = ("speckle_noise", "gaussian_blur", "snow", "shear")
# ImageNet-P's own ten (hendrycks/robustness README): snow is in the mean; spatter is a validation sequence.
IMAGENET_P_PERTURBATIONS = (
    "gaussian_noise", "shot_noise", "motion_blur", "zoom_blur", "snow",
    "brightness", "translate", "rotate", "tilt", "scale",
)
IMAGENET_P_EXTRA_PERTURBATIONS = ("speckle_noise", "gaussian_blur", "spatter", "shear")
