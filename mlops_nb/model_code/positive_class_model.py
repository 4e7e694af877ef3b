"""The pyfunc every model `train` logs, as code: `predict` gives the probability of class 1 of the scikit-learn model
in artifact `sklearn_model` (saved with skops). MLflow copies this file into the logged model and runs it on load, so
the model loads with its logged requirements alone (mlflow, scikit-learn, skops, ...): it imports nothing of mlops_nb.
Package data, not generated: nbs/06a_pyfunc_model.ipynb describes and tests it."""
import pandas as pd
import mlflow.models
import mlflow.pyfunc


class PositiveClassModel(mlflow.pyfunc.PythonModel):
    "pyfunc model whose `predict` is the probability of class 1 of the scikit-learn model in artifact `sklearn_model`."
    def load_context(self, context):
        import mlflow.sklearn
        self.model = mlflow.sklearn.load_model(context.artifacts["sklearn_model"])

    def predict(self, context, model_input:pd.DataFrame, params=None):
        return self.model.predict_proba(model_input)[:, 1]


mlflow.models.set_model(PositiveClassModel())
