"""The ban lifecycle and its worker: what to ban, for how long, applied through ``block/``."""
