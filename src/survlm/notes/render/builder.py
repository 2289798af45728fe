"""Building the note text while recording each mention's character offsets."""
from __future__ import annotations

from .core import Mention


class NoteBuilder:
    def __init__(self):
        self.parts: list[str] = []
        self.length = 0
        self.mentions: list[Mention] = []

    def add(self, text: str) -> None:
        self.parts.append(text)
        self.length += len(text)

    def mention(self, m: Mention, surface: str) -> None:
        m.start, m.end, m.text = self.length, self.length + len(surface), surface
        self.mentions.append(m)
        self.add(surface)

    def text(self) -> str:
        return "".join(self.parts)
