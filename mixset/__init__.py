"""mixset: assemble PixMix mixing sets and pre-generate PixMix training data, on top of ``pixmix``."""

__version__ = "0.1.0"
