"""`zirelia doctor`: what a run needs on this machine, checked and printed as one table."""

from zirelia_local.doctor.checks import run_doctor

__all__ = ["run_doctor"]
