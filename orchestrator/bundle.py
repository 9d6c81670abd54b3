"""The evidence bundle on disk: private folders, files, and ``manifest.json`` with digests.

Layout::

    OUT/manifest.json                 what was run, per-host outcome, SHA-256 of every file
    OUT/<host>/<iface>.pcap           the capture, as tcpdump wrote it
    OUT/<host>/before/*.txt           snapshot before the capture (ss, nstat, ip, conntrack...)
    OUT/<host>/after/*.txt            the same after
    OUT/<host>/<iface>.tcpdump.txt    tcpdump's stderr (its packet and kernel-drop counts)
    OUT/<host>/commands.jsonl         every remote command: exact line, exit status, stderr, times
    OUT/<host>/reproduce.txt          output of --reproduce (on the host it ran on)
    OUT/debug.log                     only when something unexpected happened

Everything is created 0700 (folders) and 0600 (files). The manifest's model is in
``orchestrator.manifest`` (pydantic is not needed to read or verify a bundle).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.errors import BundleError

if TYPE_CHECKING:
    from orchestrator.manifest import Manifest

MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"  # `sha256sum -c SHA256SUMS` checks a bundle without capture-all


class Bundle:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._folders: set[tuple[str, ...]] = set()  # made already (a host writes dozens of files)
        # What this process wrote, with its SHA-256 taken from the bytes as they went out (or, for
        # a transferred file, as it was checked against the host's): the manifest need not read
        # them all again (2,100 files of a 100-host run, 0.1 s; a pcap of 1 GB, seconds). Keyed
        # by path, with the size and mtime the file had then: a file changed since is read again.
        # An append-only file keeps its running SHA-256 instead of a digest.
        self._known: dict[Path, tuple[int, int, Any]] = {}

    @classmethod
    def create(cls, root: Path) -> Bundle:
        try:
            if root.exists() and any(root.iterdir()):
                raise BundleError(f"--out {root}: folder exists and is not empty")
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(root, 0o700)
        except OSError as exc:
            raise BundleError(f"--out {root}: cannot create: {exc.strerror}") from None
        return cls(root)

    def _inside(self, rel: str) -> Path:
        """``root/rel`` for a plain relative path; raises BundleError for anything that could
        leave the bundle (absolute, ``..``, empty or ``.`` parts, NUL). Names of files come from the
        plan, never from a host; this is the last guard if one ever did."""
        parts = rel.split("/")
        if any(p in ("", ".", "..") or "\0" in p for p in parts):
            raise BundleError(f"refusing to write {rel!r} in the bundle: not a plain path inside it")
        return self.root.joinpath(*parts)

    def folder(self, *parts: str) -> Path:
        """``root/parts...``, every folder created 0700 (``mkdir(parents=True)`` would give the
        intermediate ones the umask's mode)."""
        path = self._inside("/".join(parts)) if parts else self.root
        if parts not in self._folders:
            made = self.root
            for part in Path(*parts).parts if parts else ():
                made = made / part
                made.mkdir(mode=0o700, exist_ok=True)
            self._folders.add(parts)
        return path

    def write(self, rel: str, data: str | bytes) -> Path:
        """Raises BundleError for a path that is not plainly inside the bundle, OSError where the
        file is a symlink (never followed)."""
        path = self._inside(rel)
        self.folder(*Path(rel).parent.parts)
        raw = data.encode() if isinstance(data, str) else data
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            st = os.fstat(fh.fileno())
        self._known[path] = (st.st_size, st.st_mtime_ns, hashlib.sha256(raw).hexdigest())
        return path

    def append_jsonl(self, rel: str, record: dict[str, Any]) -> None:
        path = self._inside(rel)
        self.folder(*Path(rel).parent.parts)
        raw = (json.dumps(record) + "\n").encode()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "ab") as fh:
            before = os.fstat(fh.fileno()).st_size
            fh.write(raw)
            fh.flush()
            st = os.fstat(fh.fileno())
        known = self._known.get(path)
        if before == 0:
            running = hashlib.sha256()
        elif known is not None and known[0] == before and not isinstance(known[2], str):
            running = known[2]
        else:
            self._known.pop(path, None)  # not all of it went through here: read it at the end
            return
        running.update(raw)
        self._known[path] = (st.st_size, st.st_mtime_ns, running)

    def transferred(self, path: Path, sha256: str) -> None:
        """A file that came by transfer and whose SHA-256 was just checked against the host's."""
        st = path.stat()
        self._known[path] = (st.st_size, st.st_mtime_ns, sha256)

    def _digest(self, path: Path, st: os.stat_result) -> str:
        known = self._known.get(path)
        if known is not None and (st.st_size, st.st_mtime_ns) == known[:2]:
            return known[2] if isinstance(known[2], str) else str(known[2].hexdigest())
        return sha256_file(path)

    def digests(self) -> dict[str, str]:
        """Every file's SHA-256 by its path in the bundle, in path order. (One ``scandir`` a
        folder and one stat a file: pathlib's rglob, is_file and relative_to took 0.1 s for the
        2,100 files of a 100-host run.)"""
        found: list[tuple[list[str], Path, os.stat_result]] = []

        def walk(folder: Path, rel: list[str]) -> None:
            with os.scandir(folder) as it:
                for entry in it:
                    if entry.is_dir():
                        walk(folder / entry.name, [*rel, entry.name])
                    elif entry.is_file() and entry.name not in (MANIFEST, SUMS) and not entry.name.endswith(".part"):
                        found.append(([*rel, entry.name], folder / entry.name, entry.stat()))

        walk(self.root, [])
        found.sort(key=lambda f: f[0])
        return {"/".join(parts): self._digest(path, st) for parts, path, st in found}

    def write_manifest(self, manifest: Manifest) -> Path:
        """The manifest with every file's SHA-256, and the same digests (the manifest's too) as
        SHA256SUMS, in the format `sha256sum -c` reads."""
        manifest.files = self.digests()
        path = self.write(MANIFEST, manifest.model_dump_json(by_alias=True, indent=2) + "\n")
        sums = {**manifest.files, MANIFEST: self._digest(path, path.stat())}
        self.write(SUMS, "".join(f"{digest}  {rel}\n" for rel, digest in sorted(sums.items())))
        return path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(root: Path) -> list[str]:
    """Problems with a bundle's digests (empty list: every file matches its manifest entry)."""
    try:
        data = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        return [f"{root / MANIFEST}: unreadable ({exc})"]
    problems = []
    for rel, digest in data.get("files", {}).items():
        path = root / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif sha256_file(path) != digest:
            problems.append(f"{rel}: SHA-256 differs from the manifest")
    return problems
