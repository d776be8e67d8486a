"""Kernel pseudo-filesystems are told apart from ordinary ones by their statfs magic."""

from __future__ import annotations

import os

import pytest

from services.instance.drivers.files import KERNEL_FS, fs_type, refuse_kernel_fs
from shared.errors import BadRequest


def test_proc_and_sys_are_kernel_file_systems():
    for path, kind in (("/proc/self", "proc"), ("/sys/kernel", "sysfs")):
        fd = os.open(path, os.O_PATH)
        try:
            assert KERNEL_FS[fs_type(fd)] == kind
            with pytest.raises(BadRequest, match=f"kernel file system \\({kind}\\)"):
                refuse_kernel_fs(fd, path)
        finally:
            os.close(fd)


def test_an_ordinary_directory_is_not(tmp_path):
    fd = os.open(tmp_path, os.O_PATH)
    try:
        assert fs_type(fd) not in KERNEL_FS
        refuse_kernel_fs(fd, "/tmp")
    finally:
        os.close(fd)
