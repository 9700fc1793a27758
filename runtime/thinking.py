"""Hiding a reasoning model's ``<think>...</think>`` block from chat output (Qwen3).

Qwen3 opens a reply with its reasoning between ``<think>`` and ``</think>``
(with ``enable_thinking=False`` the template writes an empty block into the
prompt instead). :class:`ThinkFilter` drops the block from streamed text and
holds back any text that might be the start of a tag until it can tell.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

__all__ = ["ThinkFilter", "strip_thinking"]

OPEN_TAG, CLOSE_TAG = "<think>", "</think>"


def _partial_tag_len(text: str, tag: str) -> int:
    """Length of the longest suffix of text that is a proper prefix of tag."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class ThinkFilter:
    """Feed text pieces with push(); get back the text outside think blocks."""

    def __init__(self) -> None:
        self._buf = ""
        self._inside = False
        self._after_close = False  # drop the newlines that follow </think>

    def push(self, piece: str) -> str:
        self._buf += piece
        out: list[str] = []
        while True:
            if self._inside:
                end = self._buf.find(CLOSE_TAG)
                if end < 0:
                    keep = _partial_tag_len(self._buf, CLOSE_TAG)
                    self._buf = self._buf[len(self._buf) - keep :]
                    break
                self._buf = self._buf[end + len(CLOSE_TAG) :]
                self._inside, self._after_close = False, True
                continue
            if self._after_close:
                self._buf = self._buf.lstrip("\n")
                if not self._buf:
                    break
                self._after_close = False
            start = self._buf.find(OPEN_TAG)
            if start >= 0:
                out.append(self._buf[:start])
                self._buf = self._buf[start + len(OPEN_TAG) :]
                self._inside = True
                continue
            keep = _partial_tag_len(self._buf, OPEN_TAG)
            out.append(self._buf[: len(self._buf) - keep])
            self._buf = self._buf[len(self._buf) - keep :]
            break
        return "".join(out)

    def flush(self) -> str:
        """What is held back at the end (an unfinished think block is dropped)."""
        tail = "" if self._inside else self._buf
        self._buf = ""
        return tail


def filter_stream(pieces: Iterable[str]) -> Iterator[str]:
    f = ThinkFilter()
    for piece in pieces:
        text = f.push(piece)
        if text:
            yield text
    tail = f.flush()
    if tail:
        yield tail


def strip_thinking(text: str) -> str:
    """text without its think blocks."""
    return "".join(filter_stream([text]))
