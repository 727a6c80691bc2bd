"""Logging: structlog events on stderr, JSON lines in a pod, a readable console on a terminal.

stdout belongs to plans, tables and results; logs never go there. Configuration happens once, in
the command-line entry point; library modules only call `structlog.get_logger()`.

Decisions:
- Nothing counts log lines: metrics observe what they count where it happens (retries through
  `containerdisks.retry.observing`), so an event may be renamed or filtered by level freely.
- No secret reaches the output: every string of an event is passed through
  `containerdisks.oci.redact.redact` before rendering (so a secret with a quote or a backslash
  is masked before JSON escapes it), and the rendered line once more (for what the renderer
  took from a `repr`). The command line also wraps stdout and stderr in `RedactingStream`, for
  what is printed rather than logged (tables, tracebacks, the standard library's log records).
- On a terminal with the console format, a `ProgressConsole` owns stderr: log lines are written
  above a block of progress bars (downloads and pushes in flight), which is cleared and drawn
  again around each line, so bars never tear log lines. Off a terminal there are no bars: JSON
  lines only, one event per stage, and a `progress` event per transfer every
  `progress_interval` seconds (daemon.py).
- A one-shot command that prints per entry what happened (commands/push.py: the plan rows, the
  outcome, the failures once per cause) `fold`s the events that would say it again: on a
  terminal they are logged at debug (shown with `--log-level debug`); JSON logs keep every
  event at its level, for programs that read them.
- A bar never wraps: it is cut to the terminal's width (read again at every redraw, so a
  resized window is followed), one column short of it. A wrapped bar would take two rows while
  the console moves the cursor up one per bar, leaving stale fragments on the screen.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Iterable, MutableMapping, Sequence
from typing import Any, Literal, TextIO

import structlog
from structlog.typing import Processor

from containerdisks.oci.redact import redact, redact_data

__all__ = [
    "ProgressConsole",
    "RedactingStream",
    "configure",
    "console",
    "fold",
    "format_bar",
    "format_eta",
]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "exception": logging.ERROR,
    "critical": logging.CRITICAL,
}

_state: dict[str, Any] = {"console": None, "level": "info", "fmt": "auto", "folded": frozenset()}


class ProgressConsole:
    """A terminal: log lines scroll above, progress bars stay below them."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._bars: list[str] = []
        self._drawn = 0
        self._lock = threading.Lock()  # log lines may come from worker threads

    def _clear(self) -> None:
        if self._drawn:
            # Up to the first bar's line, then erase to the end of the screen.
            self.stream.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0

    def columns(self) -> int:
        """The terminal's width now (80 when it cannot be read)."""
        try:
            return os.get_terminal_size(self.stream.fileno()).columns or 80
        except (AttributeError, ValueError, OSError):
            return 80

    def _draw(self) -> None:
        width = max(1, self.columns() - 1)
        for bar in self._bars:
            self.stream.write(bar[:width] + "\n")
        self._drawn = len(self._bars)

    def line(self, text: str) -> None:
        with self._lock:
            self._clear()
            self.stream.write(text + "\n")
            self._draw()
            self.stream.flush()

    def bars(self, bars: Sequence[str]) -> None:
        with self._lock:
            if not bars and not self._drawn:
                return
            self._clear()
            self._bars = list(bars)
            self._draw()
            self.stream.flush()


class _ConsoleLogger:
    """The structlog logger that writes rendered lines through a `ProgressConsole`."""

    def __init__(self, console: ProgressConsole) -> None:
        self._console = console

    def msg(self, message: str) -> None:
        self._console.line(message)

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


def _units(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover - the loop returns


def format_eta(seconds: float) -> str:
    """`m:ss`, or `h:mm:ss` from an hour on."""
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02}:{secs:02}" if hours else f"{minutes}:{secs:02}"


def format_bar(
    label: str, done: int, total: int | None, seconds: float, *, columns: int = 80
) -> str:
    """One progress line of at most `columns - 1` characters: label, bar (when the size is
    known and there is room), percentage, bytes, rate and time left. On a narrow terminal the
    time left goes first, then the rate, the bytes and the bar; the label keeps a third."""
    limit = max(1, columns - 1)
    rate = done / seconds if seconds > 0 else 0.0
    if total:
        parts = [f" {100 * done / total:5.1f}%", f" {_units(done)}/{_units(total)}"]
    else:
        parts = [f" {_units(done)}"]
    if rate:
        parts.append(f" {_units(rate)}/s")
    if rate and total and done < total:
        parts.append(f" ETA {format_eta((total - done) / rate)}")
    keep = min(len(label), limit // 3)
    while len(parts) > 1 and len("".join(parts)) + keep > limit:
        parts.pop()
    figures = "".join(parts)
    room = limit - len(figures)
    cells = min(30, room - min(len(label), 40) - 1) if total else 0
    bar = ""
    if cells >= 10:
        filled = min(cells, int(cells * done / total)) if total else 0
        bar = " " + "█" * filled + "·" * (cells - filled)
    name_width = max(1, min(room - len(bar), max(40, len(label))))
    name = label if len(label) <= name_width else label[: name_width - 1] + "…"
    return f"{name:<{name_width}}{bar}{figures}"[:limit].rstrip()


def _level_filter(min_level: int) -> Processor:
    def drop_below(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        if _LEVELS.get(str(event.get("level", "info")), logging.INFO) < min_level:
            raise structlog.DropEvent
        return event

    return drop_below


def _fold_event(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    if _state["console"] is not None and event.get("event") in _state["folded"]:
        event["level"] = "debug"
    return event


def fold(events: Iterable[str]) -> None:
    """On a terminal, log `events` at debug from now on (see the docstring); no-op elsewhere."""
    _state["folded"] = frozenset(events)


def _redact_event(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in event.items():
        event[key] = redact_data(value)
    return event


def _redacting(renderer: Processor) -> Processor:
    def render(logger: Any, method: str, event: MutableMapping[str, Any]) -> Any:
        line = renderer(logger, method, event)
        return redact(line) if isinstance(line, str) else line

    return render


class RedactingStream:
    """A text stream that masks every registered secret in what is written to it; anything
    else (`isatty`, `fileno`, `flush`, `encoding`, ...) is the wrapped stream's."""

    def __init__(self, stream: TextIO) -> None:
        self.wrapped = stream

    def write(self, text: str) -> int:
        self.wrapped.write(redact(text))
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)


def configure(
    level: str = "info",
    fmt: Literal["auto", "json", "console"] = "auto",
    stream: TextIO | None = None,
) -> None:
    out = stream or sys.stderr
    tty = out.isatty()
    use_console = fmt == "console" or (fmt == "auto" and tty)
    renderer: Processor = (
        structlog.dev.ConsoleRenderer(colors=tty)
        if use_console
        else structlog.processors.JSONRenderer(sort_keys=True)
    )
    progress = ProgressConsole(out) if use_console and tty else None
    _state.update(console=progress, level=level, fmt=fmt, folded=frozenset())
    logger_factory: Any = (
        (lambda *_: _ConsoleLogger(progress))
        if progress is not None
        else structlog.PrintLoggerFactory(out)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _fold_event,
            _level_filter(_LEVELS[level]),
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redact_event,
            _redacting(renderer),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=logger_factory,
        cache_logger_on_first_use=False,
    )


def console() -> ProgressConsole | None:
    """The progress console, when logs go to a terminal in the console format."""
    progress: ProgressConsole | None = _state["console"]
    return progress
