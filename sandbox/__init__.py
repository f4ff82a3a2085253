"""The isolation library: confine a process with namespaces, mounts, cgroups,
credentials, capabilities, rlimits and seccomp.

It knows kernels, not functions: its inputs are Structs in `sandbox.policy`.
`sandbox.contain` applies the steps in the documented order; each kernel
facility lives in its own module.
"""

from sandbox.policy import ContainPolicy, EnterPolicy, Mount

__all__ = ["ContainPolicy", "EnterPolicy", "Mount"]
