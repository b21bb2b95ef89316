"""What ``superres upscale`` works on: input files, folders and URLs, each with its output path."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
KEEPS_FORMAT = {".png", ".jpg", ".jpeg", ".webp"}  # other inputs come back as PNG
EXTENSIONS = {"png": ".png", "jpeg": ".jpg", "jpg": ".jpg", "webp": ".webp"}


@dataclass(frozen=True)
class Task:
    source: str  # a file path or an http(s) URL
    label: str
    output: Path

    @property
    def is_url(self) -> bool:
        return self.source.startswith(("http://", "https://"))


def _output(out_dir: Path, relative: PurePosixPath | Path, fmt: str | None) -> Path:
    suffix = relative.suffix.lower()
    ext = EXTENSIONS[fmt] if fmt else (suffix if suffix in KEEPS_FORMAT else ".png")
    return out_dir / Path(relative).with_suffix(ext)


def collect(inputs: list[str], out_dir: Path, pattern: str | None, fmt: str | None) -> list[Task]:
    """One task per image: files as given, folders recursively (``pattern`` or image suffixes),
    URLs by the last segment of their path. Raises ``FileNotFoundError`` for a missing input."""
    tasks: list[Task] = []
    for item in inputs:
        if item.startswith(("http://", "https://")):
            name = PurePosixPath(urlparse(item).path).name or "image.png"
            tasks.append(Task(item, item, _output(out_dir, PurePosixPath(name), fmt)))
            continue
        path = Path(item)
        if path.is_dir():
            found = path.rglob(pattern) if pattern else path.rglob("*")
            for file in sorted(found):
                if file.is_file() and (pattern or file.suffix.lower() in IMAGE_SUFFIXES):
                    relative = file.relative_to(path)
                    tasks.append(Task(str(file), str(file), _output(out_dir, relative, fmt)))
        elif path.is_file():
            tasks.append(Task(str(path), str(path), _output(out_dir, Path(path.name), fmt)))
        else:
            raise FileNotFoundError(f"no such file or folder: {item}")
    return tasks
