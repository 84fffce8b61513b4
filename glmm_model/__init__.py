"""glmm-ab's statistical engine: a Bayesian Poisson GLMM for A/B tests on count metrics.

    from glmm_model import fit, FitConfig
    result = fit(df, control="A")          # polars DataFrame / Arrow table
    result.lift                            # polars DataFrame, one row per treatment arm

The statistics engine only: it imports no warehouse, no dbt and no Prefect, and
importing it changes nothing process-wide. Entry points call :func:`configure`
(64-bit JAX, the compilation cache) once; :func:`fit` makes sure it was made.
"""
import warnings

# ArviZ 0.23 announces its 1.0 refactor on import; we pin the 0.x API on purpose.
warnings.filterwarnings("ignore", category=FutureWarning, module="arviz")

from importlib.metadata import PackageNotFoundError, version

from .config import DecisionRules, FitConfig, Priors, SamplerConfig
from .data import InputError, prepare
from .fit import FitResult, fit
from .runtime import configure
from .sampling import FitCancelled, FitTimeout, cancel_running

try:
    __version__ = version("glmm-ab")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+local"

__all__ = ["fit", "configure", "FitConfig", "FitResult", "Priors", "SamplerConfig", "DecisionRules", "InputError", "prepare",
           "FitTimeout", "FitCancelled", "cancel_running", "__version__"]
