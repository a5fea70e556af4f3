"""Small shared helpers: atomic file writes and the one progress/logging path."""

from pc3d.utils.atomic import atomic_write, atomic_write_json, atomic_replace_dir
from pc3d.utils.progress import progress, get_logger

__all__ = ["atomic_write", "atomic_write_json", "atomic_replace_dir", "progress", "get_logger"]
