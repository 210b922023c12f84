"""zirelia-local: turn a written persona into a LoRA that draws the same face every time."""

__version__ = "0.1.0"
