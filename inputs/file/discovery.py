"""Which files the input follows: globs minus excludes, and which directories to watch for them.

Globs match paths as the user wrote them, symlinks included (`/var/log/containers/*.log` are symlinks into
`/var/log/pods`); the file behind a symlink is what gets read. A directory that matches a glob is skipped (the
caller logs why). This module only looks at names and stat results; it never opens a file.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import stat
from dataclasses import dataclass, field

_MAGIC = ("*", "?", "[")


def has_magic(part: str) -> bool:
    return any(c in part for c in _MAGIC)


@dataclass(frozen=True)
class Found:
    path: str  # as matched by the glob
    dev: int
    ino: int
    size: int


@dataclass
class ScanResult:
    files: dict[str, Found] = field(default_factory=dict)
    directories: list[str] = field(default_factory=list)  # matched a glob but are directories
    vanished: list[str] = field(default_factory=list)  # matched, then gone before stat (or dangling symlinks)
    links: dict[str, str] = field(default_factory=dict)  # matched symlinks (dangling ones too) -> real target path


class FileGlobs:
    def __init__(self, paths: tuple[str, ...], exclude: tuple[str, ...]) -> None:
        self.paths = paths
        self.exclude = exclude
        self._split = [p.split("/") for p in paths]
        self._real: dict[str, tuple[str, str]] = {}  # link -> (what it says, the real path it resolved to)

    def excluded(self, path: str) -> bool:
        base = os.path.basename(path)
        for pat in self.exclude:
            if fnmatch.fnmatchcase(path, pat) or ("/" not in pat and fnmatch.fnmatchcase(base, pat)):
                return True
        return False

    def matches(self, path: str) -> bool:
        """Does `path` match one of the globs (and no exclude)? Same rules as glob: `*` stays in one directory."""
        parts = path.split("/")
        for pat in self._split:
            if "**" in pat:
                if fnmatch.fnmatchcase(path, "/".join(pat).replace("**", "*")):
                    return not self.excluded(path)
                continue
            if len(pat) == len(parts) and all(
                p == q or (has_magic(p) and fnmatch.fnmatchcase(q, p)) for p, q in zip(pat, parts)
            ):
                return not self.excluded(path)
        return False

    def scan(self) -> ScanResult:
        out = ScanResult()
        seen: set[str] = set()
        for pattern in self.paths:
            for path in glob.iglob(pattern, recursive=True):
                if path in seen or self.excluded(path):
                    continue
                seen.add(path)
                try:
                    if stat.S_ISLNK(os.lstat(path).st_mode):
                        out.links[path] = self._resolve(path)
                    st = os.stat(path)
                except OSError:
                    out.vanished.append(path)
                    continue
                if stat.S_ISDIR(st.st_mode):
                    out.directories.append(path)
                    continue
                out.files[path] = Found(path, st.st_dev, st.st_ino, st.st_size)
        if len(self._real) > len(out.links):
            self.forget_links(set(out.links))
        return out

    def _resolve(self, link: str) -> str:
        """The real path behind `link`, resolved again only when the link itself changed: a node's hundreds of
        `/var/log/containers` links are rescanned every poll, and `realpath` costs an lstat per path component.
        (A directory on the target's way turned into a link is seen late: events are then mapped by the poll,
        which stats through the link, and opening is confined on its own, `confine`.)"""
        says = os.readlink(link)
        known = self._real.get(link)
        if known is not None and known[0] == says:
            return known[1]
        real = os.path.realpath(link)
        self._real[link] = (says, real)
        return real

    def forget_links(self, present: set[str]) -> None:
        """Drop the cached resolutions of links that are gone."""
        for link in [k for k in self._real if k not in present]:
            del self._real[link]

    def watch_roots(self) -> list[tuple[str, int]]:
        """(directory, depth) to watch for files appearing: the fixed prefix of each glob, and how many levels of
        directories below it can hold matches (-1: any, for `**`; 0: the directory itself)."""
        roots: dict[str, int] = {}
        for parts in self._split:
            fixed: list[str] = []
            for part in parts[:-1]:
                if has_magic(part):
                    break
                fixed.append(part)
            directory = "/".join(fixed) or "/"
            depth = -1 if "**" in parts else len(parts) - 1 - len(fixed)
            old = roots.get(directory)
            roots[directory] = depth if old is None else (-1 if -1 in (old, depth) else max(old, depth))
        return sorted(roots.items())
