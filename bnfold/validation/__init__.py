"""Prove a fold: run the original and the folded model in onnxruntime and compare every output.

- `pipeline`: `validate`, the entry point (one session at a time, every provider);
- `providers`: provider names, faithful settings, sessions that really run where asked;
- `inputs`: generated or given inputs, and the casts allowed on given ones;
- `perturb`: what the fold changed, and the candidate with exactly that moved by rounding;
- `criterion`: the calibrated limit and explicit tolerances (the maths, in float64);
- `compare`: one output on one provider; `report`: the verdict as lines and JSON;
- `runs`: what onnxruntime is given, and outputs as arrays.
"""

from .compare import compare
from .criterion import PerOutput, Tolerance
from .inputs import load_inputs, make_samples
from .pipeline import check_validation_options, check_validation_options_against, validate
from .providers import ProviderRequest, parse_provider_options
from .report import OutputComparison, ProviderOutcome, Status, ValidationReport

__all__ = [
    "OutputComparison",
    "PerOutput",
    "ProviderOutcome",
    "ProviderRequest",
    "Status",
    "Tolerance",
    "ValidationReport",
    "check_validation_options",
    "check_validation_options_against",
    "compare",
    "load_inputs",
    "make_samples",
    "parse_provider_options",
    "validate",
]
