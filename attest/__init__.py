"""Pure attestation: bytes, time and policy in; typed results out.

Nothing in this package touches the network, the disk (except reading its own pinned roots,
shipped as package data) or the clock: every function that judges validity takes the time as
an argument, so an auditor can replay a decision "as of" the time it was made.
"""

__all__: list[str] = []
