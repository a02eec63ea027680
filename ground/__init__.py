"""The ground floor: errors, log lines and fault points. Every package may import it; it
imports none of them (imports run cli -> pipeline -> targets/models -> ground)."""
