"""The models-from-code entry point of the summarizer pyfunc model: MLflow executes this file to load it.

:func:`summarizer.pyfunc.log_pyfunc_model` passes this file's path as ``python_model``; MLflow copies it into
the logged model and runs it on every load, where :func:`mlflow.models.set_model` names the model object.
Nothing imports this module: it is code MLflow runs, not a library (so no cloudpickle of the class, whose
pickle would break on any change to the package).
"""

from mlflow.models import set_model

from summarizer.pyfunc import SummarizerPyfunc

set_model(SummarizerPyfunc())
