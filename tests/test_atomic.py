"""``medsegdiff.atomic``: a file is replaced whole or not at all, and no temporary file is left behind."""

import os
import stat

import pytest

from medsegdiff.atomic import atomic_copy, atomic_path, atomic_write_bytes
from medsegdiff.checkpoint import save_checkpoint
from medsegdiff.diffusion import DiffusionConfig
from medsegdiff.network import MedSegDiffUNet


def test_write_and_copy_replace_the_file_and_leave_nothing_else(tmp_path):
    target = tmp_path / "sub" / "data.bin"
    atomic_write_bytes(target, b"old")
    source = tmp_path / "source.bin"
    source.write_bytes(b"new" * 1_000_000)
    atomic_copy(source, target)
    assert target.read_bytes() == b"new" * 1_000_000
    assert sorted(p.name for p in target.parent.iterdir()) == ["data.bin"]


def test_an_error_while_writing_keeps_the_old_file_and_removes_the_temporary_one(tmp_path):
    target = tmp_path / "data.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]


def test_checkpoint_is_readable_by_others_whatever_the_umask(tmp_path):
    network = MedSegDiffUNet(2, 1, 1, (16, 16), channels=(8, 16), attention_levels=(False, False), norm_num_groups=4)
    previous = os.umask(0o077)
    try:
        path = save_checkpoint(tmp_path / "model.pt", network, DiffusionConfig())
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
