"""Progress of ``superres upscale``: on a terminal, one line per image in flight (tiles done from
the job's progress) and an overall count, redrawn in place; otherwise plain lines as images end."""

from __future__ import annotations

from typing import TextIO

BAR = 20


class Display:
    def __init__(self, total: int, stream: TextIO, live: bool) -> None:
        self.total, self.stream, self.live = total, stream, live
        self.finished = self.failed = 0
        self.flying: dict[str, tuple[int, int]] = {}
        self._drawn = 0

    def start(self, label: str) -> None:
        self.flying[label] = (0, 0)
        self._draw()

    def progress(self, label: str, done: int, total: int) -> None:
        if label in self.flying:
            self.flying[label] = (done, total)
            self._draw()

    def end(self, label: str, status: str, detail: str) -> None:
        self.flying.pop(label, None)
        self.finished += 1
        self.failed += status == "failed"
        self._clear()
        print(f"[{self.finished}/{self.total}] {status:7} {label}  {detail}", file=self.stream)
        self._draw()

    def close(self) -> None:
        self._clear()

    def _clear(self) -> None:
        if self.live and self._drawn:
            self.stream.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0

    def _draw(self) -> None:
        if not self.live:
            return
        self._clear()
        lines = []
        for label, (done, total) in self.flying.items():
            tiles = f"{done}/{total} tiles" if total else "queued"
            lines.append(f"  {label[-40:]:40} {_bar(done, total)} {tiles}")
        overall = f"{self.finished}/{self.total} images, {self.failed} failed"
        lines.append(f"  {'all':40} {_bar(self.finished, self.total)} {overall}")
        self.stream.write("\n".join(lines) + "\n")
        self.stream.flush()
        self._drawn = len(lines)


def _bar(done: int, total: int) -> str:
    filled = BAR * done // total if total else 0
    return f"[{'#' * filled}{'.' * (BAR - filled)}]"
