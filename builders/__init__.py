"""`datasets` builders of the project."""

from .mub import Mub, MubConfig

__all__ = ["Mub", "MubConfig"]
