"""learning-to-look: align a CNN's attention with maps from a vision-language model."""

__version__ = "0.1.0"
