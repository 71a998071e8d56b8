"""Checked by .ci/lint together with the package: mypy must see through the package-dir mapping, so a value
imported from logagent.inputs / logagent.outputs has its real type, not Any (assert_type fails on Any)."""

from typing import assert_type

from logagent.inputs.kmsg import format_rfc3339_ns
from logagent.outputs.loki import label_string

assert_type(format_rfc3339_ns(0), str)
assert_type(label_string([("a", "b")]), str)
