"""Governance: what may leave the machine, for whom, and at what cost.

    scan.py       credentials (and, optionally, personal data) found in a prompt
    detectors.py  the detector table the scanner runs
    budgets.py    tokens and estimated cost per uid and in total, per UTC day
    policy.py     which models each role may request, and its output-token cap
    gate.py       the one step of the chat pipeline that applies all three

Everything here is stdlib only and cheap to import: it sits on the chat path,
not on the path to READY, and patterns are compiled on first use.
"""
