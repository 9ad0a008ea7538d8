"""Experiment trackers: which `train.report_to` names need which package, and MLflow's run.

TensorBoard and Weights & Biases are the Trainer's own integrations, used as they are. MLflow's
integration (transformers' MLflowCallback) logs the trainer's arguments and every metric into the
active MLflow run; qlcode opens that run itself so that the run also holds the recipe, key by key,
and the finished adapter as an artifact. With no MLFLOW_TRACKING_URI set, the store is local:
`mlruns/` in the current directory (an SQLite database, mlruns/mlflow.db, MLflow's own default
backend, and the artifacts under mlruns/artifacts), read with
`mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db`.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qlcode.recipe import Recipe

# report_to value -> (module the Trainer imports, what to install)
TRACKERS = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"),
            "mlflow": ("mlflow", "'qlcode[mlflow]'")}
LOCAL_STORE = Path("mlruns")
EXPERIMENT = "qlcode"


def tracker_problem(name: str) -> str | None:
    """Why train.report_to cannot be used on this machine, or None."""
    if name == "none":
        return None
    module, package = TRACKERS[name]
    if importlib.util.find_spec(module) is None:
        return f"{name} is not installed on this machine: pip install {package}, or set train.report_to: none"
    return None


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI when set, else the local store under the current directory."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    LOCAL_STORE.mkdir(exist_ok=True)
    return f"sqlite:///{(LOCAL_STORE / 'mlflow.db').resolve()}"


def flat_params(tree: dict, prefix: str = "") -> dict[str, str]:
    """A nested recipe as dotted keys (lora.r, data.datasets.0.source: MLflow's names allow no brackets), values as text."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_params(value, f"{name}."))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for i, item in enumerate(value):
                out.update(flat_params(item, f"{name}.{i}."))
        else:
            out[name] = str(value)
    return out


class MlflowRun:
    """One training run in MLflow: opened before the trainer starts, the adapter logged when it is saved."""

    def __init__(self, recipe: Recipe) -> None:
        import mlflow
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

        self.mlflow = mlflow
        self.local = not os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(tracking_uri())  # MLflow also exports it as MLFLOW_TRACKING_URI: `end` takes it back
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
        if self.local and mlflow.get_experiment_by_name(name) is None:  # its artifacts beside the database
            mlflow.create_experiment(name, artifact_location=(LOCAL_STORE / "artifacts").resolve().as_uri())
        mlflow.set_experiment(name)
        self.run = mlflow.start_run(run_name=recipe.output.name)
        params = {f"recipe.{k}": v[:MAX_PARAM_VAL_LENGTH] for k, v in flat_params(recipe.model_dump(mode="json")).items()}
        items = list(params.items())
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per call
            mlflow.log_params(dict(items[i: i + 100]))

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    def log_adapter(self, run_dir: Path) -> None:
        """The run directory's files (adapter, tokenizer, model card, recipe, metrics, summary) under artifacts/adapter."""
        for f in sorted(Path(run_dir).iterdir()):
            if f.is_file() and not f.name.startswith("."):
                self.mlflow.log_artifact(str(f), artifact_path="adapter")

    def end(self, failed: bool) -> None:
        self.mlflow.end_run(status="FAILED" if failed else "FINISHED")
        if self.local:
            os.environ.pop("MLFLOW_TRACKING_URI", None)


@contextmanager
def tracked(recipe: Recipe) -> Iterator[MlflowRun | None]:
    """The run's MLflow run while the body trains (None for other trackers); marked FAILED if the body raises."""
    if recipe.train.report_to != "mlflow":
        yield None
        return
    run = MlflowRun(recipe)
    try:
        yield run
    except BaseException:
        run.end(failed=True)
        raise
    run.end(failed=False)
