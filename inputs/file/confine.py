"""Confinement: a file input opens only regular files beneath its roots, whatever the symlinks on the way say.

The agent reads with more privilege than the pods whose logs it reads (root, or CAP_DAC_READ_SEARCH), and pods
write into some of the trees it tails: emptyDir and hostPath volumes. A symlink a pod places there, pointing at a
root-only file (a service-account token, another pod's logs, /etc/shadow), must not make the agent ship that file
as the pod's logs. So every open resolves the path and refuses it unless the file it reaches is a regular file
beneath an allowed root:

- a path under a pod volume (`.../var/lib/kubelet/pods/<uid>/volumes/<plugin>/<volume>/...`): that volume's
  directory, and nothing else — not another volume, not the pod's other files;
- any other path: the fixed directory part of the glob it matched (`/var/log/containers` for
  `/var/log/containers/*.log`), plus the input's `symlink_targets` (config) and, for the kubelet's
  `/var/log/containers` and `/var/log/pods` trees, `<prefix>/var/log/pods` and `<prefix>/var/lib/docker/containers`
  (the kubelet's links point there, and docker's `0.log` links on into its own tree).

The open itself cannot be raced into leaving the root: with `openat2(2)` (Linux 5.6+, through ctypes) the resolved
path is opened relative to the root with `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`, so a symlink swapped in after
the check that points out of the root is refused by the kernel; without it, the path is walked one component at a
time with `O_NOFOLLOW` from the root's descriptor. FIFOs, devices, sockets and directories are refused before
they are opened (and checked again on the descriptor).

Each refused file (per path and target: a link that changes target is a new refusal) is logged once and counted
once in `logagent_files_refused_total{input,reason}` (reason `outside_root` or `not_regular`), however often the
scans meet it again. A refusal raises `Refused`, an `OSError` (EACCES), so a caller that
treats open errors alike still never reads the file. This module opens files and never reads from them.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import re
import stat
from collections.abc import Iterable
from typing import NoReturn

from logagent import metrics
from logagent.metricslib import Counter

log = logging.getLogger("logagent.input.file")

FILES_REFUSED = Counter(
    "logagent_files_refused_total", "Files a file input refused to open: outside its root, or not regular files",
    ["input", "reason"], registry=metrics.REGISTRY,
)

_VOLUME = re.compile(r"^(?P<root>.*/var/lib/kubelet/pods/[^/]+/volumes/[^/]+/[^/]+)(?:/|$)")
_KUBELET_LOGS = re.compile(r"^(?P<prefix>.*)/var/log/(?:containers|pods)(?:/|$)")
_MAGIC = ("*", "?", "[")
_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_BENEATH = 0x08
_SYS_OPENAT2 = 437  # the same number on every architecture (added after the syscall tables were unified)


class Refused(OSError):
    """The path leads outside the input's root, or to something that is not a regular file."""

    def __init__(self, path: str, reason: str, target: str) -> None:
        super().__init__(errno.EACCES, f"refused ({reason}): {path} -> {target}")
        self.reason = reason
        self.target = target


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


class _Openat2:
    """`openat2(2)` through libc's `syscall`, or unavailable (None from `open`) on kernels and libcs without it."""

    def __init__(self) -> None:
        self.available = os.uname().sysname == "Linux"
        self._syscall = None
        if self.available:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                self._syscall = libc.syscall
                self._syscall.restype = ctypes.c_long
            except (OSError, AttributeError):
                self.available = False

    def open(self, dirfd: int, relpath: str) -> int | None:
        if not self.available or self._syscall is None:
            return None
        how = _OpenHow(_FLAGS, 0, _RESOLVE_BENEATH | _RESOLVE_NO_MAGICLINKS)
        fd = int(self._syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(dirfd), os.fsencode(relpath),
                               ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how))))
        if fd >= 0:
            return fd
        err = ctypes.get_errno()
        if err in (errno.ENOSYS, errno.EPERM) and self.available:
            # no openat2 here (old kernel, or a seccomp filter that answers EPERM): walk instead, from now on
            self.available = False
            return None
        raise OSError(err, os.strerror(err), relpath)


_OPENAT2 = _Openat2()


