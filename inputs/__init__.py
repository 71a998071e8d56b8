"""Inputs: sources of batches (files, /dev/kmsg, the journal, netlink). Installed as `logagent.inputs`."""
