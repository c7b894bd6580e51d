"""The audit trail: policy, hash chain, rows, writer, retention."""
