"""timbrelab: a reproducible experiment pipeline for musical timbre transfer."""

# First, before anything imports torch: pin the CPU code paths torch's libraries honour (timbrelab.cpu).
import warnings as _warnings

from timbrelab import cpu as _cpu

_cpu.pin()
# `python -m timbrelab.cpu` imports this package (and so timbrelab.cpu) before running the module as
# __main__; runpy warns about that. Its __main__ hands over to the package's copy, so the warning is moot.
_warnings.filterwarnings("ignore", message=r"'timbrelab\.cpu' found in sys\.modules", category=RuntimeWarning)

__version__ = "0.1.0"
