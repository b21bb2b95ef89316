"""``superres upscale``'s progress display, on a terminal and in a log (no server)."""

from __future__ import annotations

import io

from superres_client._display import Display


def test_a_terminal_gets_a_bar_per_image_in_flight_and_an_overall_bar() -> None:
    out = io.StringIO()
    shown = Display(total=4, stream=out, live=True)
    shown.start("a.png")
    shown.start("b.png")
    shown.progress("a.png", 3, 4)
    frame = out.getvalue().rsplit("\x1b[J", 1)[-1].splitlines()
    assert frame[0].split() == ["a.png", "[###############.....]", "3/4", "tiles"]
    assert frame[1].split() == ["b.png", "[....................]", "queued"]
    assert frame[2].split()[:2] == ["all", "[....................]"]

    shown.end("a.png", "done", "-> out/a.png")
    shown.end("b.png", "failed", "not an image")
    frame = out.getvalue().rsplit("\x1b[J", 1)[-1].splitlines()
    assert frame[0] == "[2/4] failed  b.png  not an image"
    assert frame[1].split() == ["all", "[##########..........]", "2/4", "images,", "1", "failed"]
    shown.close()
    assert out.getvalue().endswith("\x1b[1F\x1b[J")  # the overall bar, cleared on close


def test_a_log_gets_one_plain_line_per_finished_image() -> None:
    out = io.StringIO()
    shown = Display(total=2, stream=out, live=False)
    shown.start("a.png")
    shown.progress("a.png", 1, 2)
    shown.end("a.png", "done", "-> out/a.png")
    shown.close()
    assert out.getvalue() == "[1/2] done    a.png  -> out/a.png\n"
