"""The audit log: event types, the tamper-evident hash chain, signed checkpoints."""
