"""Governance: what may leave the machine, for whom, and at what cost.

    scan.py          credentials (and, optionally, personal data) found in a prompt
    detectors.py     the detector table the scanner runs
    budgets.py       tokens and estimated cost per uid and in total, per UTC day
    policy.py        which models each role may request, and its output-token cap
    gate.py          the one step of the chat pipeline that applies all three
    store.py         the governance tables and their SQL
    usage_writer.py  budget charges committed in batches (one fsync for many chats)

Stdlib only and cheap to import (the daemon imports it on its way to READY);
the detectors' patterns are compiled on the first chat.
"""