def glob_root(pattern: str) -> str:
    """The fixed directory part of a glob: `/var/log/pods` for `/var/log/pods/*/*/*.log`."""
    fixed: list[str] = []
    for part in pattern.split("/")[:-1]:
        if any(c in part for c in _MAGIC):
            break
        fixed.append(part)
    return "/".join(fixed) or "/"


def default_targets(globs: Iterable[str]) -> list[str]:
    """Where the kubelet's (and docker's) links under these globs point: allowed without configuration."""
    out: list[str] = []
    for pattern in globs:
        m = _KUBELET_LOGS.match(glob_root(pattern) + "/")
        if m:
            prefix = m.group("prefix")
            out += [f"{prefix}/var/log/pods", f"{prefix}/var/lib/docker/containers"]
    return out


def _beneath(path: str, root: str) -> bool:
    return root == "/" or path == root or path.startswith(root + "/")


class Confinement:
    """The roots of one file input, and the only way it opens the files it follows."""

    def __init__(self, input_name: str, globs: Iterable[str], symlink_targets: Iterable[str] = ()) -> None:
        globs = list(globs)
        self.input = input_name
        self.roots = sorted({glob_root(g) for g in globs} | set(default_targets(globs)) | set(symlink_targets))
        self._reported: set[tuple[str, str]] = set()
        self._counters = {r: FILES_REFUSED.labels(input=input_name, reason=r) for r in ("outside_root",
                                                                                         "not_regular")}

    def allowed_roots(self, path: str) -> list[str]:
        """The directories the file behind `path` may be in (real paths)."""
        m = _VOLUME.match(path)
        roots = [m.group("root")] if m else self.roots
        return [os.path.realpath(r) for r in roots]

    def open(self, path: str) -> int:
        """A read-only, non-blocking descriptor of the regular file behind `path`, beneath an allowed root.
        Raises `Refused` (counted and logged once) or the OSError of the open (ENOENT for a dangling link...)."""
        real = os.path.realpath(path)
        root = next((r for r in self.allowed_roots(path) if _beneath(real, r)), None)
        if root is None:
            self._refuse(path, "outside_root", real)
        st = os.lstat(real)
        if not stat.S_ISREG(st.st_mode):
            self._refuse(path, "not_regular", real)
        fd = self._open_beneath(root, os.path.relpath(real, root), path)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                self._refuse(path, "not_regular", real)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _open_beneath(self, root: str, rel: str, path: str) -> int:
        dirfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            try:
                fd = _OPENAT2.open(dirfd, rel)
            except OSError as e:
                if e.errno in (errno.EXDEV, errno.ELOOP):  # the path changed since it was resolved: it escapes
                    self._refuse(path, "outside_root", os.path.join(root, rel))
                raise
            if fd is not None:
                return fd
            return self._walk(dirfd, root, rel, path)
        finally:
            os.close(dirfd)

    def _walk(self, dirfd: int, root: str, rel: str, path: str) -> int:
        """Component by component with O_NOFOLLOW: the resolved path holds no symlink, so one met now was put there
        after the check."""
        parts = [p for p in rel.split("/") if p not in ("", ".")]
        if not parts or ".." in parts:
            self._refuse(path, "outside_root", os.path.join(root, rel))
        fds: list[int] = []
        try:
            cur = dirfd
            for part in parts[:-1]:
                cur = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=cur)
                fds.append(cur)
            return os.open(parts[-1], _FLAGS | os.O_NOFOLLOW, dir_fd=cur)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                self._refuse(path, "outside_root", os.path.join(root, rel))
            raise
        finally:
            for fd in fds:
                os.close(fd)

    def _refuse(self, path: str, reason: str, target: str) -> NoReturn:
        key = (path, target)
        if key not in self._reported:
            self._counters[reason].inc()
            if len(self._reported) > 10000:
                self._reported.clear()
            self._reported.add(key)
            log.warning("refusing to read a file: it is not a regular file beneath the input's root"
                        if reason == "not_regular" else
                        "refusing to read a file: a symlink leads outside the input's root",
                        extra={"input": self.input, "path": path, "target": target, "reason": reason})
        raise Refused(path, reason, target)
