"""Checked by .ci/lint together with the package: mypy must see through the package-dir mapping, so a value
imported from logagent.inputs / logagent.outputs has its real type, not Any (assert_type fails on Any)."""

from typing import assert_type

from logagent.inputs.kmsg import read_boot_id
from logagent.outputs.loki import label_string

assert_type(read_boot_id("/proc/sys/kernel/random/boot_id"), str)
assert_type(label_string([("a", "b")]), str)
